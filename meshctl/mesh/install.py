"""Istio on one cluster of the plan, idempotently: namespace, control plane, gateways.

istioctl applies every resource on each run, which would make a re-run of bootstrap
rewrite the whole control plane.  So before calling it meshctl compares the SHA-256
of the IstioOperator it would install with the one recorded after the last good
install (ConfigMap ``istio-system/meshctl-install``) and checks the Deployment is
Available; only a difference or a missing/unready Deployment runs istioctl again.

The same record is how teardown knows what is meshctl's (see ``ownership``): the
IstioOperators it installed (their text, so uninstall removes exactly those), the
istioctl version, whether it created ``istio-system`` (and its uid) or found it, the
labels it set on a namespace it found and their previous values, and whether Istio's
CRDs were there before it.  Where ``istio-system`` already existed, meshctl sets only
the network label (and, on a remote-role cluster, the control-plane annotation) and
never marks the namespace as its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from meshctl import istio, kube, manifests, ownership
from meshctl.config import Cluster, Config
from meshctl.errors import CheckFailed
from meshctl.kube import connection
from meshctl.mesh import install_record, upgrade_record
from meshctl.topology import ClusterPlan, Plan

NS = "istio-system"
NS_PATH = f"/api/v1/namespaces/{NS}"
RECORD_PATH = f"/api/v1/namespaces/{NS}/configmaps/meshctl-install"
# install record keys (values are strings; JSON where structured): install_record's shape
REC_MESH = install_record.MESH
REC_VERSION = install_record.VERSION
REC_NAMESPACE = install_record.NAMESPACE
REC_FOREIGN_FIELDS = install_record.FOREIGN_FIELDS
REC_CRDS = install_record.CRDS
OPERATOR_PREFIX = install_record.OPERATOR_PREFIX
NETWORK_LABEL = install_record.NETWORK_LABEL
CONTROL_PLANE_ANNOTATION = install_record.CONTROL_PLANE_ANNOTATION
EASTWEST = "istio-eastwestgateway"
ADDRESS_TIMEOUT = 120.0
READY_TIMEOUT = 300.0

Progress = Callable[[str, str], None]  # (cluster, message)


def _quiet(cluster: str, message: str) -> None:
    del cluster, message


digest = install_record.digest


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


def read_record(k: kube.Kube) -> dict | None:
    """The install record ConfigMap as it is (check it with ``install_record.problem``)."""
    return k.get(RECORD_PATH, what="read ConfigMap istio-system/meshctl-install")


def record_data(cm: Mapping[str, Any] | None) -> dict[str, str]:
    """The record's data; empty when there is none or it is not meshctl's."""
    if cm is None or not ownership.is_managed(cm):
        return {}
    return dict(cm.get("data") or {})


def recorded(k: kube.Kube) -> dict[str, str]:
    """The install record's data; empty when there is none or it is not meshctl's."""
    return record_data(read_record(k))


def record(k: kube.Kube, mesh_id: str, updates: Mapping[str, str | None]) -> None:
    """Merge ``updates`` into the install record (``None`` removes a key) and apply it
    whole: with server-side apply, a key left out of the record would be dropped."""
    data = {**recorded(k), REC_MESH: mesh_id, **updates}
    data = {key: value for key, value in data.items() if value is not None}
    kube.ensure(k, yaml.safe_load(manifests.install_record(data, mesh_id)))


def apply_manifest(k: kube.Kube, text: str, *, force: bool = False) -> list[str]:
    """``ensure`` every document of a rendered manifest; returns what changed.

    One that exists as someone else's is refused (``NotOwned``), and with ``force`` its
    fields are taken over without meshctl's labels: ``--force`` never makes an object
    meshctl's, since teardown deletes what carries them.
    """
    changed = []
    for doc in manifests.split(text):
        live = k.get(kube.object_path(doc), what=f"read {kube.describe(doc)}")
        theirs = force and kube.not_ours(live, doc)
        result = kube.ensure(k, ownership.without_ownership(doc) if theirs else doc,
                             live=live, force=force)
        if result != "unchanged":
            changed.append(f"{kube.describe(doc)} {result}"
                           + ("; still not meshctl's (teardown keeps it)" if theirs else ""))
    return changed


def _field_manager(live: Mapping[str, Any], section: str, key: str) -> str | None:
    """Which manager set ``metadata.<section>.<key>`` on ``live`` (for the record)."""
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        fields = ((entry.get("fieldsV1") or {}).get("f:metadata") or {}).get(f"f:{section}")
        if fields and f"f:{key}" in fields:
            return entry.get("manager")
    return None


def prepare_namespace(k: kube.Kube, cp: ClusterPlan, mesh_id: str, *,
                      force: bool = False) -> list[str]:
    """``istio-system`` with the cluster's network (and control plane) on it.

    Absent: created as meshctl's, its uid recorded.  Meshctl's already: kept in line, and
    its uid recorded if no record has it yet (``certs.issue`` made it before any install).
    Someone else's: only the label and annotation meshctl needs are applied, after the
    record has kept their previous values (once: a re-run must not record meshctl's own
    values as "previous"), so teardown can put them back exactly.
    """
    wanted = manifests.split(manifests.namespace(cp, mesh_id))[0]
    live = k.get(NS_PATH, what=f"read Namespace {NS}")
    if live is None or ownership.is_managed(live, mesh_id):
        result = kube.ensure(k, wanted, live=live, force=force)
        if result == "unchanged":
            return []
        if live is None or REC_NAMESPACE not in recorded(k):
            made = k.get(NS_PATH, what=f"read Namespace {NS}") or {"metadata": {}}
            record(k, mesh_id, {REC_NAMESPACE: json.dumps(
                {"created": True, "uid": made["metadata"].get("uid")})})
        return [f"Namespace {NS} {result}"]
    meta = wanted["metadata"]
    touch = {"labels": {NETWORK_LABEL: meta["labels"][NETWORK_LABEL]},
             "annotations": dict(meta.get("annotations") or {})}
    rec = recorded(k)
    if REC_FOREIGN_FIELDS not in rec:
        before = {section: {key: {"previous": (live["metadata"].get(section) or {}).get(key),
                                  "manager": _field_manager(live, section, key)}
                            for key in keys}
                  for section, keys in touch.items()}
        record(k, mesh_id, {REC_NAMESPACE: json.dumps({"created": False,
                                                       "uid": live["metadata"].get("uid")}),
                            REC_FOREIGN_FIELDS: json.dumps(before, sort_keys=True)})
    partial = {"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": NS, **{s: v for s, v in touch.items() if v}}}
    result = kube.ensure(k, partial, live=live, force=force)
    return [] if result == "unchanged" else [f"Namespace {NS} (not meshctl's): network "
                                             f"label {result}"]


def restore_namespace(k: kube.Kube, rec: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Put back what :func:`prepare_namespace` changed on a namespace meshctl found.

    ``rec`` has passed ``install_record.problem``, so it names only the label and
    annotation meshctl sets, with values they can hold.  Only on the namespace the record
    says meshctl found (same uid), and always as meshctl's own field manager: a name read
    from the cluster is never used to write.  Returns (restored, kept with why).
    """
    fields = install_record.foreign_fields(rec)
    found = install_record.namespace(rec)
    live = k.get(NS_PATH, what=f"read Namespace {NS}")
    if not fields or live is None or ownership.is_managed(live):
        return [], []
    if found is None or found["created"] or found["uid"] != live["metadata"].get("uid"):
        return [], [f"Namespace {NS}: labels not restored, it is not the namespace meshctl "
                    "found (uid differs from the install record)"]
    # releasing every field meshctl applied removes those it alone owned
    kube.apply(k, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    live = k.get(NS_PATH, what=f"read Namespace {NS}") or {"metadata": {}}
    restored = []
    for f in fields:
        now = (live["metadata"].get(f.section) or {}).get(f.key)
        if now != f.previous:
            k.request("PATCH", NS_PATH, body={"metadata": {f.section: {f.key: f.previous}}},
                      query={"fieldManager": ownership.RESTORE_FIELD_MANAGER},
                      content_type="application/merge-patch+json",
                      what=f"restore {f.section[:-1]} {f.key} on Namespace {NS}")
        restored.append(_restored(f.section, f.key, f.previous))
    return restored, []


def _restored(section: str, key: str, previous: str | None) -> str:
    if previous is None:
        return f"{section[:-1]} {key} removed (it was not set before meshctl)"
    return f"{section[:-1]} {key} back to {previous!r}"


@dataclass(frozen=True)
class Component:
    """One istioctl install: the control plane (or remote profile), or a gateway."""

    key: str  # record key, e.g. "istio-operator.yaml"
    operator: str  # rendered IstioOperator
    deployment: str | None  # what must be Available afterwards (None: remote profile)


def serving_revision(rec: Mapping[str, str]) -> str | None:
    """The revision of the control plane the (checked) record says meshctl installed:
    ``spec.revision`` of its recorded IstioOperator; None when there is none."""
    text = rec.get(OPERATOR_PREFIX + install_record.CONTROL_PLANE)
    if not text:
        return None
    doc = yaml.safe_load(text)
    spec = doc.get("spec") if isinstance(doc, dict) else None
    revision = spec.get("revision", "") if isinstance(spec, dict) else ""
    return revision if isinstance(revision, str) else ""


def version_problem(rec: Mapping[str, str], ctl: istio.Istioctl,
                    revision: str | None = None) -> str | None:
    """Why this istioctl must not touch what another istioctl version installed, or
    (given mesh.yaml's ``revision``) why bootstrap must not run on this record at all:
    an upgrade is open, or one has moved the mesh to another revision."""
    state = upgrade_record.parse(rec)
    if state is not None and not (state.done and state.stage in ("finish", "rollback")):
        return (f"an Istio upgrade to revision {state.to_revision} is in progress (stage "
                f"{state.stage}{'' if state.done else ', not done'}): finish it "
                "(upgrade --finish) or roll it back (upgrade --rollback) first")
    serving = serving_revision(rec)
    if revision is not None and serving is not None and serving != revision:
        wanted = serving or '""'
        return (f"the mesh runs Istio revision {serving or 'default'} (after an upgrade), "
                f"mesh.yaml says {revision or 'default'}: set istio.revision: {wanted} "
                "in mesh.yaml")
    was = rec.get(REC_VERSION)
    if was and was != ctl.version:
        return (f"Istio was installed by istioctl {was}; this is istioctl {ctl.version} "
                f"({ctl.path}): run with that istioctl, or upgrade the mesh to this one "
                "with 'invoke upgrade --to <revision> --istioctl PATH'")
    return None


def ensure_component(k: kube.Kube, ctl: istio.Istioctl, cluster: Cluster, comp: Component,
                     *, mesh_id: str, progress: Progress = _quiet) -> bool:
    """Install ``comp`` unless the same operator is recorded and its Deployment is ready.

    Returns True when istioctl ran.  Before the first install the record notes whether
    Istio's CRDs were already there (then teardown never deletes them); afterwards it
    keeps the operator's hash and text and the istioctl version.
    """
    rec = recorded(k)
    problem = version_problem(rec, ctl)
    if problem:
        raise CheckFailed(f"{cluster.name}: {problem}",
                          hint="run with the istioctl that installed it (MESHCTL_ISTIOCTL)")
    want = digest(comp.operator)
    healthy = comp.deployment is None or deployment_problem(k, comp.deployment) is None
    if rec.get(comp.key) == want and healthy:
        return False
    if REC_CRDS not in rec:
        record(k, mesh_id, {REC_CRDS: "existing" if istio_crds(k) else "installed"})
    progress(cluster.name, f"istioctl install ({comp.key}) …")
    istio.install(ctl, cluster, comp.operator, what=f"istioctl install {comp.key}")
    if comp.deployment:
        kube.wait_for(f"{cluster.name}: Deployment {NS}/{comp.deployment} Available",
                      lambda: deployment_problem(k, comp.deployment), timeout=READY_TIMEOUT,
                      interval=2.0)
    record(k, mesh_id, {comp.key: want, OPERATOR_PREFIX + comp.key: comp.operator,
                        REC_VERSION: ctl.version})
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
    """Delete Istio's CRDs, then wait until none is left.

    Only for teardown, once it has decided the CRDs are meshctl's to remove (the record
    says its install created them and nothing else uses them): CRDs carry istioctl's
    labels, not meshctl's.  A CRD the API server is still finalizing after ``timeout``
    is reported, not fatal: everything else of the teardown still has to happen.
    """
    deleted = []
    for crd in istio_crds(k):
        if not crd["metadata"].get("deletionTimestamp") and kube.delete(k, {
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": crd["metadata"]["name"]}}, only_managed=False):
            deleted.append(f"CustomResourceDefinition {crd['metadata']['name']}")

    def check() -> str | None:
        left = [crd["metadata"]["name"] for crd in istio_crds(k)]
        return f"still there: {', '.join(left)}" if left else None

    try:
        kube.wait_for(f"{k.cluster}: Istio CRDs deleted", check, timeout=timeout, interval=1.0)
    except kube.WaitTimeout as e:
        progress(k.cluster, f"warning: {e} (deleted; the API server is still finalizing)")
    return deleted



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
    istiod = istio.istiod_name(config.mesh.istio.revision)
    out = [Component("istio-operator.yaml",
                     manifests.istio_operator(config, plan, cp, main_address=main_address),
                     istiod if cp.istio_role == "primary" else None)]
    if cp.east_west_gateway:
        out.append(Component("eastwest-gateway.yaml", manifests.eastwest_gateway(config, cp),
                             EASTWEST))
    return out


def check_main_address(config: Config, cp: ClusterPlan, main_address: str | None) -> None:
    """A remote-role cluster must reach its control plane's east-west gateway: a loopback
    address would point it at itself (and Kubernetes refuses it in an EndpointSlice)."""
    if main_address and connection.is_loopback(main_address):
        main = config.clusters[cp.control_plane or ""]
        raise CheckFailed(
            f"{cp.name}: its control plane's east-west address {main_address} is a loopback "
            "address, which it cannot reach (and Kubernetes refuses in an EndpointSlice)",
            hint=f"set eastWestAddress in {main.source} to an address {cp.name} can reach")
