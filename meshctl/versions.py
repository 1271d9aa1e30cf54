"""Version strings → comparable numbers: the one parser for Istio and Kubernetes versions.

Both projects write ``1.31.0``, ``v1.36.3``, ``1.31-dev`` or, for a source build,
``v0.0.0-master``; meshctl only ever compares (major, minor), so that is all it parses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_MAJOR_MINOR = re.compile(r"^v?(\d+)\.(\d+)")


def major_minor(version: str | None) -> tuple[int, int] | None:
    """``(1, 31)`` from ``1.31.0``, ``v1.31.2`` or ``1.31-dev``; ``None`` if unparseable."""
    m = _MAJOR_MINOR.match(version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def kubernetes_minor(info: Mapping[str, Any]) -> int | None:
    """The minor version from an API server's ``/version``: ``minor`` ("28+" on some
    clouds), else ``gitVersion``.

    A development build says ``v0.0.0-master``: that is "unknown", not "too old".
    """
    major, minor = str(info.get("major", "")), str(info.get("minor", "")).rstrip("+")
    if major == "1" and minor.isdigit():
        return int(minor)
    parsed = major_minor(str(info.get("gitVersion", "")))
    return parsed[1] if parsed and parsed[0] == 1 else None
