"""The environment variables meshctl reads, each parsed where it is used.

Why at use time and not at import: a module-level ``float(os.environ[...])`` turns a typo
in one variable into a traceback for every command, ``--help`` included, before the
error guard of the tasks exists.  Read here, a bad value is one line naming the
variable and what it takes, exit 2 (:class:`~meshctl.errors.UsageError`), and only the
commands that need it fail.  An empty value means "not set", as a shell's ``VAR=``
does.  The variables (docs/architecture.md lists them with their defaults):
``MESHCTL_CLUSTERS_DIR``, ``MESHCTL_API_DEADLINE``, ``MESHCTL_ISTIOCTL``,
``XDG_CACHE_HOME``, and the sandbox's ``MESHCTL_SANDBOX_*``; ``KUBECONFIG`` is read by
the ``kubernetes`` loader itself.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from meshctl.errors import UsageError, one_line


def text(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's value, or ``None`` when it is unset or empty."""
    value = (os.environ if environ is None else environ).get(name)
    return value or None


def _show(value: str) -> str:
    return one_line(repr(value), 60)


def number(name: str, *, default: float, minimum: float | None = None,
           maximum: float | None = None, whole: bool = False,
           environ: Mapping[str, str] | None = None) -> float:
    """A number (seconds, a count) from ``name``, else ``default``; a value that is not
    a finite number in ``[minimum, maximum]`` is a :class:`UsageError` naming ``name``."""
    raw = text(name, environ)
    if raw is None:
        return default
    kind = "a whole number" if whole else "a number"
    try:
        value = float(int(raw.strip())) if whole else float(raw)
    except ValueError:
        raise UsageError(f"{name}={_show(raw)}: not {kind}",
                         hint=f"unset it for the default, {default:g}") from None
    if not math.isfinite(value):
        raise UsageError(f"{name}={_show(raw)}: not a finite number")
    if minimum is not None and value < minimum:
        raise UsageError(f"{name}={_show(raw)}: must be at least {minimum:g}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{name}={_show(raw)}: must be at most {maximum:g}")
    return value


def choice(name: str, choices: Sequence[str], *, default: str,
           environ: Mapping[str, str] | None = None) -> str:
    """One of ``choices`` from ``name``, else ``default``; anything else is refused
    (a typo such as ``of`` for ``off`` must not silently mean the default)."""
    raw = text(name, environ)
    if raw is None:
        return default
    if raw not in choices:
        raise UsageError(f"{name}={_show(raw)}: expected {' or '.join(choices)}")
    return raw
