"""Everything in a namespace, found the way a careful teardown must find it: by discovery.

Deleting a namespace deletes every object in it, of every kind the API server serves:
custom resources of any CRD and kinds of aggregated APIs included.  So before meshctl
deletes a namespace it made, it must know the namespace holds nothing else, and a fixed
list of kinds (ConfigMaps, Deployments, …) cannot say that.  :func:`namespaced_kinds`
asks the API server which namespaced kinds it serves (``/api/v1``, then every group and
version under ``/apis``, as ``kubectl api-resources`` does), and
:func:`namespaced_objects` lists each of them in the namespace.

Only kinds that can be listed *and* deleted are inventoried: those are exactly what the
namespace controller deletes with the namespace (read-only views such as
``metrics.k8s.io`` PodMetrics are neither stored nor deleted).  Any discovery or list
failure is raised, never skipped: a caller that cannot see everything must not delete.

:func:`strangers` is the policy half, pure: which objects were neither made by the
caller (by uid, and whatever Kubernetes made from those through ``ownerReferences``)
nor made by the cluster itself for every namespace (``kube-root-ca.crt``, the
``default`` ServiceAccount, istiod's ``istio-ca-root-cert`` and ``istio-ca-crl``, Events).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from meshctl.kube.client import Kube, NotFound

# What the cluster itself puts in every namespace: (kind, name).
PER_NAMESPACE = frozenset({
    ("ConfigMap", "kube-root-ca.crt"),  # kube-controller-manager's root CA publisher
    ("ConfigMap", "istio-ca-root-cert"),  # istiod's namespace controller: the mesh root
    ("ConfigMap", "istio-ca-crl"),  # and, with a plug-in CA, its revocation list
    ("ServiceAccount", "default"),  # the ServiceAccount controller
})


@dataclass(frozen=True)
class Kind:
    """A namespaced kind the API server serves: ``group_version`` is ``v1`` or ``apps/v1``."""

    group_version: str
    resource: str  # plural, as in the URL
    kind: str

    def path(self, namespace: str) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        return f"{base}/namespaces/{quote(namespace)}/{self.resource}"


def _resources(kube: Kube, path: str, group_version: str) -> list[Kind]:
    """The namespaced, listable and deletable top-level resources of one group version."""
    doc = kube.get(path, what=f"discover {group_version}")
    if doc is None:  # the group went away between the two reads: nothing of it is left
        return []
    out = []
    for r in doc.get("resources") or []:
        verbs = set(r.get("verbs") or [])
        if (r.get("namespaced") and "/" not in r.get("name", "/") and "list" in verbs
                and verbs & {"delete", "deletecollection"}):
            out.append(Kind(group_version, r["name"], r.get("kind", r["name"])))
    return out


def namespaced_kinds(kube: Kube) -> list[Kind]:
    """Every namespaced kind the API server serves, one version per (group, resource).

    Versions are asked preferred first, then the others, so a resource served only in a
    non-preferred version is still found (``kubectl api-resources`` does the same).
    """
    kinds = _resources(kube, "/api/v1", "v1")
    seen = {("", k.resource) for k in kinds}
    groups = (kube.get("/apis", what="discover API groups") or {}).get("groups") or []
    for group in groups:
        preferred = (group.get("preferredVersion") or {}).get("groupVersion")
        versions = [v["groupVersion"] for v in group.get("versions") or []]
        for gv in sorted(versions, key=lambda v: v != preferred):
            for k in _resources(kube, f"/apis/{gv}", gv):
                if (group["name"], k.resource) not in seen:
                    seen.add((group["name"], k.resource))
                    kinds.append(k)
    return kinds


def namespaced_objects(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    """Every object in ``namespace``, of every kind found by :func:`namespaced_kinds`.

    Each object carries its ``apiVersion`` and ``kind`` (a LIST's items may not).  An
    object served under two groups (core and ``events.k8s.io`` Events) is returned once.
    A kind that vanished meanwhile (its CRD deleted) holds nothing; any other failure
    (a 403, an aggregated API that does not answer) is raised.
    """
    found: dict[str, dict[str, Any]] = {}
    for k in namespaced_kinds(kube):
        try:
            for obj in kube.items(k.path(namespace), what=f"list {k.resource} in {namespace}"):
                uid = (obj.get("metadata") or {}).get("uid") or f"{k.kind}/{len(found)}"
                found.setdefault(uid, {**obj, "apiVersion": k.group_version, "kind": k.kind})
        except NotFound:
            continue
    return list(found.values())


def derived(objects: Iterable[Mapping[str, Any]], uids: Iterable[str]) -> set[str]:
    """``uids`` and the uids of every object owned by them, transitively (ownerReferences:
    a Deployment's ReplicaSets and their Pods, a Service's EndpointSlices)."""
    owned = set(uids)
    objs = list(objects)
    grew = True
    while grew:
        grew = False
        for obj in objs:
            meta = obj.get("metadata") or {}
            uid = meta.get("uid")
            if uid and uid not in owned and any(
                    ref.get("uid") in owned for ref in meta.get("ownerReferences") or []):
                owned.add(uid)
                grew = True
    return owned


def describe(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind', '?')} {(obj.get('metadata') or {}).get('name', '?')}"


def strangers(objects: Iterable[Mapping[str, Any]], ours: Iterable[str], *,
              also_ours: Callable[[Mapping[str, Any]], bool] = lambda obj: False,
              ) -> list[Mapping[str, Any]]:
    """The objects that neither the caller made (``ours``: uids, plus what Kubernetes
    made from them) nor the cluster makes in every namespace; ``also_ours`` adds the
    caller's own rules.  Events are records, and objects already being deleted are
    going anyway: neither counts."""
    objs = list(objects)
    mine = derived(objs, ours)
    out = []
    for obj in objs:
        meta = obj.get("metadata") or {}
        if meta.get("uid") in mine or meta.get("deletionTimestamp"):
            continue
        if obj.get("kind") == "Event" or (obj.get("kind"), meta.get("name")) in PER_NAMESPACE:
            continue
        if also_ours(obj):
            continue
        out.append(obj)
    return out
