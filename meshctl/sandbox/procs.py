"""Processes of the sandbox: start detached with a log and a pid file, find, stop.

Every component runs in its own session (so its process group is its pid), writes
stdout and stderr to one log file, and leaves a pid file.  Stopping goes by pid file,
never by name, and only touches a process whose command line still mentions the
sandbox's state folder: a recycled pid that now belongs to someone else is left alone.
``sandbox.down`` may run in a different process from ``sandbox.up``, so nothing here
relies on ``Popen`` objects surviving.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from meshctl import envvars

T = TypeVar("T")

# Log-tail lines with any of these (PEM blocks, JWTs, auth headers) are never shown.
_SECRET_MARKERS = ("PRIVATE KEY", "BEGIN ", "eyJ", "Bearer ")


@dataclass(frozen=True)
class Proc:
    """A started component: which cluster, what it is, its pid and where it logs."""

    cluster: str
    component: str
    pid: int
    log: Path


def pid_file(state_dir: Path, cluster: str, component: str) -> Path:
    return state_dir / "pids" / f"{cluster}-{component}.pid"


def log_file(state_dir: Path, cluster: str, component: str) -> Path:
    return state_dir / "logs" / f"{cluster}-{component}.log"


GOGC_DEFAULT = "200"
GOGC_ENV = "MESHCTL_SANDBOX_GOGC"


def go_env() -> dict[str, str]:
    """The environment of the control-plane components: Go's collector runs less often.

    A CPU profile of kube-apiserver during a 1+4 bootstrap (five control planes on two
    cores) spent about a quarter of its time collecting garbage.  This machine has memory
    to spare and no CPU: with 200 the five API servers used about 40% less CPU for the
    same bootstrap and about 40% more memory (3.0 GB against 2.2 GB).
    ``MESHCTL_SANDBOX_GOGC`` overrides (Go's own default is 100).  istiod and istioctl
    keep Go's defaults: they are what the tests are about.
    """
    return {**os.environ, "GOGC": gogc()}


def gogc() -> str:
    """``$MESHCTL_SANDBOX_GOGC``: ``off`` or a whole number, else :data:`GOGC_DEFAULT`.

    Checked here because Go takes any other value silently as 100: a typo would cost
    the CPU the setting exists to save, with no word said.
    """
    raw = envvars.text(GOGC_ENV)
    if raw is None:
        return GOGC_DEFAULT
    if raw != "off":
        envvars.number(GOGC_ENV, default=float(GOGC_DEFAULT), whole=True)
    return raw


def spawn(state_dir: Path, cluster: str, component: str, argv: Sequence[str],
          *, env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
    """Start ``argv`` in its own session, output to its log, and write its pid file.

    ``start_new_session`` makes the process a group leader, so ``down`` can signal it
    and anything it forks in one call, and Ctrl-C in the user's terminal does not hit
    the sandbox half-way through a test.
    """
    log = log_file(state_dir, cluster, component)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 env=env, cwd=cwd, close_fds=True)
    pf = pid_file(state_dir, cluster, component)
    pf.parent.mkdir(parents=True, exist_ok=True)
    pf.write_text(f"{popen.pid}\n")
    # Keep the Popen object reachable so this interpreter reaps the child when it exits;
    # otherwise a dead component lingers as a zombie that still looks "alive".
    _CHILDREN[popen.pid] = popen
    return Proc(cluster=cluster, component=component, pid=popen.pid, log=log)


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        child.poll()


def cmdline(pid: int) -> str:
    """The process's command line as one string, or '' if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _state_char(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[0]


def alive(pid: int, owner: Path | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, given ``owner``, mentions that folder."""
    _reap(pid)
    state = _state_char(pid)
    if state in ("", "Z", "X"):
        return False
    return owner is None or str(owner) in cmdline(pid)


def exit_code(pid: int) -> int | None:
    """The exit code of a child started here, if it has exited."""
    child = _CHILDREN.get(pid)
    return child.poll() if child is not None else None


def read_pids(state_dir: Path) -> dict[str, int]:
    """Every pid file under the state folder: ``{"cluster1-etcd": 1234, ...}``."""
    pids = {}
    for pf in sorted((state_dir / "pids").glob("*.pid")):
        with contextlib.suppress(ValueError, OSError):
            pids[pf.stem] = int(pf.read_text().strip())
    return pids


# Stop order: clients of the API server first (its watches then close and it exits in
# about a second instead of draining for many), the API server next, etcd last.
_STOP_TIERS = ("kube-apiserver", "etcd")


def _tier(name: str) -> int:
    component = name.split("-", 1)[1] if "-" in name else name
    return _STOP_TIERS.index(component) + 1 if component in _STOP_TIERS else 0


def stop_all(state_dir: Path, *, timeout: float = 10.0) -> list[str]:
    """Stop every sandbox process group tier by tier (TERM, KILL after ``timeout``).

    Returns the names of processes that had to be killed.  Only processes whose command
    line mentions ``state_dir`` are signalled (pid reuse safety).  Pid files go last.
    """
    owned = {name: pid for name, pid in read_pids(state_dir).items() if alive(pid, state_dir)}
    killed: list[str] = []
    for tier in sorted({_tier(name) for name in owned}):
        killed += _stop(
            {name: pid for name, pid in owned.items() if _tier(name) == tier}, timeout)
    for pf in (state_dir / "pids").glob("*.pid"):
        pf.unlink(missing_ok=True)
    return killed


def stop_group(group: dict[str, int], timeout: float = 10.0) -> list[str]:
    """Stop these processes (TERM, KILL after ``timeout``); the names of those killed."""
    return _stop(group, timeout)


def _stop(group: dict[str, int], timeout: float) -> list[str]:
    for pid in group.values():
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in group.values()):
        time.sleep(0.05)
    killed = [name for name, pid in group.items() if alive(pid)]
    for name in killed:
        _signal_group(group[name], signal.SIGKILL)
    for pid in group.values():
        _wait_gone(pid, 5.0)
    return killed


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by ``pid`` (our components lead their own), else the pid."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    _CHILDREN.pop(pid, None)


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (VmRSS), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tail(log: Path, lines: int = 5) -> str:
    """The last lines of a log, without any line that could carry key or token material."""
    try:
        text = log.read_bytes()[-16384:].decode(errors="replace")
    except OSError:
        return "(no log)"
    kept = [ln.strip() for ln in text.splitlines()
            if ln.strip() and not any(m in ln for m in _SECRET_MARKERS)]
    return " | ".join(kept[-lines:]) or "(log empty)"


class WaitTimeout(Exception):
    """``wait_for`` ran out of time; carries the last error seen."""


def wait_for(what: str, check: Callable[[], T | None], *, timeout: float,
             interval: float = 0.2, abort: Callable[[], str | None] | None = None) -> T:
    """One wait helper for every wait: retry ``check`` until it returns a value.

    Exceptions from ``check`` count as "not yet" and the last one is reported on
    timeout.  ``abort`` may return a reason to stop early (a component exited).
    """
    deadline = time.monotonic() + timeout
    last: str = "no result"
    while True:
        try:
            result = check()
            if result is not None and result is not False:
                return result
        except Exception as e:  # the wait is exactly about tolerating these
            last = f"{type(e).__name__}: {e}"
        if abort is not None and (reason := abort()):
            raise WaitTimeout(f"{what}: {reason}")
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timeout after {timeout:.0f}s while waiting for {what}, "
                              f"last error: {last[:200]}")
        time.sleep(interval)
