"""sandbox.*: local clusters with real control planes and kwok nodes (docs/testing.md).

Each task is flags → ``meshctl.sandbox`` → print → exit; progress goes to stderr so
``sandbox.status --json`` stays clean JSON on stdout.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from invoke import task

from meshctl.errors import CheckFailed, UsageError
from meshctl.tasks._common import guard

if TYPE_CHECKING:  # the task bodies import what they run: `meshctl --help` stays fast
    from meshctl.sandbox import status as sandbox_status


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _int(flag: str, value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise UsageError(f"{flag} must be a whole number, got {value!r}") from None


@task
@guard
def build(c):
    """Build the sandbox binaries (etcd, kube-*, kwok, istioctl) from pinned Go modules."""
    from meshctl.sandbox import build as sandbox_build

    result = sandbox_build.build(progress=_progress)
    print(result.bin_dir)


@task(help={
    "clusters": "how many clusters (cluster1..N), default 2",
    "nodes": "kwok nodes per cluster, default 3",
    "cpu": "allocatable CPU per node, a Kubernetes quantity (4, 3500m), default 4",
    "memory": "allocatable memory per node, a Kubernetes quantity (8Gi), default 8Gi",
    "pods": "allocatable pods per node, default 110",
    "no-istiod": "do not run the real istiod for istiod pods (only mark them Ready; the "
                 "webhook stand-in answers Istio's webhooks): lighter, proves less",
})
@guard
def up(c, clusters=None, nodes=None, cpu="4", memory="8Gi", pods=None, no_istiod=False):
    """Start N local clusters (real control planes, simulated nodes)."""
    from meshctl.sandbox import lifecycle as sandbox

    # Numbers arrive as strings (None defaults) so a bad value is our one-line exit 2,
    # not a traceback from invoke's int() cast.
    shapes = sandbox.shapes(_int("--clusters", clusters or 2), nodes=_int("--nodes", nodes or 3),
                            cpu=str(cpu), memory=str(memory), pods=_int("--pods", pods or 110))
    sb = sandbox.up(clusters=shapes, progress=_progress, istiod=False if no_istiod else None)
    for cl in sb.clusters:
        print(f"{cl.name}: {cl.server}  context {cl.context}")
    print(f"kubeconfig:   {sb.kubeconfig}")
    print(f"clusters dir: {sb.clusters_dir}  (use --clusters-dir {sb.clusters_dir})")


@task
@guard
def down(c):
    """Stop every sandbox process and remove its state."""
    from meshctl.sandbox import lifecycle as sandbox

    result = sandbox.down()
    if not result.removed:
        print(f"no sandbox in {result.state_dir}")
        return
    forced = f", killed after timeout: {', '.join(result.killed)}" if result.killed else ""
    print(f"stopped {result.stopped} process(es){forced}; removed {result.state_dir}")


@task(help={
    "cluster": "sandbox cluster to run the workload in (cluster1, ...)",
    "namespace": "namespace of the workload (created when missing)",
    "service": "Service name (created when missing; selects app=<service>)",
    "version": "the workload's version label (v1, v2, ...)",
    "replicas": "how many servers to start, default 1",
    "delete": "stop and unregister the matching workloads instead (every version "
              "when --version is not given)",
})
@guard
def workload(c, cluster, namespace="sample", service="echo", version="", replicas=None,
             delete=False):
    """Real workloads (proxyless gRPC: pilot-agent + Istio's echo server) in a sandbox cluster."""
    from meshctl.sandbox import lifecycle as sandbox
    from meshctl.sandbox import workload as wl

    sb = sandbox.load()
    if delete:
        gone = wl.delete(sb, cluster=cluster, namespace=namespace, service=service,
                         version=version)
        print(f"{cluster}: stopped {len(gone)} workload(s) of {namespace}/{service}"
              + (f" {version}" if version else ""))
        return
    if not version:
        raise UsageError("--version is required to start workloads (e.g. --version v1)")
    started = wl.start(sb, cluster=cluster, namespace=namespace, service=service,
                       version=version, replicas=_int("--replicas", replicas or 1),
                       progress=_progress)
    for w in started:
        print(f"{w.cluster}: {w.namespace}/{w.service} {w.version} at {w.ip}:{wl.PORT} "
              f"(WorkloadEntry {w.entry})")


@task(help={"calls": "how many calls to observe, default 500"})
@guard
def demo(c, calls=None):
    """Two clusters, bootstrap, echo v1/v2 in different clusters, canary 80/20 observed."""
    from meshctl import report
    from meshctl.tasks import demo as sandbox_demo

    folder, seen = sandbox_demo.run(calls=_int("--calls", calls or 500), say=_progress)
    report.print_observation(seen)
    print(f"explore: meshctl status --clusters-dir {folder}; meshctl verify --main cluster1 "
          f"--remote cluster2 --clusters-dir {folder}; meshctl sandbox.down when done")
    if not seen.judgement.ok:
        raise CheckFailed("demo: the observed split does not match the weights")


@task(help={"json": "print the status as JSON"})
@guard
def status(c, json_=False):
    """Show the sandbox clusters, their processes and whether each API answers."""
    from meshctl.sandbox import status as sandbox_status

    st = sandbox_status.status()
    if json_:
        print(json.dumps(st.to_dict(), indent=2))
    else:
        _render(st)
    if not st.clusters:
        raise CheckFailed(f"no sandbox in {st.state_dir}", hint="'meshctl sandbox.up' starts one")
    if not st.up:
        # Not fully up is a failed check (exit 1), as the exit-code contract says.
        raise CheckFailed(f"sandbox in {st.state_dir} is not healthy",
                          hint="see the logs under its logs/ folder; 'sandbox.down' cleans up")


def _render(st: sandbox_status.SandboxStatus) -> None:

    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not st.clusters:
        return
    table = Table(title=f"sandbox {st.state_dir}")
    for col in ("cluster", "api server", "API", "nodes", "processes", "RSS"):
        table.add_column(col)
    for cl in st.clusters:
        dead = [p.component for p in cl.processes if not p.alive]
        table.add_row(cl.name, cl.server, "✅" if cl.api_healthy else "❌",
                      f"{cl.nodes_ready}/{cl.nodes_wanted}",
                      "all running" if not dead else "❌ down: " + ", ".join(dead),
                      f"{cl.rss_bytes / 2**20:.0f} MiB")
    console.print(table)
    if st.lb is not None:
        console.print(f"LoadBalancer loop: pid {st.lb.pid} "
                      f"{'running' if st.lb.alive else '❌ not running'}")
    console.print(f"kubeconfig {st.kubeconfig}; clusters dir {st.clusters_dir}")
