"""``sandbox.status``: what runs and whether each API answers, as data; never raises
for a missing sandbox, so a half-dead sandbox can still be inspected and stopped."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meshctl.sandbox import cluster, procs
from meshctl.sandbox.lifecycle import STATE_FILE, SandboxCluster, load, resolve_state_dir


@dataclass(frozen=True)
class ProcessStatus:
    component: str
    pid: int
    alive: bool
    rss_bytes: int


@dataclass(frozen=True)
class ClusterStatus:
    name: str
    context: str
    server: str
    api_healthy: bool
    nodes_ready: int
    nodes_wanted: int
    processes: tuple[ProcessStatus, ...]

    @property
    def rss_bytes(self) -> int:
        return sum(p.rss_bytes for p in self.processes)


@dataclass(frozen=True)
class SandboxStatus:
    state_dir: Path
    up: bool
    kubeconfig: Path | None
    clusters_dir: Path | None
    clusters: tuple[ClusterStatus, ...]
    lb: ProcessStatus | None

    def to_dict(self) -> dict[str, Any]:
        data = json.loads(json.dumps(asdict(self), default=str))
        for c, cs in zip(data["clusters"], self.clusters, strict=True):
            c["rss_bytes"] = cs.rss_bytes
        return data


def _process_status(component: str, pid: int, state: Path) -> ProcessStatus:
    ok = procs.alive(pid, state)
    return ProcessStatus(component, pid, ok, procs.rss_bytes(pid) if ok else 0)


def _cluster_status(state: Path, c: SandboxCluster) -> ClusterStatus:
    p = cluster.ClusterPlan(index=int(c.name.removeprefix("cluster")), state_dir=state,
                            shape=c.shape, etcd_port=0, peer_port=0,
                            api_port=int(c.server.rsplit(":", 1)[1]))
    api = p.api()
    healthy = api.ready()
    ready = 0
    if healthy:
        try:
            ready = sum(1 for n in api.get("/api/v1/nodes")["items"]
                        if any(k["type"] == "Ready" and k["status"] == "True"
                               for k in n.get("status", {}).get("conditions", [])))
        except Exception:  # status reports, it does not fail
            ready = 0
    return ClusterStatus(name=c.name, context=c.context, server=c.server, api_healthy=healthy,
                         nodes_ready=ready, nodes_wanted=c.shape.nodes,
                         processes=tuple(_process_status(k, v, state)
                                         for k, v in sorted(c.pids.items())))


def status(state_dir: Path | str | None = None) -> SandboxStatus:
    """What runs and whether each API answers; never raises for a missing sandbox."""
    state = resolve_state_dir(state_dir)
    if not (state / STATE_FILE).exists():
        return SandboxStatus(state, False, None, None, (), None)
    sb = load(state)
    clusters = tuple(_cluster_status(state, c) for c in sb.clusters)
    lb = _process_status("lb", sb.lb_pid, state) if sb.lb_pid else None
    is_up = (lb is not None and lb.alive
             and all(c.api_healthy and all(p.alive for p in c.processes) for c in clusters))
    return SandboxStatus(state, is_up, sb.kubeconfig, sb.clusters_dir, clusters, lb)
