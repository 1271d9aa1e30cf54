"""Tables on narrow, non-terminal output: words (object names above all) are never cut.

rich folds a word wider than its column mid-word: at 80 columns the dry-run plan read
"istio-system/istio-eastwe" over "stgateway". These tests draw the tables at 80 columns
the way CI logs and pipes get them and check that every word comes out whole (folded
only at blanks or after a ``/``), that no line is wider than 80 cells, and that wide
output is drawn exactly as rich draws it.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import termios
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from meshctl import report
from meshctl.ca.status import CertsStatus, Check, ClusterCerts, Intermediate
from meshctl.mesh.status import ClusterStatus
from tests.factories import BIN, REPO

NARROW = 80


# --- helpers ---------------------------------------------------------------------------


def render(renderable: Any, width: int) -> str:
    """What a non-terminal of ``width`` columns gets (a pipe, a file, a CI log)."""
    buf = io.StringIO()
    Console(file=buf, width=width, soft_wrap=False).print(renderable)
    return buf.getvalue()


def tokens(text: str) -> list[str]:
    """The unbreakable runs of ``text``: words, cut after every ``/``."""
    return [p for word in text.split() for p in re.split(r"(?<=/)", word) if p]


def plain(cell: Any) -> str:
    return cell.plain if isinstance(cell, Text) else Text.from_markup(cell).plain


def rows_of(output: str) -> list[list[list[str]]]:
    """A drawn box table back as rows of cells, each cell its lines (stripped)."""
    rows: list[list[list[str]]] = []
    body = False
    for line in output.splitlines():
        if line.startswith("┡"):
            body = True
        if not (body and line.startswith("│")):
            continue
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells[0] or not rows:
            rows.append([[] for _ in cells])
        for lines, cell in zip(rows[-1], cells, strict=True):
            if cell:
                lines.append(cell)
    return rows


def assert_fits(output: str, width: int) -> None:
    wide = [line for line in output.splitlines() if cell_len(line) > width]
    assert not wide, f"lines wider than {width}: {wide}"


def assert_words_whole(table: Table, output: str) -> None:
    """Every word of every cell is on one line (a ``/``-piece of it, at the least)."""
    lines = output.splitlines()
    cells = [c for col in table.columns for c in (col.header, *col.cells)]
    for cell in cells:
        for token in tokens(plain(cell)):
            assert any(token in line for line in lines), (token, output)


def run_dry_run(tmp_path: Path, env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess:
    """``invoke bootstrap --dry-run`` on the shipped clusters/ folder, stdout a pipe."""
    cmd = [str(BIN / "invoke"), "--search-root", str(REPO), "bootstrap", "--main", "cluster1",
           "--remote", "cluster2", "--dry-run", "--clusters-dir", str(REPO / "clusters"),
           "--out", str(tmp_path / "out")]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120, check=False, **kwargs)
    assert result.returncode == 0, result.stderr
    return result


def env_without_columns() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE")}


@pytest.fixture(scope="module")
def plan_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """The real task's stdout at COLUMNS=80, piped, and the plan.json it wrote."""
    tmp = tmp_path_factory.mktemp("plan80")
    result = run_dry_run(tmp, {**env_without_columns(), "COLUMNS": str(NARROW)})
    return result.stdout, json.loads((tmp / "out" / "plan.json").read_text())


def objects_cell(step: dict[str, Any]) -> str:
    text = "\n".join(step["objects"]) or step["note"]
    return text + ("\nneeds " + ", ".join(step["needs"]) if step["needs"] else "")


# --- the dry-run plan ------------------------------------------------------------------


def test_plan_at_80_columns_keeps_object_names_whole(
        plan_run: tuple[str, dict[str, Any]]) -> None:
    stdout, plan = plan_run
    table_lines = [line for line in stdout.splitlines() if line[:1] in "┏┃┡│└"]
    assert table_lines and all(cell_len(line) == NARROW for line in table_lines), stdout
    assert_fits(stdout, NARROW)
    rows = rows_of(stdout)
    assert len(rows) == len(plan["steps"])
    objects_width = cell_len(table_lines[0].split("┳")[3]) - 2
    for row, step in zip(rows, plan["steps"], strict=True):
        assert row[0] == [str(step["order"])]
        # the cell folds between whole words, or right after a "/", never elsewhere
        assert tokens(" ".join(row[3])) == tokens(objects_cell(step)), (step, row[3])
        # cluster objects; a local step's objects are paths in ca.dir (absolute since a
        # relative ca.dir is mesh.yaml's), folded after any "/" (the tokens check above)
        for obj in step["objects"] if step["cluster"] else ():
            name = obj.split()[-1]  # namespace/name (or the name of a cluster-wide object)
            if cell_len(name) <= objects_width:
                assert any(name in line for line in row[3]), (name, row[3])
            else:  # too wide for the column: folded after its "/", both halves whole
                namespace, _, short = name.rpartition("/")
                assert any(line.endswith(namespace + "/") for line in row[3]), row[3]
                assert short in row[3], (short, row[3])
    assert "istio-system/istio-eastwestgateway" in stdout
    assert "istio-eastwe " not in stdout and "│ stgateway" not in stdout


