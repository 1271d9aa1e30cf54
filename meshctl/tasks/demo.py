"""``sandbox.demo``: the whole story on this machine, in one command, with real calls.

Two sandbox clusters on one network, bootstrapped by meshctl; a real workload of
``echo`` v1 in cluster1 and v2 in cluster2 (pilot-agent + Istio's echo server, each with a
certificate from its own cluster's istiod); ``canary --weights v1=80,v2=20``; then calls
from cluster1 counted by the cluster and version that answered, judged against the
weights.  It composes what the other tasks do (sandbox, bootstrap, canary, the sandbox's
probe), so it lives with the tasks; it leaves the sandbox running for the user to explore.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from meshctl import config, topology, traffic
from meshctl.errors import UsageError
from meshctl.mesh import bootstrap
from meshctl.sandbox import lifecycle, workload
from meshctl.sandbox import probe as sandbox_probe

NAMESPACE = "demo"
SERVICE = "echo"
WEIGHTS = "v1=80,v2=20"


def clusters_folder(sb: lifecycle.Sandbox) -> Path:
    """The sandbox's cluster files on one network (calls go straight across; no gateway)."""
    out = sb.state_dir / "demo-clusters"
    out.mkdir(exist_ok=True)
    for c in sb.clusters:
        doc = yaml.safe_load(c.cluster_file.read_text())
        doc["network"] = "network1"
        (out / f"{c.name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (out / "mesh.yaml").write_text((sb.clusters_dir / "mesh.yaml").read_text())
    return out


def run(*, calls: int, say: Callable[[str], None]) -> tuple[Path, traffic.Observation]:
    """Up (or reuse) two clusters, bootstrap, workloads, canary, observe; returns the folder."""
    try:
        sb = lifecycle.load()
        say(f"using the running sandbox in {sb.state_dir}")
    except UsageError:
        say("starting two sandbox clusters …")
        sb = lifecycle.up(clusters=2, nodes=1, cpu="8", memory="16Gi", progress=say)
    if len(sb.clusters) < 2:
        raise UsageError(f"the sandbox in {sb.state_dir} has fewer than two clusters",
                         hint="'meshctl sandbox.down' first")
    folder = clusters_folder(sb)
    cfg = config.load(folder)
    say("meshctl bootstrap --main cluster1 --remote cluster2 …")
    bootstrap.run(cfg, topology.plan(cfg, "cluster1", ["cluster2"]),
                  progress=lambda cluster, message: say(f"{cluster}: {message}"))
    probe = sandbox_probe.Probe(sb)
    for cluster, version in (("cluster1", "v1"), ("cluster2", "v2")):
        if not any(w.cluster == cluster and w.namespace == NAMESPACE and w.version == version
                   for w in workload.records(sb)):
            probe.deploy(cluster, NAMESPACE, SERVICE, version)
        say(f"{cluster}: workload {NAMESPACE}/{SERVICE} {version} serving")
    opts = traffic.options(cfg, cluster="cluster1", namespace=NAMESPACE, service=SERVICE,
                           weights=WEIGHTS)
    say(f"meshctl canary --weights {WEIGHTS} …")
    traffic.apply(cfg, opts)
    probe.servers.clear()  # the workloads stay up for the user; only the caller goes
    try:
        seen = traffic.observe(opts, probe, calls)
    finally:
        probe.close()
    return folder, seen
