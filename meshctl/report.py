"""Rendering results for people (rich tables) and for programs (JSON).

Data first, rendering second: modules return dataclasses, this module draws them.
Tables and JSON go to stdout; progress and warnings go to stderr so that
``--json`` output stays machine-readable.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=False)
err = Console(stderr=True)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def plan_table(document: dict[str, Any]) -> Table:
    """The bootstrap plan as a table: one row per step."""
    mesh = document["mesh"]
    table = Table(title=f"bootstrap plan: mesh {mesh['meshID']}, {mesh['model']}"
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


# --- preflight -------------------------------------------------------------------------

PREFLIGHT_MARKS = {"PASS": "✅", "WARN": "⚠️ ", "FAIL": "❌"}
PREFLIGHT_STYLES = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red"}


def preflight_table(cluster: dict[str, Any]) -> Table:
    """One cluster of the preflight document: a row per check, hint under the message."""
    title = (f"preflight {cluster['cluster']}: {cluster['status']}"
             + ("" if cluster["reachable"] else " (unreachable)"))
    table = Table(title=title, title_justify="left")
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
