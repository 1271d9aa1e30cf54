"""Counting calls from echo-client's output (meshctl.sandbox.calls.parse), offline.

The fixtures are real runs of the sandbox's echo client (proxyless gRPC against the real
istiod): three calls answered by cluster2; three refused by a STRICT server because the
caller sent plaintext; three to a host that does not exist (timed out).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshctl.sandbox import calls

FIXTURES = Path(__file__).parent / "fixtures" / "echo"


def fixture(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text()


def test_answers_are_counted_once_each_by_cluster_and_version() -> None:
    got = calls.parse(fixture("three-answers-cluster2"), 3)
    assert (got.sent, got.ok, got.failed) == (3, 3, 0)
    assert dict(got.answered) == {("cluster2", "v1"): 3}
    assert len(got.latencies_ms) == 3 and all(ms > 0 for ms in got.latencies_ms)


@pytest.mark.parametrize(("name", "cause"), [
    ("strict-plaintext-refused", "plaintext to a server that requires mTLS"),
    ("no-such-host-timeout", "timed out"),
], ids=["plaintext-refused", "timeout"])
def test_failures_are_counted_with_their_cause_in_words(name: str, cause: str) -> None:
    got = calls.parse(fixture(name), 3)
    assert (got.ok, got.failed) == (0, 3)
    assert sum(got.causes.values()) == 3
    assert any(cause in c for c in got.causes), got.causes


def test_a_partial_failure_keeps_the_answers_and_the_failures() -> None:
    ok = fixture("three-answers-cluster2").replace("[2 body]", "[x body]").replace(
        "[2] Latency", "[x] Latency")
    text = ok + "\ndebug\tforwarder\trequest failed: rpc error: code = Unavailable desc = " \
                "connection error: desc = \"transport: Error while dialing: dial tcp " \
                "127.25.2.10:7070: connect: connection refused\"\n"
    got = calls.parse(text, 3)
    assert (got.ok, got.failed) == (2, 1)
    assert dict(got.causes) == {"connection refused": 1}


@pytest.mark.parametrize(("error", "words"), [
    ("x509: certificate signed by unknown authority", "does not chain to the caller's mesh root"),
    ("remote error: tls: bad certificate", "refused the caller's certificate"),
    ("connect: connection refused", "connection refused"),
    ("rpc error: code = Unavailable desc = no children to pick from", "no endpoints"),
    ("rpc error: code = Internal desc = something new", "something new"),
], ids=["unknown-authority", "bad-certificate", "refused", "no-endpoints", "fallback"])
def test_cause(error: str, words: str) -> None:
    assert words in calls.cause(error)


def test_missing_failures_take_the_summary_lines_cause() -> None:
    got = calls.parse("fatal\tError 2/2 requests had errors; first error: connect: "
                      "connection refused\n", 2)
    assert dict(got.causes) == {"connection refused": 2}
