"""What else lives in the ``istio-system`` meshctl created, before teardown deletes it.

Deleting a namespace deletes every object in it, of every kind the API server serves:
another team's NetworkPolicies, Roles, Jobs, PersistentVolumeClaims, their Istio
resources.  So the question "does it hold anything meshctl did not make?" is asked of
every namespaced kind discovery reports (:mod:`meshctl.kube.inventory`), never of a
fixed list, and a kind that cannot be listed is an answer too: not knowing keeps the
namespace, and the reason is printed.

Not strangers (:func:`classify`, pure):

- what carries meshctl's labels for this mesh, or istioctl's owning-resource label of
  one of meshctl's IstioOperators for this cluster, and whatever Kubernetes made from
  those (``ownerReferences``: a Deployment's ReplicaSets and Pods, a Service's
  EndpointSlices, kwok's objects for a Pod);
- what Kubernetes makes in every namespace (``kube-root-ca.crt``, the ``default``
  ServiceAccount, ServiceAccount token Secrets, Events) and an Endpoints object named
  after one of meshctl's Services, or after a Service that is gone (the endpoints
  controller removes it);
- what meshctl's istiod makes for itself: its root certificate and CRL ConfigMaps, its
  self-signed ``istio-ca-secret``, its leader-election ConfigMaps and Leases (the names
  Istio's ``leaderelection`` package uses; per-revision ones for meshctl's revision);
- an object whose owners are all gone (namespaced owners the listing did not find):
  the garbage collector deletes it anyway;
- an object already being deleted.

Anything else is a stranger, named with its kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshctl import ownership
from meshctl.errors import MeshctlError, one_line
from meshctl.kube import Kube, NotFound, inventory

SHOWN = 10  # strangers named in one line
# istiod's own ConfigMaps (root cert for every namespace, CRL) and CA Secret
ISTIOD_CONFIGMAPS = frozenset({"istio-ca-root-cert", "istio-ca-crl"})
ISTIOD_CA_SECRET = ("istio-ca-secret", "istio.io/ca-root")
# istiod's leader elections (pilot/pkg/leaderelection): ConfigMap or Lease locks
ELECTIONS = frozenset({
    "istio-namespace-controller-election", "istio-clustertrustbundle-controller-election",
    "istio-serviceexport-controller-election", "istio-leader", "istio-status-leader",
    "istio-analyze-leader", "istio-node-untaint", "istio-ip-autoallocate",
    "istio-gateway-status-leader"})
PER_REVISION_ELECTIONS = frozenset({
    "istio-gateway-status-leader", "istio-gateway-deployment", "istio-gateway-inferencepool"})
SA_TOKEN = "kubernetes.io/service-account-token"


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def _istiod_made(obj: Mapping[str, Any], revision: str) -> bool:
    kind, name = obj.get("kind"), _meta(obj).get("name", "")
    if kind == "ConfigMap" and name in ISTIOD_CONFIGMAPS:
        return True
    if kind == "Secret" and (name, obj.get("type")) == ISTIOD_CA_SECRET:
        return True
    if kind in ("ConfigMap", "Lease"):
        return name in ELECTIONS or name in {f"{e}-{revision or 'default'}"
                                             for e in PER_REVISION_ELECTIONS}
    return False


def classify(objects: Sequence[Mapping[str, Any]], *, cluster: str, mesh_id: str,
             revision: str, namespaced: set[tuple[str, str]]) -> list[Mapping[str, Any]]:
    """The strangers among ``objects`` (every object of the namespace, each with its
    ``apiVersion`` and ``kind``).  ``namespaced`` holds the (group, kind) pairs discovery
    reports as namespaced: an owner of such a kind that the listing did not find is gone."""
    uids = {_meta(o).get("uid") for o in objects}
    ours = [_meta(o).get("uid") for o in objects
            if ownership.is_managed(o, mesh_id) or ownership.installed_by_meshctl(o, cluster)]
    mine = inventory.derived(objects, ours)
    services = {_meta(o).get("name"): _meta(o).get("uid") for o in objects
                if o.get("kind") == "Service" and not _group(o.get("apiVersion", ""))}

    def also_ours(obj: Mapping[str, Any]) -> bool:
        meta = _meta(obj)
        if _istiod_made(obj, revision):
            return True
        if obj.get("kind") == "Secret" and obj.get("type") == SA_TOKEN:
            return True  # the token controller removes it with its ServiceAccount
        if obj.get("kind") == "Endpoints" and not _group(obj.get("apiVersion", "")):
            service = services.get(meta.get("name"))
            return service is None or service in mine
        refs = meta.get("ownerReferences") or []
        return bool(refs) and all(
            r.get("uid") not in uids and (_group(str(r.get("apiVersion", ""))),
                                          r.get("kind")) in namespaced for r in refs)

    return list(inventory.strangers(objects, ours, also_ours=also_ours))


def _list(k: Kube, namespace: str) -> tuple[list[dict], list[str], set[tuple[str, str]]]:
    """Every object of every namespaced kind; the kinds that could not be listed (with
    why); the (group, kind) pairs that are namespaced."""
    kinds = inventory.namespaced_kinds(k)
    found: dict[str, dict] = {}
    unread: list[str] = []
    for kind in kinds:
        try:
            for obj in k.items(kind.path(namespace), what=f"list {kind.resource}"):
                uid = _meta(obj).get("uid") or f"{kind.kind}/{len(found)}"
                found.setdefault(uid, {**obj, "apiVersion": kind.group_version,
                                       "kind": kind.kind})
        except NotFound:
            continue  # the kind went away meanwhile (its CRD deleted): nothing of it is left
        except MeshctlError as e:
            unread.append(f"{kind.kind} ({kind.group_version}): "
                          f"{one_line(str(e).split(': ')[-1], 80)}")
    namespaced = {(_group(kind.group_version), kind.kind) for kind in kinds}
    return list(found.values()), unread, namespaced


def why_kept(k: Kube, namespace: str, *, cluster: str, mesh_id: str,
             revision: str) -> str | None:
    """Why ``namespace`` must not be deleted (objects meshctl did not make, or kinds that
    could not be listed), or None when it holds only meshctl's and its Istio's."""
    try:
        objects, unread, namespaced = _list(k, namespace)
    except MeshctlError as e:
        return f"cannot tell what it holds (discovery failed: {one_line(str(e), 120)})"
    found = classify(objects, cluster=cluster, mesh_id=mesh_id, revision=revision,
                     namespaced=namespaced)
    parts = []
    if found:
        named = [inventory.describe(o) for o in found]
        more = f" and {len(named) - SHOWN} more" if len(named) > SHOWN else ""
        parts.append(f"it holds objects meshctl did not make ({', '.join(named[:SHOWN])}"
                     f"{more})")
    if unread:
        parts.append(f"it may hold more: {len(unread)} kind(s) could not be listed "
                     f"({'; '.join(unread[:3])})")
    return "; ".join(parts) or None
