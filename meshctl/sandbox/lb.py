"""The sandbox's LoadBalancer controller: what a cloud (or kind's cloud-provider) would do.

Kubernetes itself never fills ``status.loadBalancer.ingress``; a cloud controller does.
Without one, anything that waits for a LoadBalancer address (Istio's east-west
gateway, ``meshctl bootstrap`` reading that address for the other clusters) would
wait forever.  Like k3s' ServiceLB, this gives every ``type: LoadBalancer`` Service
without a ``loadBalancerClass`` the cluster's node address (its 127.0.0.x), which is
all the sandbox can honestly offer: the address is real, but no packet is forwarded.

The same process plays kubelet for istiod pods (``sandbox.istiod``: the real
pilot-discovery per pod, and ClusterIP forwarding to it) and runs the admission-webhook
stand-in (``sandbox.webhooks``) for webhook Services no real istiod backs.

Runs as its own small process
(``python -m meshctl.sandbox.lb STATE [--bin=DIR] CLUSTER=URL ...``),
started by ``sandbox.up`` with a pid file like every other component, one watch thread
per cluster.  It exits by itself when the state folder disappears.
"""

from __future__ import annotations

import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from meshctl.sandbox import istiod as sandbox_istiod
from meshctl.sandbox import webhooks as sandbox_webhooks
from meshctl.sandbox import workload_volumes
from meshctl.sandbox.api import Api, ApiError
from meshctl.sandbox.proxy import ServiceProxy

READY_FILE = "lb.ready"


def wants_address(svc: dict[str, Any], ip: str) -> bool:
    """True for a LoadBalancer Service we own that does not yet carry our address."""
    spec, status = svc.get("spec", {}), svc.get("status", {})
    if spec.get("type") != "LoadBalancer" or spec.get("loadBalancerClass"):
        return False
    ingress = status.get("loadBalancer", {}).get("ingress") or []
    return [i.get("ip") for i in ingress] != [ip]


def status_patch(ip: str) -> dict[str, Any]:
    return {"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}}


def assign(api: Api, svc: dict[str, Any], ip: str) -> None:
    meta = svc["metadata"]
    path = f"/api/v1/namespaces/{meta['namespace']}/services/{meta['name']}/status"
    try:
        api.merge_patch(path, status_patch(ip))
        print(f"assigned {ip} to {meta['namespace']}/{meta['name']}", flush=True)
    except ApiError as e:
        if e.status != 404:  # deleted meanwhile: nothing to do
            raise


def sync(api: Api, ip: str) -> str:
    """Assign every Service that needs it; return the list's resourceVersion to watch from."""
    services = api.get("/api/v1/services")
    for svc in services["items"]:
        if wants_address(svc, ip):
            assign(api, svc, ip)
    return str(services["metadata"]["resourceVersion"])


def run_cluster(state_dir: Path, name: str, api: Api, ip: str, ready: threading.Event) -> None:
    """List, then watch, forever; on any error start over after a pause."""
    while state_dir.exists():
        try:
            rv = sync(api, ip)
            ready.set()
            for event in api.watch(f"/api/v1/services?resourceVersion={rv}",
                                   timeout_seconds=30):
                if event.get("type") in ("ADDED", "MODIFIED") and wants_address(
                        event["object"], ip):
                    assign(api, event["object"], ip)
        except Exception as e:  # keep the loop alive; the log says what happened
            print(f"{name}: {type(e).__name__}: {str(e)[:200]}", flush=True)
            time.sleep(1.0)


def main(argv: list[str]) -> int:
    state_dir = Path(argv[0])
    bins = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--bin=")]
    real_istiod = "--no-istiod" not in argv[1:]
    events = []
    stand_in = sandbox_webhooks.StandIn(workdir=state_dir)
    proxy = ServiceProxy(log=lambda m: print(m, flush=True))
    for arg in argv[1:]:
        if arg.startswith("--"):
            continue
        name, server = arg.split("=", 1)
        pki = state_dir / name / "pki"
        api = Api(server, pki / "ca.crt", pki / "admin.crt", pki / "admin.key")
        ip = urllib.parse.urlsplit(server).hostname or ""
        ready = threading.Event()
        events.append(ready)
        threading.Thread(target=run_cluster, args=(state_dir, name, api, ip, ready),
                         daemon=True, name=name).start()
        threading.Thread(target=sandbox_webhooks.run_cluster,
                         args=(state_dir, name, api, stand_in, real_istiod),
                         daemon=True, name=f"{name} webhooks").start()
        threading.Thread(target=workload_volumes.run_cluster, args=(state_dir, name, api),
                         daemon=True, name=f"{name} workload volumes").start()
        # istiod pods: the real process, or (--no-istiod) just Ready without one
        binary = Path(bins[0]) if bins and real_istiod else None
        kubelet = sandbox_istiod.Kubelet(state_dir, name, api, ip, binary, proxy)
        sandbox_istiod.KUBELETS.append(kubelet)
        threading.Thread(target=kubelet.run_forever, daemon=True,
                         name=f"{name} istiod").start()
    for ready in events:
        ready.wait()
    (state_dir / READY_FILE).write_text("ok\n")
    print("watching", flush=True)
    while state_dir.exists():
        time.sleep(2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
