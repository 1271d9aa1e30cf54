"""Durations as Go writes them (``24h``, ``90m``, ``1h30m``, ``45s``), and how long is left.

Istio's settings are Go durations: istiod's ``DEFAULT_WORKLOAD_CERT_TTL`` and a proxy's
``SECRET_TTL`` are ``24h`` by default.  ``mesh.yaml``'s ``ca.workloadCertTTL`` uses the
same syntax, so an operator copies the value from Istio's config as it is, and one
parser reads both.  Pure functions, no I/O.
"""

from __future__ import annotations

import re

# Go's time.ParseDuration units, in seconds.
UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
         "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse(text: str) -> float:
    """Seconds in a Go duration (``1h30m`` → 5400.0); ``ValueError`` if it is not one.

    As Go: an optional sign, then number-and-unit pairs; ``0`` alone needs no unit.
    A bare number is refused (``24``: hours? seconds?), as Go refuses it.
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration")
    body = text.strip()
    sign = -1.0 if body.startswith("-") else 1.0
    if body.startswith(("-", "+")):
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"{text!r} is not a duration")
    total, pos = 0.0, 0
    for match in _PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body):
        raise ValueError(f"{text!r} is not a duration (e.g. 24h, 90m, 1h30m)")
    return sign * total


def show(seconds: float) -> str:
    """``23h59m``, ``4m10s``, ``12s``: a duration to read, in whole seconds (rounded up,
    so a wait that is not over never shows as ``0s``)."""
    whole = max(0, -int(-seconds // 1))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
