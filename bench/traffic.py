"""Traffic on the sandbox: convergence after bootstrap, and call latency across clusters.

Each run starts a fresh sandbox of two primaries on one network and bootstraps it with
meshctl.  Then, timed from bootstrap's return:
- a server ``far`` in cluster2 and a server ``near`` in cluster1 (real pilot-agent +
  Istio's echo server), canary objects for both (Istio mTLS), a caller in cluster1;
- calls until the first one to ``far`` (cross-cluster) succeeds: **convergence**; the
  same for ``near`` (same cluster) is the baseline, measured in the same run.
Then ``--calls`` calls to each at 50 per second, and the p50/p99 of the latency the echo
client measured per call, cross-cluster beside same-cluster (the baseline).

    python bench/traffic.py [--runs 3] [--calls 400]

Proxyless gRPC, no Envoy; loopback only.  Needs the sandbox binaries (meshctl
sandbox.build).  A failed run is one line with its cause, never a traceback.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from meshctl import config, topology, traffic
from meshctl.errors import MeshctlError
from meshctl.mesh import bootstrap
from meshctl.sandbox import build as sandbox_build
from meshctl.sandbox import calls, workload
from meshctl.sandbox import lifecycle as sandbox
from meshctl.sandbox import workload_cluster as wc

NS = "bench"


def folder(base: Path, sb: sandbox.Sandbox) -> Path:
    out = base / "clusters"
    out.mkdir(parents=True)
    for c in sb.clusters:
        doc = yaml.safe_load((sb.clusters_dir / f"{c.name}.yaml").read_text())
        doc["network"] = "network1"
        (out / f"{c.name}.yaml").write_text(yaml.safe_dump(doc))
    mesh = yaml.safe_load((sb.clusters_dir / "mesh.yaml").read_text())
    mesh["ca"]["dir"] = str(base / "ca")
    (out / "mesh.yaml").write_text(yaml.safe_dump(mesh))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def first_answer(sb: sandbox.Sandbox, caller: workload.Workload, service: str, by: str,
                 timeout: float = 120.0) -> float:
    """Monotonic time of the first call to ``service`` answered by cluster ``by``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = calls.send(sb, caller, f"{service}.{NS}.svc.cluster.local", workload.PORT,
                         count=1, qps=0, timeout=2.0)
        if got.ok and {c for c, _ in got.answered} == {by}:
            return time.monotonic()
        time.sleep(0.05)
    raise MeshctlError(f"no answer from {service} in {by} within {timeout:.0f}s")


def one_run(base: Path, bins: Path, count: int) -> dict[str, float]:
    sb = sandbox.up(base / "sandbox", clusters=2, nodes=1, cpu="8", memory="16Gi",
                    binaries=bins)
    try:
        cfg = config.load(folder(base, sb))
        bootstrap.run(cfg, topology.plan(cfg, "cluster1", ["cluster2"]))
        t0 = time.monotonic()
        for cluster, service in (("cluster2", "far"), ("cluster1", "near")):
            workload.start(sb, cluster=cluster, namespace=NS, service=service, version="v1")
        for service in ("far", "near"):  # a Service in both clusters, canary for mTLS
            for cluster in ("cluster1", "cluster2"):
                api = wc.api(sb, cluster)
                wc.ensure_service(api, NS, service, port=workload.PORT)
            traffic.apply(cfg, traffic.options(cfg, cluster="cluster1", namespace=NS,
                                               service=service, weights="v1=100"))
        caller = workload.start_caller(sb, cluster="cluster1", namespace=NS,
                                       service_account="bench")
        t_started = time.monotonic()
        t_near = first_answer(sb, caller, "near", "cluster1")
        t_far = first_answer(sb, caller, "far", "cluster2")
        far = calls.send(sb, caller, f"far.{NS}.svc.cluster.local", workload.PORT,
                         count=count, qps=50)
        near = calls.send(sb, caller, f"near.{NS}.svc.cluster.local", workload.PORT,
                          count=count, qps=50)
        if far.failed or near.failed:
            raise MeshctlError(f"failed calls: far {dict(far.causes)}, near {dict(near.causes)}")
        return {"workloads up, s": t_started - t0,
                "first same-cluster answer, s": t_near - t0,
                "first cross-cluster answer, s": t_far - t0,
                "same-cluster p50, ms": percentile(near.latencies_ms, 0.5),
                "cross-cluster p50, ms": percentile(far.latencies_ms, 0.5),
                "same-cluster p99, ms": percentile(near.latencies_ms, 0.99),
                "cross-cluster p99, ms": percentile(far.latencies_ms, 0.99)}
    finally:
        sandbox.down(base / "sandbox")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    bins = sandbox_build.locate()
    if bins is None:
        print("sandbox binaries missing: run 'meshctl sandbox.build'", file=sys.stderr)
        return 2
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="mtb-") as tmp:
            try:
                runs.append(one_run(Path(tmp), bins, args.calls))
            except MeshctlError as e:
                print(f"run {i + 1}: failed: {e}", file=sys.stderr)
                continue
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()))
    if not runs:
        return 1
    print(f"medians over {len(runs)} run(s), {args.calls} calls each way, proxyless gRPC "
          "(no Envoy), one network:")
    for key in runs[0]:
        print(f"  {key:32} {statistics.median(r[key] for r in runs):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
