"""Istio on one cluster of the plan, idempotently: namespace, control plane, gateways.

istioctl applies every resource on each run, which would make a re-run of bootstrap
rewrite the whole control plane.  So before calling it meshctl compares the SHA-256
of the IstioOperator it would install with the one recorded after the last good
install (ConfigMap ``istio-system/meshctl-install``) and checks the Deployment is
Available; only a difference or a missing/unready Deployment runs istioctl again.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from meshctl import istio, kube, manifests
from meshctl.config import Cluster, Config
from meshctl.errors import CheckFailed
from meshctl.topology import ClusterPlan, Plan

NS = "istio-system"
RECORD_PATH = f"/api/v1/namespaces/{NS}/configmaps/meshctl-install"
EASTWEST = "istio-eastwestgateway"
ADDRESS_TIMEOUT = 120.0
READY_TIMEOUT = 300.0

Progress = Callable[[str, str], None]  # (cluster, message)


def _quiet(cluster: str, message: str) -> None:
    del cluster, message


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def istiod_name(config: Config) -> str:
    rev = config.mesh.istio.revision
    return f"istiod-{rev}" if rev else "istiod"


def deployment_problem(k: kube.Kube, name: str, *, namespace: str = NS) -> str | None:
    """``None`` when ``<namespace>/<name>`` is Available with every replica updated."""
    dep = k.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
                what=f"read Deployment {namespace}/{name}")
    if dep is None:
        return f"Deployment {namespace}/{name} not found"
    status = dep.get("status") or {}
    available = any(c.get("type") == "Available" and c.get("status") == "True"
                    for c in status.get("conditions") or [])
    wanted = (dep.get("spec") or {}).get("replicas", 1)
    ready = status.get("availableReplicas", 0)
    if not available or ready < wanted:
        return f"Deployment {namespace}/{name}: {ready}/{wanted} available"
    return None


def recorded(k: kube.Kube) -> dict[str, str]:
    cm = k.get(RECORD_PATH, what="read ConfigMap istio-system/meshctl-install")
    return (cm or {}).get("data") or {}


def _record(k: kube.Kube, key: str, value: str) -> None:
    kube.ensure(k, yaml.safe_load(manifests.install_record({key: value})))


def apply_manifest(k: kube.Kube, text: str) -> list[str]:
    """``ensure`` every document of a rendered manifest; returns what changed."""
    changed = []
    for doc in manifests.split(text):
        if kube.ensure(k, doc) != "unchanged":
            changed.append(kube.describe(doc))
    return changed


@dataclass(frozen=True)
class Component:
    """One istioctl install: the control plane (or remote profile), or a gateway."""

    key: str  # record key, e.g. "istio-operator.yaml"
    operator: str  # rendered IstioOperator
    deployment: str | None  # what must be Available afterwards (None: remote profile)


def ensure_component(k: kube.Kube, ctl: istio.Istioctl, cluster: Cluster, comp: Component,
                     *, progress: Progress = _quiet) -> bool:
    """Install ``comp`` unless the same operator is recorded and its Deployment is ready.

    Returns True when istioctl ran.
    """
    want = digest(comp.operator)
    healthy = comp.deployment is None or deployment_problem(k, comp.deployment) is None
    if recorded(k).get(comp.key) == want and healthy:
        return False
    progress(cluster.name, f"istioctl install ({comp.key}) …")
    istio.install(ctl, cluster, comp.operator, what=f"istioctl install {comp.key}")
    if comp.deployment:
        kube.wait_for(f"{cluster.name}: Deployment {NS}/{comp.deployment} Available",
                      lambda: deployment_problem(k, comp.deployment), timeout=READY_TIMEOUT,
                      interval=2.0)
    _record(k, comp.key, want)
    progress(cluster.name, f"{comp.key} installed")
    return True


def wait_namespace_gone_if_terminating(k: kube.Kube, *, timeout: float = 180.0,
                                       progress: Progress = _quiet) -> None:
    """A Terminating ``istio-system`` refuses new objects (403): wait until it is gone.

    Happens right after a teardown; creating into it would fail half-way.
    """
    path = f"/api/v1/namespaces/{NS}"

    def check() -> str | None:
        ns = k.get(path, what=f"read Namespace {NS}")
        if ns and ns["metadata"].get("deletionTimestamp"):
            return f"Namespace {NS} is still terminating"
        return None

    if check() is not None:
        progress(k.cluster, f"Namespace {NS} is terminating; waiting for it to go")
        kube.wait_for(f"{k.cluster}: Namespace {NS} deleted", check, timeout=timeout,
                      interval=1.0)


CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def istio_crds(k: kube.Kube) -> list[dict]:
    return [crd for crd in k.items(CRDS, what="list CustomResourceDefinitions")
            if crd["spec"]["group"].endswith("istio.io")]


def purge_istio_crds(k: kube.Kube, *, timeout: float = 120.0,
                     progress: Progress = _quiet) -> list[str]:
    """Delete any Istio CRD ``istioctl uninstall --purge`` left, then wait until none is.

    uninstall does not always finish this (seen on the sandbox under load: one CRD of a
    remote-profile cluster left behind), and a teardown must leave nothing of the mesh.
    A CRD the API server is still finalizing after ``timeout`` is reported, not fatal:
    everything else of the teardown still has to happen.
    """
    deleted = []
    for crd in istio_crds(k):
        if not crd["metadata"].get("deletionTimestamp") and kube.delete(k, {
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": crd["metadata"]["name"]}}):
            deleted.append(f"CustomResourceDefinition {crd['metadata']['name']}")

    def check() -> str | None:
        left = [crd["metadata"]["name"] for crd in istio_crds(k)]
        return f"still there: {', '.join(left)}" if left else None

    try:
        kube.wait_for(f"{k.cluster}: Istio CRDs deleted", check, timeout=timeout, interval=1.0)
    except kube.WaitTimeout as e:
        progress(k.cluster, f"warning: {e} (deleted; the API server is still finalizing)")
    return deleted


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def east_west_address(k: kube.Kube, cluster: Cluster) -> str | None:
    """The east-west gateway's LoadBalancer address, else the cluster file's
    ``eastWestAddress``, else ``None``."""
    if cluster.east_west_address:
        return cluster.east_west_address
    svc = k.get(f"/api/v1/namespaces/{NS}/services/{EASTWEST}",
                what=f"read Service {NS}/{EASTWEST}")
    for ingress in ((svc or {}).get("status") or {}).get("loadBalancer", {}).get("ingress") or []:
        address = ingress.get("ip") or ingress.get("hostname")
        if address:
            return address
    return None


def wait_east_west_address(k: kube.Kube, cluster: Cluster, *,
                           timeout: float = ADDRESS_TIMEOUT) -> str:
    """Wait for the gateway's address; FAIL with the fix when none ever comes."""
    found: list[str] = []

    def check() -> str | None:
        address = east_west_address(k, cluster)
        if address:
            found.append(address)
            return None
        return f"Service {NS}/{EASTWEST} has no LoadBalancer address yet"

    try:
        kube.wait_for(f"{cluster.name}: east-west gateway address", check, timeout=timeout,
                      interval=2.0)
    except kube.WaitTimeout:
        raise CheckFailed(
            f"{cluster.name}: the east-west gateway got no address within {timeout:.0f}s",
            hint=f"give the cluster a LoadBalancer implementation (e.g. MetalLB), or set "
                 f"eastWestAddress in {cluster.source} to a reachable node address with a "
                 "NodePort") from None
    return found[-1]


