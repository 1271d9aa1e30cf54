"""How many requests verify sends: enough that a healthy mesh fails by bad luck only rarely.

verify passes only when every expected endpoint (a cluster and the version it runs, as
:func:`meshctl.verify.traffic.expected_answers` counts them) answered at least once.
With ``k`` equally likely endpoints, a fixed count does not scale: 10 requests miss one
of 5 clusters in about one run of two.  So the count is sized from ``k`` for a stated
false-failure rate (:data:`TARGET`, 0.1 %): the smallest ``n`` such that

    P(some endpoint unseen after n uniform draws)
        = sum_{j=1..k-1} (-1)^(j+1) C(k, j) (1 - j/k)^n          (inclusion-exclusion)

is at most the target.  The sum is computed exactly, in integers, up to
:data:`EXACT_UP_TO` endpoints; above that the union bound ``k (1 - 1/k)^n`` (an upper
bound, so every rate printed stays true) is used instead.  ``--requests N`` given
explicitly wins; the rate printed is then the one for that N.

"Equally likely" is Istio's default for verify's sample: one pod per cluster, no
locality failover configured, so each request picks an endpoint at random.  Pure: no
I/O; the request count's ceiling :data:`MAX_REQUESTS` bounds every request loop.
"""

from __future__ import annotations

import math
from fractions import Fraction

TARGET = Fraction(1, 1000)  # the false-failure rate verify sizes its requests for
MAX_REQUESTS = 10_000  # verify never sends more (--requests above it is a usage error)
EXACT_UP_TO = 200  # endpoints; above, the union bound


def miss_chance(endpoints: int, requests: int) -> Fraction:
    """P(at least one of ``endpoints`` equally likely endpoints is never drawn in
    ``requests`` uniform draws), exactly (inclusion-exclusion), or its union bound
    above :data:`EXACT_UP_TO` endpoints."""
    k, n = int(endpoints), int(requests)
    if k < 1 or n < 0:
        raise ValueError(f"need endpoints >= 1 and requests >= 0, got {k}, {n}")
    if k == 1:
        return Fraction(0 if n >= 1 else 1)
    if n < k:
        return Fraction(1)
    if k > EXACT_UP_TO:
        return min(Fraction(1), k * Fraction(k - 1, k) ** n)
    unseen = sum((-1) ** (j + 1) * math.comb(k, j) * (k - j) ** n for j in range(1, k))
    return Fraction(unseen, k ** n)


def requests_for(endpoints: int, target: Fraction | float = TARGET) -> int:
    """The smallest ``n`` with ``miss_chance(endpoints, n) <= target`` (at least 1)."""
    goal = Fraction(target)
    if not 0 < goal < 1:
        raise ValueError(f"target must be between 0 and 1, got {target}")
    k = int(endpoints)
    if k <= 1:
        return 1
    # the union bound's n is always enough; the exact n is at most that
    high = max(k, math.ceil(math.log(k / float(goal)) / -math.log1p(-1 / k)))
    while miss_chance(k, high) > goal:  # float rounding in the estimate above
        high += 1
    low = k - 1  # fewer than k draws can never see k endpoints
    while high - low > 1:  # miss_chance(low) > goal >= miss_chance(high)
        mid = (low + high) // 2
        if miss_chance(k, mid) <= goal:
            high = mid
        else:
            low = mid
    return high


def request_count(endpoints: int, requests: int | None = None, *, callers: int = 1) -> int:
    """``--requests`` when given (it wins), else enough for :data:`TARGET`, capped at
    :data:`MAX_REQUESTS`.  With several ``callers`` that must each see every endpoint,
    each gets enough for ``TARGET / callers``, so the run as a whole stays under it."""
    if requests is not None:
        return requests
    return min(requests_for(endpoints, Fraction(TARGET) / max(callers, 1)), MAX_REQUESTS)


def run_miss_chance(endpoints: int, per_caller: int, callers: int = 1) -> Fraction:
    """Chance that at least one of ``callers`` (each sending ``per_caller``) misses an
    endpoint on a healthy mesh: the union bound over the callers, at most 1."""
    return min(Fraction(1), max(callers, 1) * miss_chance(endpoints, per_caller))


def chance_text(chance: Fraction | float) -> str:
    """``"< 0.098 %"``: a percentage strictly above ``chance``, two significant digits,
    rounded up, so the sentence it goes into is never an understatement (``"0 %"`` and
    ``"100 %"`` are exact)."""
    p = Fraction(chance)
    if p <= 0:
        return "0 %"
    if p >= 1:
        return "100 %"  # fewer requests than endpoints: some endpoint is always missed
    percent = p * 100
    exponent = 0
    while Fraction(10) ** exponent > percent:
        exponent -= 1
    while Fraction(10) ** (exponent + 1) <= percent:
        exponent += 1
    step = Fraction(10) ** (exponent - 1)
    above = (math.floor(percent / step) + 1) * step
    if exponent >= -4:
        digits = max(0, 1 - exponent)
        text = f"{float(above):.{digits}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return f"< {text} %"
    return f"< {float(above):.1e} %"


def luck_line(sent: int, endpoints: int, callers: int = 1) -> str:
    """The sentence verify prints after sending its requests (from each of ``callers``)."""
    each = sent // max(callers, 1)
    who = f" ({each} from each of {callers} callers)" if callers > 1 else ""
    return (f"sent {sent} requests{who}: chance that a healthy mesh misses a cluster by bad "
            f"luck {chance_text(run_miss_chance(endpoints, each, callers))}")
