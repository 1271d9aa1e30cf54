"""Is an observed traffic split what the weights asked for?  Exact binomial bounds, pure.

``canary --weights v1=80,v2=20 --observe N`` sends N calls and counts who answered.
Each call lands on v2 with probability 0.2 if the routing works, so the count of v2
answers is Binomial(N, 0.2).  The bounds here are that distribution's exact quantiles
(no normal approximation, which is poor near 0 % and 100 %): a healthy mesh falls
outside them with probability at most ``rate`` over all versions together (split evenly
between the versions and the two tails: a Bonferroni bound).  A version weighted 0 % or
100 % gets exact bounds (0 answers, or all): one stray call is a failure.

Calls that fail are not part of the split; they are reported, and any failure is a
failed check of its own, because a canary that drops calls is not a canary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The default chance that a healthy mesh fails the check by bad luck.
RATE = 0.001


def _log_pmf(n: int, k: int, p: float) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def bounds(n: int, p: float, tail: float) -> tuple[int, int]:
    """The smallest range [lo, hi] with P(X < lo) <= tail and P(X > hi) <= tail, X ~ B(n, p)."""
    if n <= 0:
        return 0, 0
    if p <= 0.0:
        return 0, 0
    if p >= 1.0:
        return n, n
    pmf = [math.exp(_log_pmf(n, k, p)) for k in range(n + 1)]
    lo, below = 0, 0.0
    while lo < n and below + pmf[lo] <= tail:
        below += pmf[lo]
        lo += 1
    hi, above = n, 0.0
    while hi > 0 and above + pmf[hi] <= tail:
        above += pmf[hi]
        hi -= 1
    return lo, hi


@dataclass(frozen=True)
class VersionSplit:
    """One version: what was configured, what was seen, what was allowed."""

    version: str
    weight: int          # percent, as configured
    observed: int        # answers from this version
    low: int
    high: int

    @property
    def ok(self) -> bool:
        return self.low <= self.observed <= self.high

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "weight": self.weight, "observed": self.observed,
                "allowed": [self.low, self.high], "ok": self.ok}


@dataclass(frozen=True)
class Judgement:
    """The split over all answered calls, and the failures apart."""

    sent: int
    answered: int
    failed: int
    versions: tuple[VersionSplit, ...]
    unexpected: tuple[tuple[str, int], ...]  # answers from versions not in the weights
    rate: float

    @property
    def ok(self) -> bool:
        return (self.failed == 0 and not self.unexpected and self.answered > 0
                and all(v.ok for v in self.versions))

    def to_json(self) -> dict[str, object]:
        return {"sent": self.sent, "answered": self.answered, "failed": self.failed,
                "falseFailureRate": self.rate, "ok": self.ok,
                "versions": [v.to_json() for v in self.versions],
                "unexpected": dict(self.unexpected)}


def judge(weights: tuple[tuple[str, int], ...], by_version: dict[str, int], *, sent: int,
          rate: float = RATE) -> Judgement:
    """Compare answers per version with ``weights`` (percentages adding up to 100)."""
    answered = sum(by_version.values())
    tail = rate / (2 * max(len(weights), 1))
    versions = []
    for version, weight in weights:
        lo, hi = bounds(answered, weight / 100, tail)
        versions.append(VersionSplit(version, weight, by_version.get(version, 0), lo, hi))
    known = {v for v, _ in weights}
    unexpected = tuple(sorted((v, n) for v, n in by_version.items() if v not in known and n))
    return Judgement(sent, answered, sent - answered, tuple(versions), unexpected, rate)
