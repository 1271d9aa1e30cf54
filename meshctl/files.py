"""Writing files safely: atomically, with the mode set before any byte lands.

Private keys must never exist on disk world-readable, not even for the instant
between ``open`` and ``chmod``, and a crash must never leave half a key: so every
write goes to a temporary file created 0600 (or the requested mode) in the target
folder, is fsynced, then renamed over the target.  Several files that belong
together (a root's key and certificate, a dry-run's folder) are all written to
temporaries first and renamed only when every one of them is complete
(:func:`write_all`): a full disk or a read-only folder leaves nothing half-written.

A failure to write is one line naming the path and the cause (:class:`WriteFailed`),
never a traceback.

:func:`scratch_dir` is the one place meshctl lets a library put short-lived key files
(``kubernetes.config`` writes ``client-key-data`` of the operator's kubeconfig to a
file, because Python's ``ssl`` loads keys only from files): a 0700 folder per process
under meshctl's own cache folder, removed at exit, and any folder of a process that is
gone (SIGKILL) is removed at the next start.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from meshctl.errors import UsageError

PRIVATE = 0o600
PUBLIC = 0o644


class WriteFailed(UsageError):
    """A local file or folder could not be written (permissions, read-only, disk full)."""


def _failed(path: Path, e: OSError, what: str = "cannot write") -> WriteFailed:
    return WriteFailed(f"{path}: {what}: {e.strerror or type(e).__name__}")


def _mkdirs(folder: Path, mode: int) -> list[Path]:
    """Create ``folder`` and missing parents with ``mode``; the ones created, outermost first."""
    made = []
    for parent in [*reversed(folder.parents), folder]:
        if not parent.exists():
            try:
                parent.mkdir(mode=mode)
            except FileExistsError:  # another process made it meanwhile
                continue
            made.append(parent)
    return made


def _temp(path: Path, raw: bytes, mode: int) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: Path, data: bytes | str, *, mode: int = PUBLIC) -> Path:
    """Write ``data`` to ``path`` via temp file + fsync + rename; the file has ``mode``."""
    return write_all({Path(path): (data, mode)})[0]


def write_all(payload: Mapping[Path, tuple[bytes | str, int]]) -> list[Path]:
    """Write several files all or nothing: every temp file first, then every rename.

    Folders are created as needed (0700 when any file in them is private); on failure
    the temporaries and the folders this call created are removed and
    :class:`WriteFailed` names the path.  The renames at the end do not fail for lack
    of space.
    """
    made: list[Path] = []
    temps: list[tuple[str, Path]] = []
    current = Path(".")
    try:
        for path, (data, mode) in payload.items():
            current = Path(path)
            made += _mkdirs(current.parent, 0o700 if mode == PRIVATE else 0o755)
            raw = data.encode() if isinstance(data, str) else data
            temps.append((_temp(current, raw, mode), current))
        for tmp, target in temps:
            current = target
            os.replace(tmp, target)
    except OSError as e:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise _failed(current, e) from None
    return [target for _, target in temps]


def check_writable(path: Path) -> None:
    """Before any work: can a file be created at ``path``?  (``--junit`` and friends.)"""
    path = Path(path)
    if path.is_dir():
        raise WriteFailed(f"{path}: is a folder, expected a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".meshctl-check.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise _failed(path, e) from None


def timestamp() -> str:
    """A UTC timestamp for backup names, sortable and free of ':'."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def read_folder(directory: Path, *, only: Sequence[str] | None = None
                ) -> dict[str, tuple[bytes, int]]:
    """The files under ``directory`` (just those named in ``only``), as
    ``{relative path: (bytes, mode)}`` for :func:`new_folder`; sub-folders included."""
    directory = Path(directory)
    current = directory
    content: dict[str, tuple[bytes, int]] = {}
    try:
        items = (sorted(directory.rglob("*")) if only is None
                 else [directory / rel for rel in only])
        for item in items:
            current = item
            if item.is_file():
                content[item.relative_to(directory).as_posix()] = (
                    item.read_bytes(), stat.S_IMODE(item.stat().st_mode))
    except OSError as e:
        raise _failed(current, e, "cannot read it to back it up") from None
    return content


def new_folder(path: Path, content: Mapping[str, tuple[bytes, int]], *,
               what: str = "cannot write") -> Path:
    """Create the 0700 folder ``path`` holding ``content`` (relative path to bytes and
    mode), all or nothing; returns it.

    Each file is created with its mode before any byte lands and fsynced, in a hidden
    folder beside ``path`` that is renamed into place when complete: a full disk never
    leaves a folder that looks whole.  An existing folder is never replaced: if
    ``path`` exists, the new one is ``<path>-1`` (``-2``, ...).  Failures are one
    :class:`WriteFailed` line, ``what`` naming the action.
    """
    path = Path(path)
    target = path
    try:
        _mkdirs(path.parent, 0o700)
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            for rel, (data, mode) in content.items():
                file = staging / rel
                _mkdirs(file.parent, 0o700)
                with os.fdopen(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
                               "wb") as f:
                    os.fchmod(f.fileno(), mode)
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(staging, 0o700)
            for n in itertools.count(1):
                if not target.exists():
                    break
                target = path.with_name(f"{path.name}-{n}")
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    except OSError as e:
        raise _failed(target, e, what) from None
    return target


# --- the scratch folder for short-lived key files -------------------------------------

_SCRATCH: Path | None = None


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "meshctl"


def _start_time(pid: int) -> str:
    """The process's start time (clock ticks since boot, Linux), "" where unknown.

    Together with the pid it names one process, even after the pid is reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else ""


def _alive(entry: str) -> bool:
    pid_text, _, started = entry.partition("-")
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not started or _start_time(pid) in ("", started)


def sweep_scratch(base: Path | None = None) -> list[Path]:
    """Remove the scratch folders of meshctl processes that are gone; returns them."""
    base = base or _cache_home() / "scratch"
    removed = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.is_dir() and not _alive(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def scratch_dir() -> Path:
    """This process's 0700 folder for key files a library insists on writing.

    Made on first use (after sweeping dead processes' folders) and removed at exit.
    """
    global _SCRATCH
    if _SCRATCH is not None and _SCRATCH.is_dir():
        return _SCRATCH
    base = _cache_home() / "scratch"
    try:
        _mkdirs(base, 0o700)
        os.chmod(base, 0o700)
        if base.stat().st_uid != os.getuid():
            raise WriteFailed(f"{base}: not owned by this user; refusing to put keys there")
        sweep_scratch(base)
        mine = base / f"{os.getpid()}-{_start_time(os.getpid())}".rstrip("-")
        mine.mkdir(mode=0o700, exist_ok=True)
    except OSError as e:
        where = " (under $XDG_CACHE_HOME)" if os.environ.get("XDG_CACHE_HOME") else ""
        raise _failed(base, e, f"cannot write{where}") from None
    _SCRATCH = mine
    atexit.register(shutil.rmtree, mine, True)
    return mine
