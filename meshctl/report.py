"""Rendering results for people (rich tables) and for programs (JSON).

Data first, rendering second: modules return dataclasses, this module draws them.
Tables and JSON go to stdout; progress and warnings go to stderr so that
``--json`` output stays machine-readable.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from meshctl.tables import WholeWordTable, fold  # noqa: F401  (report.fold for callers)

# Width of stdout when it is not a terminal (a pipe, a file, a CI log) and COLUMNS is unset.
PIPE_WIDTH = 80
# Below this, COLUMNS is ignored: rich takes COLUMNS=0 as a width of 0 and prints nothing
# at all (a dry-run's plan vanished, exit 0), and no table fits in fewer columns anyway.
MIN_COLUMNS = 20


def pinned_width(console: Console, environ: Mapping[str, str] = os.environ) -> int | None:
    """The width to pin ``console`` to, or None to let rich ask the terminal.

    rich takes ``COLUMNS`` first; without it, it asks the size of stdin, stdout and stderr
    in that order, so ``meshctl ... | cat`` typed in a wide terminal drew tables at that
    terminal's width while the same command in CI drew them at 80. Output that does not go
    to a terminal is now PIPE_WIDTH columns wide unless ``COLUMNS`` says otherwise.
    A ``COLUMNS`` under :data:`MIN_COLUMNS` is overruled with PIPE_WIDTH (a shell
    variable, not meshctl's: ignored, not refused), as is one that is not a number.
    """
    if _too_narrow(environ):
        return PIPE_WIDTH
    if environ.get("COLUMNS", "").isdigit() or console.is_terminal:
        return None
    return PIPE_WIDTH


def _too_narrow(environ: Mapping[str, str]) -> bool:
    columns = environ.get("COLUMNS", "")
    return columns.isdigit() and int(columns) < MIN_COLUMNS


out = Console(soft_wrap=False, emoji=False)  # a fingerprint "AB:CD:EF" is not ":cd:"
if (_width := pinned_width(out)) is not None:
    out.width = _width
err = Console(stderr=True, emoji=False)
if _too_narrow(os.environ):
    err.width = PIPE_WIDTH  # warnings and progress must not vanish either


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def plan_table(document: dict[str, Any]) -> Table:
    """The bootstrap plan as a table: one row per step."""
    mesh = document["mesh"]
    table = WholeWordTable(title=f"bootstrap plan: mesh {mesh['meshID']}, {mesh['model']}"
                        f"{', multi-network' if mesh['multiNetwork'] else ', one network'}")
    for col in ("#", "cluster", "action", "objects", "live"):
        table.add_column(col, overflow="fold")
    for step in document["steps"]:
        objects = "\n".join(step["objects"]) or step["note"]
        if step["needs"]:
            objects += "\nneeds " + ", ".join(step["needs"])
        table.add_row(str(step["order"]), step["cluster"] or "(local)", step["action"],
                      objects, "yes" if step["live"] else "no")
    return table


def progress(cluster: str, message: str) -> None:
    """One progress line on stderr, so stdout stays a clean table or JSON."""
    err.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {cluster}: {message}", highlight=False)


def _revision_line(r: Any) -> str:
    """``canary 1.31.0 ready, 3 proxies, tags: default``: one revision in the table."""
    ready = {True: "ready", False: "[red]not ready[/red]", None: "injector"}[r.ready]
    if r.proxies is not None:
        proxies = f"{r.proxies} prox{'y' if r.proxies == 1 else 'ies'}"
    elif r.deployment is None:
        proxies = "proxies: see its primary"
    else:
        proxies = "[red]proxies unknown[/red]"
    tags = f", tags: {', '.join(r.tags)}" if r.tags else ""
    return f"{r.revision} {r.version or '?'} {ready}, {proxies}{tags}"


def status_table(rows: list[Any]) -> Table:
    """``status`` and the end of ``bootstrap``: one row per cluster; one line per Istio
    revision in it, and the injected namespaces per revision."""
    table = WholeWordTable(title="mesh status")
    for col in ("cluster", "role", "network", "istio", "links", "east-west", "cert days",
                "revisions", "namespaces"):
        table.add_column(col)
    for r in rows:
        if not r.reachable:
            table.add_row(r.name, r.role, r.network, f"[red]unreachable: {r.error}[/red]",
                          "", "", "", "", "")
            continue
        days = "-" if r.cert_days_left is None else f"{r.cert_days_left:.0f}"
        links = ", ".join(r.links) or "-"
        refused = getattr(r, "link_errors", ())
        if refused:
            links += f"\n[red]{len(refused)} remote secret(s) refused[/red]"
        revs = "\n".join(_revision_line(x) for x in getattr(r, "revisions", ())) or "-"
        known = {x.revision for x in getattr(r, "revisions", ())}
        namespaces = "\n".join(
            f"{rev}: {', '.join(names)}" if rev in known
            else f"[red]{rev} (no such revision): {', '.join(names)}[/red]"
            for rev, names in (getattr(r, "namespaces", None) or {}).items()) or "-"
        table.add_row(r.name, r.role, r.network, r.istio_version or "-",
                      links, r.east_west_address or "-", days, revs, namespaces)
    return table


def status_notes(rows: list[Any]) -> list[str]:
    """Lines under the status table: every refused remote secret, with the field; every
    proxy count that could not be read, and why; namespaces naming no revision."""
    lines = [f"❌ {line}" for r in rows for line in getattr(r, "link_errors", ())]
    lines += [f"⚠️  {r.name}: proxies of revision {x.revision}: {x.proxies_error}"
              for r in rows for x in getattr(r, "revisions", ())
              if x.proxies_error and x.deployment is not None]
    lines += [f"❌ {line}" for r in rows for line in getattr(r, "revision_problems", ())]
    lines += [_upgrade_note(r.name, up) for r in rows if (up := getattr(r, "upgrade", None))]
    return lines


def _upgrade_note(cluster: str, up: dict[str, Any]) -> str:
    """One line per cluster on the upgrade its record holds: mixed versions are expected
    while it is open, and said so."""
    closing = up["stage"] in ("finish", "rollback") and up["done"]
    sides = (f"revision {up['from_revision'] or 'default'} ({up['from_version']}) -> "
             f"{up['to_revision']} ({up['to_version']})")
    if closing:
        return f"ℹ️  {cluster}: last upgrade {sides}: {up['stage']} done"
    moved = f"; moved: {', '.join(up['moved'])}" if up["moved"] else ""
    return (f"🔄 {cluster}: upgrade in progress, {sides}: {up['stage']} "
            f"{'done' if up['done'] else 'not complete'}{moved}; both versions run until "
            "finish (accepted during an upgrade)")


# --- certs.status (issue 6) ------------------------------------------------------------

LEVEL_STYLE = {"PASS": "[green]✅ PASS[/]", "WARN": "[yellow]⚠️  WARN[/]", "FAIL": "[red]❌ FAIL[/]"}


def certs_status_table(status: Any) -> Table:
    """``certs.status``: one row per cluster (a ``cert_status.CertsStatus``)."""
    title = f"cacerts per cluster ({status.level})"
    if status.rotation is not None and not status.rotation.finished:
        title += f", root rotation: step {status.rotation.done} of 3 done"
    table = WholeWordTable(title=title)
    for col in ("cluster", "level", "intermediate", "serial", "not after", "days left",
                "roots (root-cert.pem)", "chain→local root", "= local", "checks"):
        table.add_column(col, overflow="fold")
    for c in status.clusters:
        inter = c.intermediate
        table.add_row(
            c.name, LEVEL_STYLE[c.level], inter.subject if inter else "-",
            inter.serial[:16] if inter else "-",
            f"{inter.not_after:%Y-%m-%d}" if inter else "-",
            f"{inter.days_left:.0f}" if inter else "-",
            "\n".join(fp[:23] + "…" for fp in c.roots) or "-",
            "yes" if c.chain_verifies else "no", "yes" if c.matches_local else "no",
            "\n".join(f"{ch.level}: {ch.message}" for ch in c.checks
                      if ch.level != "PASS") or "ok")
    return table


def print_certs_status(status: Any) -> None:
    """The table, then the mesh-wide lines (✅/⚠️/❌) with any hint."""
    out.print(certs_status_table(status))
    for check in status.checks:
        out.print(f"{LEVEL_STYLE[check.level]} {check.message}", highlight=False)


# --- preflight -------------------------------------------------------------------------

PREFLIGHT_MARKS = {"PASS": "✅", "WARN": "⚠️ ", "FAIL": "❌"}
PREFLIGHT_STYLES = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red"}


def preflight_table(cluster: dict[str, Any]) -> Table:
    """One cluster of the preflight document: a row per check, hint under the message."""
    title = (f"preflight {cluster['cluster']}: {cluster['status']}"
             + ("" if cluster["reachable"] else " (unreachable)"))
    table = WholeWordTable(title=title, title_justify="left")
    for col in ("check", "status", "message"):
        table.add_column(col, overflow="fold")
    for res in cluster["results"]:
        status = res["status"]
        message = res["message"] + (f"\n💡 {res['hint']}" if res["hint"] else "")
        table.add_row(res["check"], f"[{PREFLIGHT_STYLES[status]}]"
                      f"{PREFLIGHT_MARKS[status]} {status}[/]", message)
    return table


def preflight_summary(document: dict[str, Any]) -> list[str]:
    """Summary lines: every FAIL and WARN as ``cluster: message; hint``, then the totals."""
    lines = []
    for cluster in document["clusters"]:
        for res in cluster["results"]:
            if res["status"] != "PASS":
                hint = f"; {res['hint']}" if res["hint"] else ""
                lines.append(f"{PREFLIGHT_MARKS[res['status']]} {res['cluster']} "
                             f"{res['check']}: {res['message']}{hint}")
    s = document["summary"]
    verdict = {"PASS": "ready for the mesh", "WARN": "ready, with warnings",
               "FAIL": "not ready"}[document["status"]]
    lines.append(f"preflight: {len(document['clusters'])} cluster(s), {s['PASS']} passed, "
                 f"{s['WARN']} warnings, {s['FAIL']} failed: {verdict}")
    return lines


# --- canary and verify (issue 8) --------------------------------------------------------

VERIFY_MARKS = {"PASS": "[green]✅ PASS[/]", "FAIL": "[red]❌ FAIL[/]",
                "SKIP": "[yellow]⏭  SKIP[/]"}


def print_canary(result: Any) -> None:
    """``canary``: one line per object, the WARN lines, then what the routing is now."""
    for cluster, obj, action in result.actions:
        out.print(f"{cluster}: {obj}: {action}", highlight=False)
    for warning in result.warnings:
        err.print(f"⚠️  WARN {warning}", highlight=False)
    split = ", ".join(f"{v} {w}%" for v, w in result.weights)
    if result.promoted:
        out.print(f"promoted: {result.host} now routes 100% to {result.promoted}",
                  highlight=False)
    elif result.writes == 0:
        out.print(f"unchanged: {result.host} already routes {split} (no writes)",
                  highlight=False)
    else:
        out.print(f"{result.host} routes {split}", highlight=False)


def print_observation(seen: Any) -> None:
    """``canary --observe``: configured vs observed per version, the bounds, who answered."""
    j = seen.judgement
    out.print(f"observed {j.answered}/{j.sent} calls from {seen.caller} to "
              f"{seen.host}:{seen.port} through {seen.probe}", highlight=False)
    table = WholeWordTable(title_justify="left")
    for col in ("version", "configured", "observed", "allowed (calls)", "verdict"):
        table.add_column(col)
    for v in j.versions:
        share = f"{100 * v.observed / j.answered:.1f}%" if j.answered else "-"
        table.add_row(v.version, f"{v.weight}%", f"{share} ({v.observed})",
                      f"{v.low}-{v.high}", "PASS" if v.ok else "FAIL")
    for version, n in j.unexpected:
        table.add_row(version, "0% (no subset)", str(n), "0-0", "FAIL")
    out.print(table)
    for cluster, version, n in seen.by_cluster:
        out.print(f"  answered by {cluster} {version}: {n}", highlight=False)
    for cause, n in seen.causes:
        out.print(f"  failed: {n} x {cause}", highlight=False)
    out.print(f"bounds: exact binomial, chance that a healthy mesh falls outside them "
              f"< {j.rate:.1%}; failed calls are never tolerated", highlight=False)
    out.print(f"probe: {seen.limits}", highlight=False)


def verify_table(result: Any) -> Table:
    """``verify``: one row per check (a ``verify.Result``), hint under the message."""
    verdict = "PASSED" if result.passed else "FAILED"
    table = WholeWordTable(title=f"verify {result.main} + {', '.join(result.remotes)}: {verdict}",
                  title_justify="left")
    for col in ("half", "check", "status", "message"):
        table.add_column(col, overflow="fold")
    for c in result.checks:
        message = c.message + (f"\n💡 {c.hint}" if c.hint else "")
        table.add_row(c.group, c.name, VERIFY_MARKS[c.status], message)
    return table


def verify_summary(result: Any) -> list[str]:
    """Closing lines: the answers seen (only real ones), or plainly that traffic was not."""
    t = result.traffic
    lines = []
    if t.checked:
        for a in t.answers:
            lines.append(f"answers from {a.version} on {a.cluster}: {a.count}")
        for f in t.failures:
            lines.append(f"failed: {f.count}× {f.reason}")
        lines.append(f"traffic checked: {t.sent} of {t.requests} requests sent from "
                     f"{t.client}, {t.errors} errors")
    else:
        lines.append(f"❌ {t.reason}")
    if result.kept:
        lines.append(f"--keep: the sample apps stay in namespace {result.namespace}")
    elif result.cleanup:
        lines.append(f"removed {len(result.cleanup)} sample objects")
    static = "passed" if result.static_passed else "FAILED"
    lines.append(f"verify: static checks {static}; "
                 f"{'PASSED' if result.passed else 'FAILED'}")
    return lines
