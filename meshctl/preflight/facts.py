"""Preflight's reads: everything it needs from one cluster, gathered once, as facts.

Facts first, checks second (cilium-cli's ``connect``): this module is the only part
of preflight that talks to a cluster, and only through :mod:`meshctl.kube`.  The reads are
shaped for large clusters:

- one paginated LIST per kind across all namespaces (nodes, pods, namespaces and,
  only where an east-west address must be found, services), pages of raw JSON
  folded into small sums as they arrive: per node its allocatable and the requests
  on it, per inject namespace a pod count, the istiod pods; nothing else is kept;
- nodes and pods are listed concurrently (two continue-token chains, each strictly
  sequential by nature);
- an Istio meshctl did not install (:mod:`~meshctl.preflight.found` folds what is found): one LIST
  each of istiod Deployments (label ``app=istiod``, all namespaces), Helm release
  Secrets (field selector on their type, small pages: their payloads are large),
  IstioOperators (a 404 means no CRD), ConfigMaps in istio-system (mesh config, the
  values istioctl rendered, meshctl's install record) and MutatingWebhookConfigurations,
  plus a GET of ``istio-ca-secret``: six requests, whatever the cluster's size;
- permissions (:mod:`~meshctl.preflight.permissions`): one SelfSubjectAccessReview for
  "everything" first; a cluster admin passes it and nothing more is asked.  Otherwise
  one SelfSubjectRulesReview for istio-system and one access review per cluster-wide
  permission; the report lists each missing one.

Every read that fails is kept as an error string on the facts, never raised, so
the other checks of that cluster still run.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from meshctl import istio, kube, versions
from meshctl.ca import cacerts
from meshctl.config import Cluster
from meshctl.errors import MeshctlError
from meshctl.preflight import capacity as cap
from meshctl.preflight import found, permissions
from meshctl.preflight.permissions import PERMISSIONS, Permission  # noqa: F401  (re-exported)

ISTIO_NS = "istio-system"
REACH_DEADLINE = 10.0  # seconds of retries before a cluster counts as unreachable
HELM_PAGE = 20  # Helm release Secrets per page: each may hold a ~1 MiB payload


@dataclass(frozen=True)
class Footprint:
    """What the mesh puts on one cluster, from the plan (or the cluster file alone)."""

    istiod: bool  # a primary runs istiod (default profile) ...
    ingress_gateway: bool  # ... and istio-ingressgateway with it
    east_west_gateway: bool
    istio_gateways: bool  # meshctl applies networking.istio.io Gateways (expose)
    link_source: bool  # other clusters read this API server (remote secret)




@dataclass(frozen=True)
class IstiodPod:
    version: str  # image tag, e.g. 1.24.2
    revision: str


@dataclass
class Facts:
    """What preflight learned about one cluster; ``*_error`` says what it could not."""

    cluster: Cluster
    footprint: Footprint
    server: str = ""
    context_error: str = ""
    unreachable: str = ""
    git_version: str = ""
    minor: int | None = None  # Kubernetes 1.<minor>; None when the server does not say
    nodes: dict[str, cap.Node] = field(default_factory=dict)
    nodes_error: str = ""
    pods_used: dict[str, list[int]] = field(default_factory=dict)  # node -> cpu, mem, pods
    inject_pods: dict[str, int] = field(default_factory=dict)
    istiod: list[IstiodPod] = field(default_factory=list)
    # running Istio pods in istio-system by app label: already placed, already counted
    istio_pods: dict[str, int] = field(default_factory=dict)
    pods_error: str = ""
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)  # wanted ones: labels
    namespaces_error: str = ""
    lb_has_address: bool | None = None  # None: not looked (not needed)
    services_error: str = ""
    cacerts: Any = None  # certs.Bundle | None
    cacerts_present: bool = False
    cacerts_error: str = ""
    cacerts_unusable: str = ""  # why a cacerts that is there is no CA bundle (names the field)
    admin: bool = False
    missing: list[Permission] = field(default_factory=list)
    permissions_error: str = ""
    istio_found: found.IstioFound = field(default_factory=found.IstioFound)
    requests: dict[str, int] = field(default_factory=dict)

    @property
    def reachable(self) -> bool:
        return not (self.context_error or self.unreachable)


# --- gathering ---------------------------------------------------------------------------


def gather(cluster: Cluster, footprint: Footprint, *, only_istio: bool = False) -> Facts:
    """Connect, then read everything the checks need; errors land on the facts.

    ``only_istio``: just what the ownership checks need (an Istio meshctl did not
    install, and ``cacerts``): what bootstrap reads even under ``--skip-preflight``.
    """
    facts = Facts(cluster=cluster, footprint=footprint)
    try:
        k = kube.client(cluster, deadline=REACH_DEADLINE)
    except MeshctlError as e:
        facts.context_error = str(e)
        return facts
    facts.server = k.server
    try:
        info = k.request("GET", "/version", what="read /version") or {}
        facts.git_version = info.get("gitVersion", "")
        facts.minor = versions.kubernetes_minor(info)
    except MeshctlError as e:
        facts.unreachable = str(e)
        facts.requests = dict(k.counts)
        return facts
    k.deadline = kube.DEFAULT_DEADLINE  # reachable: now the normal retry budget
    readers: list[Callable[[kube.Kube, Facts], None]] = (
        [_read_istio, _read_cacerts] if only_istio else
        [_read_pods, _read_nodes, _read_permissions, _read_small, _read_istio])
    with ThreadPoolExecutor(max_workers=len(readers),
                            thread_name_prefix=f"preflight-{cluster.name}") as pool:
        for fut in [pool.submit(reader, k, facts) for reader in readers]:
            fut.result()
    facts.requests = dict(k.counts)
    return facts




def _guard(facts: Facts, attr: str, fn: Callable[[], None]) -> None:
    """Run one read; a failure becomes ``facts.<attr>`` instead of an exception."""
    try:
        fn()
    except MeshctlError as e:
        setattr(facts, attr, str(e))


def _read_nodes(k: kube.Kube, facts: Facts) -> None:
    def read() -> None:
        nodes: dict[str, cap.Node] = {}
        for page in k.pages("/api/v1/nodes", what="list nodes"):
            for item in page.get("items") or ():
                node = cap.node_from(item)
                nodes[node.name] = node
        facts.nodes = nodes
    _guard(facts, "nodes_error", read)


def _read_pods(k: kube.Kube, facts: Facts) -> None:
    wanted = set(facts.cluster.inject_namespaces)

    def read() -> None:
        used: dict[str, list[int]] = {}
        inject: dict[str, int] = dict.fromkeys(wanted, 0)
        istiod: list[IstiodPod] = []
        istio_pods: dict[str, int] = {}
        for page in k.pages("/api/v1/pods", what="list pods"):
            for pod in page.get("items") or ():
                _fold_pod(pod, used, inject, istiod, istio_pods)
        facts.inject_pods, facts.istiod, facts.pods_used = inject, istiod, used
        facts.istio_pods = istio_pods
    _guard(facts, "pods_error", read)



def _fold_pod(pod: dict[str, Any], used: dict[str, list[int]], inject: dict[str, int],
              istiod: list[IstiodPod], istio_pods: dict[str, int]) -> None:
    """Add one pod to the running sums; the pod itself is not kept."""
    if not cap.is_active(pod):
        return
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return
    ns = meta.get("namespace", "")
    if ns in inject and not istio.has_proxy(pod):
        inject[ns] += 1
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        cpu, mem = cap.pod_requests(pod)
        sums = used.get(node)
        if sums is None:
            used[node] = [cpu, mem, 1]
        else:
            sums[0] += cpu
            sums[1] += mem
            sums[2] += 1
    labels = meta.get("labels") or {}
    if ns == ISTIO_NS and labels.get("app"):
        istio_pods[labels["app"]] = istio_pods.get(labels["app"], 0) + 1
    if ns == ISTIO_NS and labels.get("app") == "istiod":
        istiod.append(_istiod_pod(pod, labels))


def _istiod_pod(pod: dict[str, Any], labels: dict[str, str]) -> IstiodPod:
    image = ""
    for c in (pod.get("spec") or {}).get("containers") or ():
        if c.get("name") == "discovery" or not image:
            image = c.get("image", "")
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else "unknown"
    return IstiodPod(version=tag, revision=labels.get("istio.io/rev", "default"))


def _read_small(k: kube.Kube, facts: Facts) -> None:
    """Namespaces, the cacerts Secret and (where needed) LoadBalancer history."""
    wanted = {*facts.cluster.inject_namespaces, ISTIO_NS}

    def namespaces() -> None:
        found: dict[str, dict[str, str]] = {}
        for item in k.items("/api/v1/namespaces", what="list namespaces"):
            meta = item.get("metadata") or {}
            if meta.get("name") in wanted:
                found[meta["name"]] = dict(meta.get("labels") or {})
        facts.namespaces = found

    def services() -> None:
        facts.lb_has_address = any(
            (svc.get("spec") or {}).get("type") == "LoadBalancer"
            and ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress")
            for svc in k.items("/api/v1/services", what="list services"))

    _guard(facts, "namespaces_error", namespaces)
    _read_cacerts(k, facts)
    if facts.footprint.east_west_gateway and not facts.cluster.east_west_address:
        _guard(facts, "services_error", services)


def _read_cacerts(k: kube.Kube, facts: Facts) -> None:
    def read() -> None:
        live = k.get(cacerts.PATH, what=f"read {cacerts.WHAT}")
        facts.cacerts_present = live is not None
        facts.cacerts = cacerts.from_secret(facts.cluster.name, live) if live else None
        facts.cacerts_unusable = (cacerts.unusable(live) or "") if live else ""
    _guard(facts, "cacerts_error", read)


ISTIO_READS = ("istiod", "helm", "operators", "configmaps", "ca-secret", "webhooks")


def _read_istio(k: kube.Kube, facts: Facts) -> None:
    """What an Istio already here looks like: one LIST (or GET) per kind, folded."""
    got = facts.istio_found
    ns = found.ISTIO_NS

    def istiods() -> None:
        got.istiods = [found.istiod_from(d) for d in k.items(
            "/apis/apps/v1/deployments", query={"labelSelector": "app=istiod"},
            what="list istiod Deployments")]

    def helm() -> None:
        releases = []
        for s in k.items("/api/v1/secrets", limit=HELM_PAGE, what="list Helm release Secrets",
                         query={"labelSelector": found.HELM_SELECTOR,
                                "fieldSelector": f"type={found.HELM_TYPE}"}):
            release = found.helm_from(s)
            if release is not None:
                releases.append(release)
        got.helm = releases

    def operators() -> None:
        try:
            items = list(k.items("/apis/install.istio.io/v1alpha1/istiooperators",
                                 what="list IstioOperators"))
        except kube.NotFound:  # no IstioOperator CRD: none can exist
            items = []
        got.operators = [found.operator_from(i) for i in items]

    def configmaps() -> None:
        data: dict[str, dict] = {}
        for cm in k.items(f"/api/v1/namespaces/{ns}/configmaps",
                          what=f"list ConfigMaps in {ns}"):
            name = (cm.get("metadata") or {}).get("name", "")
            if name == found.RECORD:
                got.record, got.record_mesh = found.record_from(cm)
            elif name.startswith(("istio", "values")):
                cm_data = cm.get("data") or {}
                data[name] = {key: cm_data[key] for key in found.CONFIG_KEYS if key in cm_data}
        got.configmaps = data

    def ca_secret() -> None:
        got.ca_secret = k.get(f"/api/v1/namespaces/{ns}/secrets/{found.CA_SECRET}",
                              what=f"read Secret {ns}/{found.CA_SECRET}") is not None

    def webhooks() -> None:
        hooks = (found.webhook_from(w) for w in k.items(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
            what="list MutatingWebhookConfigurations"))
        got.webhooks = [w for w in hooks if w is not None]

    for key, read in zip(ISTIO_READS, (istiods, helm, operators, configmaps, ca_secret,
                                       webhooks), strict=True):
        try:
            read()
        except MeshctlError as e:
            got.errors[key] = str(e)


def _read_permissions(k: kube.Kube, facts: Facts) -> None:
    """Admin, or the permissions this cluster's footprint needs and the user lacks."""
    def read() -> None:
        facts.admin, facts.missing = permissions.missing(
            k, gateways=facts.footprint.istio_gateways)
    _guard(facts, "permissions_error", read)


def merged_nodes(facts: Facts) -> list[cap.Node]:
    """Nodes with the requests of their pods subtracted (pods and nodes read apart)."""
    used = facts.pods_used
    out = []
    for node in facts.nodes.values():
        sums = used.get(node.name)
        if sums:
            node.used_cpu, node.used_memory, node.used_pods = sums
        out.append(node)
    return out
