"""What verify and ``canary --observe`` need from a traffic probe, as a Protocol.

A probe puts servers into the mesh, sends calls from a cluster and says who answered.
There are two: sidecar pods (helloworld and curl with Envoy, on real clusters, in
:mod:`meshctl.verify.traffic`) and the sandbox's own workloads (proxyless gRPC,
``meshctl.sandbox.probe``), which the task layer hands in on sandbox clusters.  verify
and canary depend on this shape only, so neither imports the sandbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Calls(Protocol):
    """The outcome of ``count`` calls: answers per (cluster, version), failures by cause."""

    sent: int
    answered: Mapping[tuple[str, str], int]
    causes: Mapping[str, int]
    latencies_ms: list[float]

    @property
    def ok(self) -> int: ...

    @property
    def failed(self) -> int: ...


class Probe(Protocol):
    """Servers and callers in the mesh (see the module docstring)."""

    name: str      # shown in every report that used it
    limits: str    # what a result from this probe does not prove

    def deploy(self, cluster: str, namespace: str, service: str, version: str) -> None: ...

    def send(self, cluster: str, namespace: str, host: str, port: int, count: int, *,
             qps: int = 100) -> Calls: ...

    def peer_chain(self, cluster: str, namespace: str, server_cluster: str,
                   service: str) -> list[bytes]: ...

    def port(self, cluster: str, namespace: str, service: str) -> int | None: ...

    def settle(self) -> None: ...

    def close(self) -> None: ...
