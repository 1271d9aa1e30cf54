"""The real istiod in the sandbox, after a real ``meshctl bootstrap`` of two primaries.

The sandbox runs ``pilot-discovery`` for each istiod pod (``meshctl.sandbox_istiod``), so
these tests ask Istio itself whether meshctl's work took: istiod loaded the plug-in CA
(the certificate it serves on 15012 chains to meshctl's root, and every namespace's
``istio-ca-root-cert`` holds that root), its injector adds the sidecar preflight
planned for, its validation webhook refuses a bad Gateway, and through the remote
secrets each istiod holds the other cluster's endpoints.  What these tests cannot see:
Envoy (no container runs), so no request crosses clusters.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client as k8s

from meshctl import config as mesh_config
from meshctl import kube, topology
from meshctl import verify_control_plane as vcp
from tests.sandbox_fixtures import SandboxHandle
from tests.test_bootstrap import clusters_dir, run

pytestmark = pytest.mark.sandbox
T = TypeVar("T")


def eventually(check: Callable[[], T | None], *, timeout: float = 90.0, what: str = "") -> T:
    """Poll until ``check`` returns something truthy; exceptions count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
            last = result
        except Exception as e:  # the wait is about tolerating these
            last = f"{type(e).__name__}: {str(e)[:300]}"
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")


@dataclass
class Mesh:
    handle: SandboxHandle
    tmp: Path
    folder: Path
    config: mesh_config.Config
    plan: topology.Plan

    @property
    def root(self) -> Path:
        return self.tmp / "ca" / "root-cert.pem"

    def kube(self, name: str) -> kube.Kube:
        return kube.client(self.config.clusters[name])

    def istiod_pod(self, name: str) -> dict[str, Any]:
        return eventually(lambda: vcp.istiod_pods(self.kube(name)),
                          what=f"a running istiod on {name}")[0]


@pytest.fixture(scope="module")
def primaries(sandbox_factory, tmp_path_factory) -> Mesh:
    """Two primaries on one network, bootstrapped once by meshctl for this module."""
    handle = sandbox_factory(2, nodes=1, cpu="8", memory="16Gi", label="istiod")
    tmp = tmp_path_factory.mktemp("istiod")
    folder = clusters_dir(tmp, handle, {}, {})
    result = run(handle, "bootstrap", "--main", "cluster1", "--remote", "cluster2",
                 "--clusters-dir", str(folder))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cfg = mesh_config.load(folder)
    return Mesh(handle, tmp, folder, cfg, topology.plan(cfg, "cluster1", ["cluster2"]))


def openssl(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=60,
                          check=False)


def fingerprint(pem: bytes) -> str:
    out = openssl("x509", "-noout", "-fingerprint", "-sha256", data=pem)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode().strip()


