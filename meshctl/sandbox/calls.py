"""Calls between sandbox workloads: Istio's echo client as a caller, counted per answer.

A caller is a workload agent without a server (``workload.start_caller``): it has an
identity and routes from its cluster's istiod.  ``send`` runs ``echo-client`` against an
``xds:///<host>:<port>`` target with the caller's xDS bootstrap, so the same
VirtualServices, DestinationRules and endpoints a proxyless pod would see decide where
each call goes.  Each answer names the server's cluster and version; each failure keeps
gRPC's reason, put into words by :func:`cause`.

echo-client prints its answers only when every call succeeded, so it runs with the
``forwarder`` log scope at debug level, which logs every answer and every failure as it
happens; both are parsed from the same text (:func:`parse`, pure).

``peer_chain`` does one TLS handshake with a server as the caller (its certificate and
key, ALPN h2), through ``openssl s_client``, and returns the chain the server presented.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field

from meshctl.errors import ClusterError
from meshctl.sandbox.lifecycle import Sandbox
from meshctl.sandbox.workload import CLIENT, Workload, _binaries

_ANSWER = re.compile(r"^\[(\d+) body\] (Cluster|ServiceVersion)=(.*)$", re.M)
_LATENCY = re.compile(r"^\[(\d+)\] Latency=(\S+)$", re.M)
_FAILED = re.compile(r"request failed: (.*)$", re.M)
_SUMMARY = re.compile(r"(\d+)/(\d+) requests had errors; first error: (.*)$", re.M)
_TIMED_OUT = re.compile(r"only (\d+)/(\d+) requests completed", re.M)

# gRPC's words for a failure → the cause in an operator's words (first match wins).
_CAUSES = (
    ("unknown authority", "the server's certificate does not chain to the caller's mesh root"),
    ("certificate signed by", "the server's certificate does not chain to the caller's mesh root"),
    ("bad certificate", "the server refused the caller's certificate (another root?)"),
    ("handshake", "TLS handshake failed"),
    ("connection refused", "connection refused"),
    ("server preface", "the server closed the connection before gRPC began (plaintext to a "
                       "server that requires mTLS, or the caller has no mTLS rule)"),
    ("connection reset", "connection reset"),
    ("no children to pick from", "no endpoints"),
    ("all SubConns", "no reachable endpoint"),
    ("resource not found", "no route for the host (xDS resource not found)"),
    ("DeadlineExceeded", "timed out"),
    ("context deadline exceeded", "timed out"),
)


def cause(error: str) -> str:
    """gRPC's error text as a cause an operator can act on (falls back to the text)."""
    for needle, words in _CAUSES:
        if needle in error:
            return words
    text = error.split("desc = ", 1)[-1].strip()
    return text[:160] or "unknown error"


@dataclass
class Calls:
    """What ``count`` calls came to: answers per (cluster, version), failures by cause."""

    sent: int
    answered: Counter[tuple[str, str]] = field(default_factory=Counter)
    causes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(self.answered.values())

    @property
    def failed(self) -> int:
        return self.sent - self.ok

    def merge(self, other: Calls) -> Calls:
        return Calls(self.sent + other.sent, self.answered + other.answered,
                     self.causes + other.causes, self.latencies_ms + other.latencies_ms)


def _ms(text: str) -> float | None:
    m = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s)", text)
    if not m:
        return None
    scale = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return float(m.group(1)) * scale


def parse(text: str, count: int) -> Calls:
    """Answers and failures from echo-client's output (stdout and debug log together)."""
    per: dict[int, dict[str, str]] = {}
    for m in _ANSWER.finditer(text):
        per.setdefault(int(m.group(1)), {})[m.group(2)] = m.group(3).strip()
    lat: dict[int, float] = {}
    for m in _LATENCY.finditer(text):
        ms = _ms(m.group(2))
        if ms is not None:
            lat[int(m.group(1))] = ms
    answered: Counter[tuple[str, str]] = Counter(
        (f.get("Cluster", "?"), f.get("ServiceVersion", "?")) for f in per.values())
    causes: Counter[str] = Counter(cause(m.group(1)) for m in _FAILED.finditer(text))
    got = sum(answered.values())
    missing = count - got - sum(causes.values())
    if missing > 0:  # failures not logged one by one: the summary line names the first
        first = _SUMMARY.search(text)
        reason = cause(first.group(3)) if first else (
            "timed out" if _TIMED_OUT.search(text) else "no answer")
        causes[reason] += missing
    return Calls(count, answered, causes, [lat[i] for i in sorted(lat) if i in per])


def send(sb: Sandbox, caller: Workload, host: str, port: int, *, count: int, qps: int = 50,
         timeout: float = 5.0) -> Calls:
    """``count`` calls from ``caller`` to ``xds:///host:port`` at ``qps`` per second.

    Bounded: at most ``count`` calls, each with ``timeout``; the whole run is killed
    after ``count / qps + 30`` seconds.
    """
    links = _binaries(sb)
    root = caller.root(sb)
    # echo-client's --timeout bounds the whole set of calls (and each call), so it must
    # cover the pacing too: without it the last calls of a paced run "time out".
    whole = count / max(qps, 1) + timeout
    argv = [str(links / CLIENT), f"xds:///{host}:{port}", f"--count={count}",
            f"--qps={qps}", f"--timeout={whole:.1f}s", "--log_output_level=forwarder:debug"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(root),
           "GRPC_XDS_BOOTSTRAP": str(caller.bootstrap(sb))}
    limit = whole + 30
    try:
        out = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True,
                             timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return Calls(count, causes=Counter({f"echo-client did not finish in {limit:.0f}s": count}))
    return parse(out.stdout + "\n" + out.stderr, count)


_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.S)


def peer_chain(sb: Sandbox, caller: Workload, ip: str, port: int,
               timeout: float = 15.0) -> list[bytes]:
    """The certificates a server presents to ``caller`` in a TLS handshake (leaf first).

    The handshake uses the caller's own workload certificate, as a mesh client would; the
    server's chain is returned whatever it chains to, for the caller to judge.
    """
    certs = caller.certs(sb)
    argv = ["openssl", "s_client", "-connect", f"{ip}:{port}", "-showcerts", "-alpn", "h2",
            "-cert", str(certs / "cert-chain.pem"), "-key", str(certs / "key.pem")]
    try:
        out = subprocess.run(argv, input=b"", capture_output=True, timeout=timeout,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ClusterError(f"TLS handshake with {ip}:{port}: {type(e).__name__}") from None
    return _PEM.findall(out.stdout)