def components(config: Config, plan: Plan, cp: ClusterPlan, *,
               main_address: str | None) -> list[Component]:
    """The istioctl installs the plan puts on ``cp``, in order."""
    out = [Component("istio-operator.yaml",
                     manifests.istio_operator(config, plan, cp, main_address=main_address),
                     istiod_name(config) if cp.istio_role == "primary" else None)]
    if cp.east_west_gateway:
        out.append(Component("eastwest-gateway.yaml", manifests.eastwest_gateway(config, cp),
                             EASTWEST))
    return out


def install_cluster(k: kube.Kube, ctl: istio.Istioctl, config: Config, plan: Plan,
                    cp: ClusterPlan, *, main_address: str | None = None,
                    progress: Progress = _quiet) -> str | None:
    """Namespace, Istio, gateway, exposures for one cluster; returns its east-west address.

    Every step checks first, so a converged cluster sees reads only.
    """
    cluster = config.clusters[cp.name]
    if main_address and _loopback(main_address):
        main = config.clusters[cp.control_plane or ""]
        raise CheckFailed(
            f"{cp.name}: its control plane's east-west address {main_address} is a loopback "
            "address, which it cannot reach (and Kubernetes refuses in an EndpointSlice)",
            hint=f"set eastWestAddress in {main.source} to an address {cp.name} can reach")
    apply_manifest(k, manifests.namespace(cp))
    for comp in components(config, plan, cp, main_address=main_address):
        ensure_component(k, ctl, cluster, comp, progress=progress)
    if cp.expose_istiod:
        apply_manifest(k, manifests.expose_istiod(config))
    if cp.expose_services:
        apply_manifest(k, manifests.expose_services())
    if not cp.east_west_gateway:
        return None
    address = wait_east_west_address(k, cluster)
    progress(cp.name, f"east-west gateway address {address}")
    return address
