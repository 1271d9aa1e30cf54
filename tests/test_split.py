"""canary --observe's judgement: exact binomial bounds (meshctl.split), pure."""

from __future__ import annotations

import random

import pytest

from meshctl import split


@pytest.mark.parametrize(("n", "p", "tail", "expected"), [
    (500, 0.2, 0.00025, (70, 132)),
    (500, 0.8, 0.00025, (368, 430)),
    (200, 0.2, 0.00025, (22, 61)),
    (500, 0.0, 0.00025, (0, 0)),
    (500, 1.0, 0.00025, (500, 500)),
    (0, 0.5, 0.00025, (0, 0)),
], ids=["500@20%", "500@80%", "200@20%", "0%-exact", "100%-exact", "no-calls"])
def test_bounds(n: int, p: float, tail: float, expected: tuple[int, int]) -> None:
    assert split.bounds(n, p, tail) == expected


def test_bounds_are_symmetric_for_complementary_weights() -> None:
    lo, hi = split.bounds(500, 0.2, 0.001)
    lo2, hi2 = split.bounds(500, 0.8, 0.001)
    assert (lo + hi2, hi + lo2) == (500, 500)


def test_false_failure_rate_holds_in_a_simulation() -> None:
    """A healthy 80/20 split fails the check no more often than the stated rate."""
    rng = random.Random(1234)
    rate, n, trials = 0.05, 300, 4000
    failures = 0
    for _ in range(trials):
        v2 = sum(rng.random() < 0.2 for _ in range(n))
        judged = split.judge((("v1", 80), ("v2", 20)), {"v1": n - v2, "v2": v2}, sent=n,
                             rate=rate)
        failures += not judged.ok
    assert failures / trials <= rate


@pytest.mark.parametrize(("answers", "sent", "ok"), [
    ({"v1": 402, "v2": 98}, 500, True),
    ({"v1": 500}, 500, False),            # v2 never answered
    ({"v1": 250, "v2": 250}, 500, False),  # 50/50 is not 80/20
    ({"v1": 400, "v2": 99}, 500, False),   # one call failed
    ({"v1": 400, "v2": 90, "v3": 10}, 500, False),  # a version with no weight answered
    ({}, 500, False),                      # nothing answered
], ids=["healthy", "v2-missing", "even", "one-failed", "unexpected-v3", "silent"])
def test_judge(answers: dict[str, int], sent: int, ok: bool) -> None:
    assert split.judge((("v1", 80), ("v2", 20)), answers, sent=sent).ok is ok


def test_zero_weight_tolerates_no_stray_call() -> None:
    assert split.judge((("v1", 0), ("v2", 100)), {"v2": 500}, sent=500).ok
    assert not split.judge((("v1", 0), ("v2", 100)), {"v2": 499, "v1": 1}, sent=500).ok
