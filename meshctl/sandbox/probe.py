"""The sandbox's traffic probe for ``verify`` and ``canary --observe``.

On real clusters verify's probe is a curl pod beside helloworld pods, each with an
Envoy sidecar.  On sandbox clusters no container runs, so this probe uses the sandbox's
own real workloads instead (:mod:`meshctl.sandbox.workload`): servers and callers that
get certificates and routes from their cluster's real istiod and speak proxyless gRPC.
The task layer picks the probe (:func:`detect`): a cluster whose kubeconfig is a sandbox's
is a sandbox cluster.  Everything this probe reports says what it is, since it proves
less than Envoy would (:data:`LIMITS`).

Its answers are plain data (:class:`meshctl.sandbox.calls.Calls`, chains as PEM bytes),
so verify and canary judge them without importing the sandbox.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from meshctl.sandbox import calls, workload
from meshctl.sandbox import lifecycle as sbx
from meshctl.sandbox import workload_cluster as wc

NAME = "sandbox workloads (proxyless gRPC: pilot-agent + Istio's echo server)"
LIMITS = ("no Envoy: proves identity, trust, discovery and routing as proxyless gRPC "
          "sees them, not the sidecar; on one network calls go straight to the other "
          "cluster's workloads, so east-west gateways are not exercised")
CALLER = "meshctl-probe"
#: Seconds between a routing write and the first counted call: istiod's informer and
#: its push debounce (100 ms by default).  Every echo-client run is a new gRPC client
#: whose first xDS requests go through the agent to istiod, so it sees what istiod has.
SETTLE = 2.0


def detect(kubeconfigs: list[Path]) -> sbx.Sandbox | None:
    """The sandbox whose kubeconfig every cluster uses, or None (real clusters)."""
    dirs = {Path(k).expanduser().resolve().parent for k in kubeconfigs}
    if len(dirs) != 1:
        return None
    state = dirs.pop()
    if not (state / sbx.MARKER).exists() or not (state / sbx.STATE_FILE).exists():
        return None
    return sbx.load(state)


@dataclass
class Probe:
    """Callers per cluster (started on first use), servers it started; ``close`` stops both."""

    sb: sbx.Sandbox
    name: str = NAME
    limits: str = LIMITS
    callers: dict[tuple[str, str], workload.Workload] = field(default_factory=dict)
    servers: list[tuple[str, str, str]] = field(default_factory=list)

    def caller(self, cluster: str, namespace: str) -> workload.Workload:
        key = (cluster, namespace)
        if key not in self.callers:
            self.callers[key] = workload.start_caller(self.sb, cluster=cluster,
                                                      namespace=namespace,
                                                      service_account=CALLER)
        return self.callers[key]

    def deploy(self, cluster: str, namespace: str, service: str, version: str) -> None:
        """A server of ``service`` ``version`` in ``cluster`` (the Service is created too)."""
        workload.start(self.sb, cluster=cluster, namespace=namespace, service=service,
                       version=version)
        self.servers.append((cluster, namespace, service))

    def send(self, cluster: str, namespace: str, host: str, port: int, count: int, *,
             qps: int = 100) -> calls.Calls:
        return calls.send(self.sb, self.caller(cluster, namespace), host, port, count=count,
                          qps=qps)

    def peer_chain(self, cluster: str, namespace: str, server_cluster: str,
                   service: str) -> list[bytes]:
        """The chain one of ``service``'s servers in ``server_cluster`` presents to a caller."""
        for w in workload.records(self.sb):
            if (w.cluster, w.namespace, w.service) == (server_cluster, namespace, service) \
                    and w.server:
                return calls.peer_chain(self.sb, self.caller(cluster, namespace), w.ip,
                                        workload.PORT)
        return []

    def port(self, cluster: str, namespace: str, service: str) -> int | None:
        """The Service's first port in ``cluster`` (None without a Service)."""
        svc = wc.get(wc.api(self.sb, cluster),
                      f"/api/v1/namespaces/{namespace}/services/{service}")
        ports = (svc or {}).get("spec", {}).get("ports") or []
        return int(ports[0]["port"]) if ports else None

    def settle(self) -> None:
        time.sleep(SETTLE)

    def close(self) -> None:
        """Stop what this probe started: servers (deregistered first), then callers."""
        for cluster, namespace, service in dict.fromkeys(self.servers):
            workload.delete(self.sb, cluster=cluster, namespace=namespace, service=service)
        self.servers.clear()
        api_by: dict[str, object] = {}
        for (cluster, _ns), w in self.callers.items():
            api = api_by.setdefault(cluster, wc.api(self.sb, cluster))
            workload.stop(self.sb, w, api)
            wc.delete_created(api, _ns, CALLER)
        self.callers.clear()
