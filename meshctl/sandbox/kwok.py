"""kwok in the sandbox: its command line, the nodes it manages, the CRDs its kubelet API reads.

kwok stands in for every node's kubelet.  Beyond marking nodes and pods Ready it
serves the kubelet API on the node's address (``--server-address``, TLS with a
certificate from the cluster CA that the API server verifies), so ``kubectl
port-forward``, ``exec`` and ``logs`` through the API server reach whatever kwok's
``PortForward``, ``Exec`` and ``Logs`` objects name: the sandbox publishes one of each
for every istiod pod it runs (``sandbox.istiod``).  Those objects are read from the API
(``--enable-crds``), so kwok's CRDs are created before kwok starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshctl.sandbox.api import Api

if TYPE_CHECKING:
    from meshctl.sandbox.cluster import ClusterPlan

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_CRDS = ("PortForward", "Exec", "Logs")


def kwok_argv(p: ClusterPlan, bin_dir: Path, stages: Path) -> list[str]:
    pk = p.path("pki")
    argv = [str(bin_dir / "kwok"), f"--config={stages}",
            f"--kubeconfig={p.path('admin.kubeconfig')}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            f"--node-ip={p.ip}", f"--cidr={p.pod_cidr}",
            "--node-lease-duration-seconds=40"]
    if p.kubelet_port:
        # kwok's kubelet API: port-forward, exec and logs per pod from kwok's own
        # PortForward/Exec/Logs objects (sandbox.istiod publishes them for istiod pods).
        argv += [f"--server-address={p.ip}:{p.kubelet_port}", f"--node-port={p.kubelet_port}",
                 f"--tls-cert-file={pk / 'kubelet.crt'}",
                 f"--tls-private-key-file={pk / 'kubelet.key'}",
                 f"--enable-crds={','.join(KWOK_CRDS)}"]
    return argv


def node_body(p: ClusterPlan, number: int) -> dict[str, Any]:
    """A Node with the shape's allocatable resources; kwok marks it Ready.

    Node status is accepted on create (the API server keeps all fields then), so the
    capacity is exactly what the caller asked for.
    """
    name = f"{p.name}-node{number}"
    resources = {"cpu": p.shape.cpu, "memory": p.shape.memory, "pods": str(p.shape.pods)}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "type": "kwok",
                       "topology.kubernetes.io/region": "sandbox",
                       "topology.kubernetes.io/zone": f"sandbox-{p.name}"},
        },
        "spec": {},
        "status": {"allocatable": resources, "capacity": resources,
                   # where the API server finds this node's kubelet API (kwok's server)
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": p.kubelet_port}}},
    }


def install_crds(api: Api, path: Path) -> list[str]:
    """Create kwok's PortForward/Exec/Logs CRDs (kwok watches them from its start)."""
    import yaml

    names = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", doc)
            names.append(doc["metadata"]["name"])
    return names


def established(api: Api, name: str) -> bool:
    crd = api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    return any(c["type"] == "Established" and c["status"] == "True"
               for c in crd.get("status", {}).get("conditions", []))