def test_plan_on_a_pipe_is_80_columns_whatever_the_terminal_behind_it(tmp_path: Path) -> None:
    """Without COLUMNS, a piped stdout is 80 wide even when stdin is a wide terminal.

    rich would ask stdin for its size, so ``... | cat`` in a 200-column terminal drew the
    table 104 wide while the same command in CI drew it 80 wide.
    """
    controller, terminal = pty.openpty()
    try:
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        result = run_dry_run(tmp_path, env_without_columns(), stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    top = next(line for line in result.stdout.splitlines() if line.startswith("┏"))
    assert cell_len(top) == report.PIPE_WIDTH
    assert_fits(result.stdout, report.PIPE_WIDTH)
    assert "istio-system/istio-eastwestgateway" in result.stdout


def test_pinned_width() -> None:
    pipe = Console(file=io.StringIO())
    assert report.pinned_width(pipe, {}) == report.PIPE_WIDTH
    assert report.pinned_width(pipe, {"COLUMNS": "132"}) is None  # rich takes COLUMNS itself
    assert report.pinned_width(Console(file=io.StringIO(), force_terminal=True), {}) is None


def test_plan_wide_is_drawn_as_rich_draws_it(plan_run: tuple[str, dict[str, Any]]) -> None:
    """Where the table fits, the layout is rich's own: one line per object, names whole."""
    _, plan = plan_run
    table = report.plan_table(plan)
    as_rich = Table.__new__(Table)
    as_rich.__dict__.update(table.__dict__)
    wide = render(table, 200)
    assert wide == render(as_rich, 200)
    rows = rows_of(wide)
    for row, step in zip(rows, plan["steps"], strict=True):
        assert row[3] == objects_cell(step).split("\n")
    lines = wide.splitlines()
    natural = Measurement.get(Console(width=200), Console(width=200).options, as_rich).maximum
    assert natural < 200 and cell_len(lines[1]) == natural  # no column was narrowed
    assert any("│ Secret istio-system/istio-remote-secret-cluster2 " in line for line in lines)


@pytest.mark.parametrize("width", [100, 97, 90, 80, 78, 77, 60, 40])
def test_plan_at_any_width_keeps_words_whole(plan_run: tuple[str, dict[str, Any]],
                                             width: int) -> None:
    _, plan = plan_run
    table = report.plan_table(plan)
    output = render(table, width)
    assert_fits(output, width)
    assert_words_whole(table, output)
    if width <= 60:  # no room for the columns: one field a line
        assert "┃" not in output
    if width == 60:
        assert "  objects: Deployment istio-system/istio-eastwestgateway\n" in output


# --- the other tables ------------------------------------------------------------------


def status_rows() -> list[ClusterStatus]:
    return [ClusterStatus("cluster1", "primary", "network1", True, "1.24.2", ("cluster2",), (),
                          364.6, "172.18.255.200:15443"),
            ClusterStatus("cluster2", "primary", "network2", True, "1.24.2", ("cluster1",),
                          ("cluster2: Secret istio-system/istio-remote-secret-cluster3: "
                           "users[0].user.tokenFile is not allowed",), 12.0,
                          "172.18.255.201:15443"),
            ClusterStatus("cluster3", "remote", "network3", False,
                          error="Get https://127.0.0.1:40123/api/v1/namespaces/istio-system: "
                                "connection refused")]


def certs_status() -> CertsStatus:
    when = datetime(2031, 1, 1, tzinfo=UTC)
    clusters = tuple(
        ClusterCerts(name, True,
                     Intermediate(f"O=meshctl-test,CN=Intermediate CA {name}",
                                  "4f1a2b3c4d5e6f708192a3b4c5d6e7f8", when, when, 364.2),
                     ("A1:B2:C3:D4:E5:F6:07:18:29:3A:4B:5C:6D:7E:8F",), "root", True, True,
                     None, (Check("WARN", "intermediate expires in 12 days: run certs.issue "
                                          f"--cluster {name}"),))
        for name in ("cluster1", "cluster2"))
    return CertsStatus(("root",), "root", None, clusters, (Check("PASS", "one root"),))


def preflight_cluster() -> dict[str, Any]:
    def res(check: str, status: str, message: str, hint: str | None = None) -> dict[str, Any]:
        return {"cluster": "cluster1", "check": check, "status": status, "message": message,
                "hint": hint}
    return {"cluster": "cluster1", "status": "FAIL", "reachable": True, "results": [
        res("kubernetes-version", "PASS", "Kubernetes 1.30 is supported by istioctl 1.24"),
        res("inject-namespaces", "WARN", "namespaces sample-apps/bookinfo-productpage-v1 "
            "not found", "create them or drop them from injectNamespaces in "
            "clusters/cluster1.yaml"),
        res("api-server-address", "FAIL", "apiServer https://127.0.0.1:6443 is loopback: "
            "remote clusters cannot reach it",
            "set apiServer in clusters/cluster1.yaml to an address they can reach")]}


def verify_result() -> Any:
    check = SimpleNamespace
    return SimpleNamespace(main="cluster1", remotes=["cluster2"], passed=False, checks=[
        check(group="static", name="remote-secret", status="PASS",
              message="cluster1 holds istio-system/istio-remote-secret-cluster2", hint=None),
        check(group="traffic", name="cross-cluster", status="FAIL",
              message="no answer from helloworld-v2.sample.svc.cluster.local:5000/hello",
              hint="check the east-west gateway istio-system/istio-eastwestgateway")])


TABLES = {
    "status": lambda: report.status_table(status_rows()),
    "certs.status": lambda: report.certs_status_table(certs_status()),
    "preflight": lambda: report.preflight_table(preflight_cluster()),
    "verify": lambda: report.verify_table(verify_result()),
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_other_tables_at_80_columns_keep_words_whole(name: str) -> None:
    table = TABLES[name]()
    output = render(table, NARROW)
    assert_fits(output, NARROW)
    assert_words_whole(table, output)


def test_status_and_certs_too_wide_for_80_become_lists() -> None:
    """Seven and ten columns of unbreakable values do not fit 80: one field a line."""
    status = render(report.status_table(status_rows()), NARROW)
    assert "…" not in status  # rich cut the east-west address to "172.18.2…" here
    assert "cluster: cluster1\n  role: primary\n" in status
    assert "  east-west: 172.18.255.200:15443\n" in status
    assert "\n  istio: unreachable: Get\n" in status  # the URL is wider than what is left
    assert "\n         https://127.0.0.1:40123/api/v1/namespaces/istio-system: connection\n" \
           in status
    certs = render(report.certs_status_table(certs_status()), NARROW)
    assert "  intermediate: O=meshctl-test,CN=Intermediate CA cluster2\n" in certs
    assert "  roots (root-cert.pem): A1:B2:C3:D4:E5:F6:07:18…\n" in certs


@pytest.mark.parametrize("name", sorted(TABLES))
def test_other_tables_wide_are_drawn_as_rich_draws_them(name: str) -> None:
    table = TABLES[name]()
    as_rich = Table.__new__(Table)
    as_rich.__dict__.update(table.__dict__)
    assert render(table, 240) == render(as_rich, 240)


def test_preflight_at_80_is_unchanged_where_rich_broke_no_word() -> None:
    """rich's own layout is kept whenever it cuts no word (preflight fits at 80 that way)."""
    table = report.preflight_table(preflight_cluster())
    as_rich = Table.__new__(Table)
    as_rich.__dict__.update(table.__dict__)
    assert render(table, NARROW) == render(as_rich, NARROW)


# --- fold ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "width", "lines"), [
    ("Deployment istio-system/istio-eastwestgateway", 36,
     ["Deployment", "istio-system/istio-eastwestgateway"]),
    ("Secret istio-system/istio-remote-secret-cluster2", 30,
     ["Secret istio-system/", "istio-remote-secret-cluster2"]),
    ("a/b/c/dddd", 4, ["a/b/", "c/", "dddd"]),
    ("abcdefgh", 3, ["abc", "def", "gh"]),  # no blank, no "/": cut, as the last resort
    ("one\n\ntwo  words", 20, ["one", "", "two  words"]),
])
def test_fold(text: str, width: int, lines: list[str]) -> None:
    assert report.fold(Text(text), width).plain.split("\n") == lines


def test_fold_keeps_styles() -> None:
    folded = report.fold(Text.from_markup("[red]Secret istio-system/cacerts[/red] ok"), 14)
    assert folded.plain == "Secret\nistio-system/\ncacerts ok"
    red = [folded.plain[s.start:s.end] for s in folded.spans if str(s.style) == "red"]
    assert red == ["Secret", "istio-system/", "cacerts"]


def test_fingerprints_are_not_turned_into_emoji() -> None:
    """rich reads ``:cd:`` as an emoji code; a SHA-256 fingerprint is full of such pairs."""
    fingerprint = "AB:CD:EF:01"
    for console in (report.out, report.err):
        with console.capture() as captured:
            console.print(f"root {fingerprint}")
        assert fingerprint in captured.get()
