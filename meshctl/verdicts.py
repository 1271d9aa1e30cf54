"""The verdict words every check in meshctl uses, and the one rule for combining them.

Preflight, certificate status and verify all report PASS/WARN/FAIL (verify adds SKIP for
a check that could not run because an earlier one failed); a group's verdict is its
worst member's, and an empty group passes.
"""

from __future__ import annotations

from collections.abc import Iterable

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
SEVERITY = {PASS: 0, SKIP: 0, WARN: 1, FAIL: 2}


def worst(levels: Iterable[str]) -> str:
    """The most severe of ``levels``; PASS when there are none."""
    return max(levels, key=SEVERITY.__getitem__, default=PASS)
