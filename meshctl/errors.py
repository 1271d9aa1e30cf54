"""The error hierarchy, one meaning per class, and its exit codes.

Every error meshctl raises on purpose is a :class:`MeshctlError`; the CLI turns it
into one line on stderr and the exit code below, in one place (``meshctl.cli``).
Messages must never carry secret material (keys, tokens, kubeconfigs): callers
build them from names, paths and reasons only, and :func:`one_line` caps them.
"""

from __future__ import annotations

MAX_MESSAGE = 400


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """Collapse whitespace and cap the length so an error stays one readable line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class MeshctlError(Exception):
    """Base class: a failure meshctl understands and can explain in one line."""

    exit_code = 3

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = one_line(message)
        self.hint = one_line(hint) if hint else None
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class UsageError(MeshctlError):
    """Bad flags or bad configuration: nothing was touched. Exit 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A cluster or mesh file is wrong; the message names the file and the key."""


class CheckFailed(MeshctlError):
    """A check ran and said no (preflight FAIL, verify failed, cert expired). Exit 1."""

    exit_code = 1


class ClusterError(MeshctlError):
    """A cluster, its API or istioctl failed after retries. Exit 3."""

    exit_code = 3
