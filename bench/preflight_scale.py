"""How preflight scales: a sandbox cluster with N nodes and M pods, preflight vs kubectl.

Prints, from one run on one cluster: preflight's wall time and peak RSS, the same for
``kubectl get nodes,pods -A -o json > /dev/null`` (the baseline: the same objects
through the same API server, listed in pages of 500 as kubectl does by default),
their ratio, and the API requests preflight sent against the bound
⌈M/500⌉ + ⌈N/500⌉ + 20.  Targets (issue 5): time ≤ 1.0× kubectl's, RSS ≤ 300 MB.

The cluster is filled fast: nodes are kwok nodes created through the API, pods are
created concurrently and bound with ``spec.nodeName`` (no scheduler in the way), all
in one namespace that the cluster file names in ``injectNamespaces`` so preflight
counts a sidecar for each.  Usage::

    MESHCTL_SANDBOX_BIN=... python bench/preflight_scale.py --nodes 500 --pods 15000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from meshctl import kube  # noqa: E402
from meshctl.config import Cluster  # noqa: E402
from meshctl.sandbox import lifecycle as sandbox  # noqa: E402
from meshctl.sandbox.cluster import Shape  # noqa: E402

NAMESPACE = "bench"
NODE_SIZE = {"cpu": "32", "memory": "128Gi", "pods": "110"}


def node_body(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                         "labels": {"kubernetes.io/hostname": name, "type": "kwok"}},
            "status": {"allocatable": NODE_SIZE, "capacity": NODE_SIZE}}


def pod_body(i: int, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p{i}", "labels": {"app": f"app{i % 50}"}},
            "spec": {"nodeName": node, "containers": [{
                "name": "app", "image": "registry.example/app:1",
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}


def fill(k: kube.Kube, first_node: str, nodes: int, pods: int, workers: int) -> None:
    """N-1 more nodes, the namespace, M pods spread round-robin, all concurrently."""
    names = [first_node] + [f"bench-node{i}" for i in range(1, nodes)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda n: k.request("POST", "/api/v1/nodes", body=node_body(n)),
                      names[1:]))
        say(f"{nodes} nodes in {time.monotonic() - started:.0f}s")
        k.request("POST", "/api/v1/namespaces",
                  body={"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": NAMESPACE}})
        path = f"/api/v1/namespaces/{NAMESPACE}/pods"
        done = 0
        batch = 5000
        for start in range(0, pods, batch):
            ids = range(start, min(pods, start + batch))
            list(pool.map(lambda i: k.request("POST", path,
                                              body=pod_body(i, names[i % nodes])), ids))
            done += len(ids)
            say(f"{done} pods after {time.monotonic() - started:.0f}s")


def measure(argv: list[str]) -> tuple[float, int, int]:
    """Wall seconds, peak RSS (bytes) and exit code of one command, stdout discarded."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss * 1024, proc.returncode


def preflight_requests(argv: list[str]) -> int:
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    return int(json.loads(out)["clusters"][0]["requests"])


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=150_000)
    parser.add_argument("--workers", type=int, default=8, help="concurrent creates")
    parser.add_argument("--runs", type=int, default=2, help="timed runs of each command")
    args = parser.parse_args()
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
    state = Path(tempfile.mkdtemp(prefix="meshctl-bench-"))
    try:
        sb = sandbox.up(state / "sandbox", clusters=[Shape(nodes=1, cpu="32", memory="128Gi")],
                        progress=say)
        c = sb.clusters[0]
        folder = state / "clusters"
        folder.mkdir()
        (folder / "mesh.yaml").write_text(yaml.safe_dump(
            {"meshID": "bench", "ca": {"dir": str(state / "ca")}}))
        (folder / "cluster1.yaml").write_text(yaml.safe_dump(
            {"name": "cluster1", "context": c.context, "kubeconfig": str(c.kubeconfig),
             "network": "network1", "apiServer": c.server,
             "injectNamespaces": [NAMESPACE]}))
        k = kube.client(Cluster(name="cluster1", context=c.context, network="network1",
                                source=folder / "cluster1.yaml", kubeconfig=str(c.kubeconfig)))
        fill(k, f"{c.name}-node1", args.nodes, args.pods, args.workers)
        env_bin = str(sb.bin_dir)
        os.environ["PATH"] = f"{env_bin}{os.pathsep}{os.environ['PATH']}"
        os.environ["MESHCTL_ISTIOCTL"] = str(sb.bin_dir / "istioctl")
        meshctl = shutil.which("meshctl", path=str(Path(sys.executable).parent)) or "meshctl"
        pf = [meshctl, "preflight", "--json", "--clusters-dir", str(folder),
              "--cluster", "cluster1"]
        kc = [kubectl, "--kubeconfig", str(c.kubeconfig), "--context", c.context,
              "get", "nodes,pods", "-A", "-o", "json"]
        report(args, pf, kc)
    finally:
        sandbox.down(state / "sandbox")
        shutil.rmtree(state, ignore_errors=True)
    return 0


def report(args: argparse.Namespace, pf: list[str], kc: list[str]) -> None:
    """Alternate the two commands ``--runs`` times; print the best of each."""
    pf_runs, kc_runs = [], []
    for _ in range(args.runs):
        kc_runs.append(measure(kc))
        pf_runs.append(measure(pf))
    requests = preflight_requests(pf)
    bound = math.ceil(args.pods / 500) + math.ceil(args.nodes / 500) + 20
    pf_t, pf_rss = min(r[0] for r in pf_runs), max(r[1] for r in pf_runs)
    kc_t, kc_rss = min(r[0] for r in kc_runs), max(r[1] for r in kc_runs)
    mb = 1024 * 1024
    print(f"cluster: {args.nodes} nodes, {args.pods} pods")
    print(f"preflight: {pf_t:.2f}s (runs: {', '.join(f'{r[0]:.2f}' for r in pf_runs)}), "
          f"peak RSS {pf_rss / mb:.0f} MB, exit {pf_runs[-1][2]}")
    print(f"kubectl get nodes,pods -A -o json: {kc_t:.2f}s (runs: "
          f"{', '.join(f'{r[0]:.2f}' for r in kc_runs)}), peak RSS {kc_rss / mb:.0f} MB")
    print(f"ratio preflight/kubectl: time {pf_t / kc_t:.2f}x, RSS {pf_rss / kc_rss:.2f}x "
          f"(target: time <= 1.0x, RSS <= 300 MB)")
    print(f"API requests by preflight: {requests} (bound ceil(M/500)+ceil(N/500)+20 = {bound})")


if __name__ == "__main__":
    raise SystemExit(main())