def pem_blocks(text: bytes) -> list[bytes]:
    return [m.group(0) for m in re.finditer(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", text, re.S)]


# --- istiod runs, with the pod's identity -----------------------------------------------

def test_each_primary_runs_istiod_ready_with_its_cluster_id(primaries: Mesh) -> None:
    for name in ("cluster1", "cluster2"):
        pod = primaries.istiod_pod(name)
        pid_file = primaries.handle.state_dir / "pids" / (
            f"{name}-istiod-istio-system-{pod['metadata']['name']}.pid")
        pid = int(eventually(pid_file.read_text, what=f"{pid_file}").strip())
        environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ")
                       .read_bytes().decode().split("\0") if "=" in item)
        # CLUSTER_ID and REVISION come from the pod (the chart, from meshctl's values)
        assert environ["CLUSTER_ID"] == name
        assert environ["REVISION"] == "default"
        assert environ["POD_NAMESPACE"] == "istio-system"
        k = primaries.kube(name)
        ready = eventually(lambda k=k: [p for p in vcp.istiod_pods(k) if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions") or [])], what=f"istiod Ready on {name}")
        clusterz = vcp.istiod_get(k, ready[0]["metadata"]["name"], 15014, "/debug/clusterz")
        assert vcp.synced_clusters(clusterz).get(name) == "synced"


def test_istio_ca_root_cert_in_every_namespace_is_meshctls_root(primaries: Mesh) -> None:
    """istiod's namespace controller writes the root it loaded from cacerts everywhere,
    except the namespaces it skips by design (pilot/.../namespacecontroller.go:
    kube-public, kube-node-lease, local-path-storage)."""
    root = primaries.root.read_bytes()
    want = fingerprint(root)
    skipped = {"kube-public", "kube-node-lease", "local-path-storage"}
    for c in primaries.handle.clusters:
        core = c.core()

        def everywhere(core: k8s.CoreV1Api = core) -> list[str]:
            names = [n.metadata.name for n in core.list_namespace().items
                     if n.status.phase == "Active" and n.metadata.name not in skipped]
            bad = []
            for ns in names:
                try:
                    cm = core.read_namespaced_config_map("istio-ca-root-cert", ns)
                    if cm.data["root-cert.pem"].encode() != root:
                        bad.append(f"{ns}: another root")
                except k8s.ApiException as e:
                    bad.append(f"{ns}: HTTP {e.status}")
            if bad:
                raise AssertionError(bad)
            return names

        names = eventually(everywhere,
                           what=f"istio-ca-root-cert = meshctl's root everywhere on {c.name}")
        assert {"default", "istio-system", "kube-system"} <= set(names)
        cm = core.read_namespaced_config_map("istio-ca-root-cert", "default")
        assert fingerprint(cm.data["root-cert.pem"].encode()) == want


def test_istiod_serves_a_certificate_from_meshctls_intermediate(primaries: Mesh,
                                                                 tmp_path: Path) -> None:
    """The plug-in CA loaded: istiod's own serving certificate on 15012 chains to it."""
    primaries.root.read_bytes()
    for c in primaries.handle.clusters:
        svc = c.core().read_namespaced_service("istiod", "istio-system")
        ip = svc.spec.cluster_ip
        out = eventually(lambda ip=ip: (r := openssl(
            "s_client", "-connect", f"{ip}:15012", "-servername", "istiod.istio-system.svc",
            "-showcerts", data=b"")).returncode == 0 and pem_blocks(r.stdout),
            what=f"TLS on istiod {c.name} {ip}:15012")
        leaf = tmp_path / f"{c.name}-leaf.pem"
        leaf.write_bytes(out[0])
        inter = tmp_path / f"{c.name}-ca.pem"
        cacerts = c.core().read_namespaced_secret("cacerts", "istio-system")
        import base64

        inter.write_bytes(base64.b64decode(cacerts.data["ca-cert.pem"]))
        check = subprocess.run(["openssl", "verify", "-CAfile", str(primaries.root),
                                "-untrusted", str(inter), str(leaf)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        issuer = openssl("x509", "-noout", "-issuer", "-in", str(leaf)).stdout.decode()
        assert c.name in issuer  # the intermediate's subject carries L=<cluster>


# --- injection and validation by Istio itself ----------------------------------------------

def test_injected_pod_gets_the_sidecar_preflight_planned_for(primaries: Mesh,
                                                             namespace_factory) -> None:
    ns = namespace_factory(primaries.handle)
    planned = primaries.config.mesh.istio.sidecar
    core = primaries.handle["cluster1"].core()
    core.patch_namespace(ns, {"metadata": {"labels": {"istio-injection": "enabled"}}})
    pod = eventually(lambda: core.create_namespaced_pod(ns, k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="app"),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="app", image="x")]))),
        what="pod admitted")
    names = [ct.name for ct in pod.spec.containers]
    assert names == ["app", "istio-proxy"]
    proxy = pod.spec.containers[1]
    requests = proxy.resources.requests
    assert (requests["cpu"], requests["memory"]) == (planned.cpu, planned.memory)


def test_gateway_without_servers_is_refused_by_istios_validation(primaries: Mesh,
                                                                 namespace_factory) -> None:
    ns = namespace_factory(primaries.handle)
    body = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": "empty", "namespace": ns},
            "spec": {"selector": {"istio": "ingressgateway"}}}
    for c in primaries.handle.clusters:
        custom = k8s.CustomObjectsApi(c.kubernetes)

        def refused(custom: k8s.CustomObjectsApi = custom) -> str | None:
            try:
                custom.create_namespaced_custom_object("networking.istio.io", "v1", ns,
                                                       "gateways", body)
            except k8s.ApiException as e:
                return str(e.body) if "validation.istio.io" in str(e.body) else None
            custom.delete_namespaced_custom_object("networking.istio.io", "v1", ns,
                                                   "gateways", "empty")
            return None

        message = eventually(refused, what=f"validation webhook on {c.name}")
        assert "gateway must have at least one server" in message


# --- discovery across clusters -----------------------------------------------------------

