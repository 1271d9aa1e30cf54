"""What every task shares: the error guard and where cluster files live."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke.exceptions import Exit

from meshctl.errors import MeshctlError, NotAvailable

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CLUSTERS_DIR = "clusters"


def guard(fn: F) -> F:
    """Turn a :class:`MeshctlError` into one stderr line and its exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MeshctlError as e:
            raise Exit(f"error: {e}", e.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def clusters_dir(flag: str | None) -> Path:
    """``--clusters-dir``, else ``$MESHCTL_CLUSTERS_DIR``, else ``./clusters``."""
    return Path(flag or os.environ.get("MESHCTL_CLUSTERS_DIR") or DEFAULT_CLUSTERS_DIR)


def not_yet(task: str, issue: int) -> None:
    """Tasks of later milestones say so plainly and exit 2 instead of pretending."""
    raise NotAvailable(f"'{task}' is not yet available in this version of meshctl (issue #{issue})")
