"""Writing files safely: atomically, with the mode set before any byte lands.

Private keys must never exist on disk world-readable, not even for the instant
between ``open`` and ``chmod``, and a crash must never leave half a key: so every
write goes to a temporary file created 0600 (or the requested mode) in the target
folder, is fsynced, then renamed over the target.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

PRIVATE = 0o600
PUBLIC = 0o644


def write_atomic(path: Path, data: bytes | str, *, mode: int = PUBLIC) -> Path:
    """Write ``data`` to ``path`` via temp file + fsync + rename; the file has ``mode``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def timestamp() -> str:
    """A UTC timestamp for backup names, sortable and free of ':'."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def backup_dir(directory: Path, *, into: Path | None = None) -> Path:
    """Copy ``directory`` to a timestamped sibling (or under ``into``), keeping modes."""
    target = (into or directory.parent) / f"{directory.name}.backup-{timestamp()}"
    shutil.copytree(directory, target, copy_function=shutil.copy2)
    os.chmod(target, 0o700)
    return target