def test_istioctl_remote_clusters_lists_the_other_primary_synced(primaries: Mesh) -> None:
    handle = primaries.handle
    for name, other in (("cluster1", "cluster2"), ("cluster2", "cluster1")):
        def row(name: str = name, other: str = other) -> list[str] | None:
            out = subprocess.run([str(handle.bin_dir / "istioctl"), "--kubeconfig",
                                  str(handle.kubeconfig), "--context", name, "remote-clusters"],
                                 capture_output=True, text=True, timeout=60)
            for line in out.stdout.splitlines():
                words = line.split()
                if words and words[0] == other and "synced" in words:
                    return words
            return None

        words = eventually(row, what=f"{other} synced in istioctl remote-clusters on {name}")
        assert f"istio-system/istio-remote-secret-{other}" in words


def hello(namespace: str) -> tuple[k8s.V1Deployment, k8s.V1Service]:
    labels = {"app": "hello"}
    container = k8s.V1Container(name="hello", image="x",
                                ports=[k8s.V1ContainerPort(container_port=5000)])
    deploy = k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name="hello", namespace=namespace),
        spec=k8s.V1DeploymentSpec(replicas=2, selector=k8s.V1LabelSelector(match_labels=labels),
                                  template=k8s.V1PodTemplateSpec(
                                      metadata=k8s.V1ObjectMeta(labels=labels),
                                      spec=k8s.V1PodSpec(containers=[container]))))
    svc = k8s.V1Service(metadata=k8s.V1ObjectMeta(name="hello", namespace=namespace),
                        spec=k8s.V1ServiceSpec(selector=labels, ports=[k8s.V1ServicePort(
                            name="http", port=5000, target_port=5000)]))
    return deploy, svc


def test_cluster1_istiod_holds_endpoints_of_pods_running_only_on_cluster2(
        primaries: Mesh, namespace_factory) -> None:
    ns = namespace_factory(primaries.handle)
    c2 = primaries.handle["cluster2"]
    deploy, svc = hello(ns)
    c2.apps().create_namespaced_deployment(ns, deploy)
    c2.core().create_namespaced_service(ns, svc)
    k1 = primaries.kube("cluster1")
    pod = primaries.istiod_pod("cluster1")["metadata"]["name"]
    host = f"hello.{ns}.svc.cluster.local"

    def counts() -> dict[str, int] | None:
        found = vcp.shard_counts(vcp.istiod_get(k1, pod, 15014, "/debug/endpointShardz"),
                                 host, ns)
        return found if found.get("cluster2") == 2 else None

    found = eventually(counts, what=f"cluster2's endpoints of {host} in cluster1's istiod")
    assert found == {"cluster2": 2}  # none from cluster1: nothing runs there


# --- verify's control-plane half, and a remote secret taken away ------------------------

def test_verify_control_plane_passes_then_names_a_deleted_remote_secret(
        primaries: Mesh) -> None:
    clients = {n: primaries.kube(n) for n in primaries.plan.names}
    checks = eventually(lambda: (cs := vcp.checks(primaries.config, primaries.plan, clients))
                        and all(c.status == "PASS" for c in cs) and cs,
                        what="control-plane checks all PASS")
    assert {c.name for c in checks} == {"cluster1 sees cluster2", "cluster2 sees cluster1"}

    core = primaries.handle["cluster1"].core()
    core.delete_namespaced_secret("istio-remote-secret-cluster2", "istio-system")
    try:
        pod = primaries.istiod_pod("cluster1")["metadata"]["name"]
        eventually(lambda: "cluster2" not in vcp.synced_clusters(
            vcp.istiod_get(clients["cluster1"], pod, 15014, "/debug/clusterz")),
            what="cluster1's istiod drops cluster2")
        after = {c.name: c for c in vcp.checks(primaries.config, primaries.plan, clients)}
        failed = after["cluster1 sees cluster2"]
        assert failed.status == "FAIL" and failed.cluster == "cluster1"
        assert "istio-remote-secret-cluster2" in failed.message and "missing" in failed.message
        assert after["cluster2 sees cluster1"].status == "PASS"
    finally:
        relink = run(primaries.handle, "link", "--main", "cluster1", "--remote", "cluster2",
                     "--clusters-dir", str(primaries.folder))
        assert relink.returncode == 0, relink.stderr[-2000:]
    eventually(lambda: all(c.status == "PASS" for c in vcp.checks(
        primaries.config, primaries.plan, clients)), what="cluster2 synced again after link")
