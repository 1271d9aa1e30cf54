"""Which objects in istio-system block teardown from deleting it, offline (pure policy).

teardown deletes the ``istio-system`` it created only when every object in it, of every
kind discovery reports, is meshctl's, its Istio's, or something Kubernetes or istiod
makes by itself.  Each case is one object beside meshctl's own install; the sandbox
half (real discovery, real objects, uid and resourceVersion before and after) is
``tests/test_teardown_untrusted.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshctl import ownership
from meshctl.mesh import strangers

CLUSTER, MESH = "cluster1", "mesh1"
NAMESPACED = {("", "Pod"), ("", "Service"), ("", "ConfigMap"), ("apps", "ReplicaSet"),
              ("apps", "Deployment"), ("discovery.k8s.io", "EndpointSlice"),
              ("kwok.x-k8s.io", "PortForward")}
_uid = iter(range(1, 10_000))


def obj(kind: str, name: str, api: str = "v1", *, labels: dict | None = None,
        owners: list[dict] | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "istio-system",
                            "uid": f"uid-{next(_uid)}"}
    if labels:
        meta["labels"] = labels
    if owners:
        meta["ownerReferences"] = owners
    meta.update(extra.pop("meta", {}))
    return {"apiVersion": api, "kind": kind, "metadata": meta, **extra}


def owner(of: dict) -> dict:
    return {"apiVersion": of["apiVersion"], "kind": of["kind"],
            "name": of["metadata"]["name"], "uid": of["metadata"]["uid"]}


OWNED_BY_ISTIOCTL = {ownership.OWNING_RESOURCE: f"meshctl-{CLUSTER}"}


def baseline() -> list[dict]:
    """meshctl's Istio as it stands after install: istiod, its ReplicaSet and Pod, its
    Service and EndpointSlice, kwok's PortForward for the pod, the install record."""
    dep = obj("Deployment", "istiod", "apps/v1", labels=OWNED_BY_ISTIOCTL)
    rs = obj("ReplicaSet", "istiod-5d9f", "apps/v1", owners=[owner(dep)],
             labels={"app": "istiod"})
    pod = obj("Pod", "istiod-5d9f-x", owners=[owner(rs)], labels={"app": "istiod"})
    svc = obj("Service", "istiod", labels=OWNED_BY_ISTIOCTL)
    return [dep, rs, pod, svc,
            obj("EndpointSlice", "istiod-abc", "discovery.k8s.io/v1", owners=[owner(svc)]),
            obj("Endpoints", "istiod"),
            obj("PortForward", "istiod-5d9f-x", "kwok.x-k8s.io/v1alpha1", owners=[owner(pod)]),
            obj("ConfigMap", "meshctl-install", labels=ownership.labels(MESH))]


def gone_owner(kind: str, api: str) -> dict:
    return {"apiVersion": api, "kind": kind, "name": "gone", "uid": "uid-gone"}


# (id, objects beside the baseline, the strangers named "Kind name")
CASES: list[tuple[str, list[dict], list[str]]] = [
    ("nothing-else", [], []),
    # what Kubernetes and istiod make by themselves
    ("kube-root-ca", [obj("ConfigMap", "kube-root-ca.crt")], []),
    ("default-sa", [obj("ServiceAccount", "default")], []),
    ("sa-token", [obj("Secret", "reader-token", type="kubernetes.io/service-account-token")],
     []),
    ("istio-ca-root-cert", [obj("ConfigMap", "istio-ca-root-cert")], []),
    ("istio-ca-crl", [obj("ConfigMap", "istio-ca-crl")], []),
    ("istiod-self-signed-ca", [obj("Secret", "istio-ca-secret", type="istio.io/ca-root")], []),
    ("election-configmap", [obj("ConfigMap", "istio-namespace-controller-election")], []),
    ("election-lease", [obj("Lease", "istio-status-leader", "coordination.k8s.io/v1")], []),
    ("per-revision-lease", [obj("Lease", "istio-gateway-deployment-default",
                                "coordination.k8s.io/v1")], []),
    ("event", [obj("Event", "istiod.1", "events.k8s.io/v1")], []),
    ("being-deleted", [obj("ConfigMap", "team", meta={"deletionTimestamp": "2026-01-01"})],
     []),
    ("endpoints-of-gone-service", [obj("Endpoints", "istio-eastwestgateway")], []),
    ("owner-gone", [obj("Pod", "old-x", owners=[gone_owner("ReplicaSet", "apps/v1")])], []),
    ("meshctl-object-no-mesh-label", [obj("ConfigMap", "old", labels={
        ownership.MANAGED_BY: ownership.MANAGER})], []),
    # everything else is a stranger, whatever its kind
    ("team-configmap", [obj("ConfigMap", "team-settings")], ["ConfigMap team-settings"]),
    ("network-policy", [obj("NetworkPolicy", "deny-all", "networking.k8s.io/v1")],
     ["NetworkPolicy deny-all"]),
    ("role", [obj("Role", "reader", "rbac.authorization.k8s.io/v1")], ["Role reader"]),
    ("role-binding", [obj("RoleBinding", "reader", "rbac.authorization.k8s.io/v1")],
     ["RoleBinding reader"]),
    ("job", [obj("Job", "backup", "batch/v1")], ["Job backup"]),
    ("pvc", [obj("PersistentVolumeClaim", "data")], ["PersistentVolumeClaim data"]),
    ("istio-resource", [obj("VirtualService", "reviews", "networking.istio.io/v1")],
     ["VirtualService reviews"]),
    ("custom-resource", [obj("Widget", "w", "example.com/v1")], ["Widget w"]),
    ("other-mesh", [obj("ConfigMap", "theirs", labels=ownership.labels("mesh2"))],
     ["ConfigMap theirs"]),
    ("other-owning-resource", [obj("Deployment", "istiod-prod", "apps/v1", labels={
        ownership.OWNING_RESOURCE: "installed-state"})], ["Deployment istiod-prod"]),
    ("opaque-istio-ca-secret", [obj("Secret", "istio-ca-secret", type="Opaque")],
     ["Secret istio-ca-secret"]),
    ("other-revision-lease", [obj("Lease", "istio-gateway-deployment-prod",
                                  "coordination.k8s.io/v1")],
     ["Lease istio-gateway-deployment-prod"]),
    ("team-lease", [obj("Lease", "team-lock", "coordination.k8s.io/v1")], ["Lease team-lock"]),
    ("cluster-scoped-owner", [obj("ConfigMap", "c", owners=[gone_owner("Node", "v1")])],
     ["ConfigMap c"]),
]


def _with_foreign_service() -> list[dict]:
    svc = obj("Service", "team-api")
    return [svc, obj("Endpoints", "team-api"),
            obj("EndpointSlice", "team-api-x", "discovery.k8s.io/v1", owners=[owner(svc)])]


def _owned_by_stranger() -> list[dict]:
    dep = obj("Deployment", "team", "apps/v1")
    return [dep, obj("ReplicaSet", "team-1", "apps/v1", owners=[owner(dep)])]


CASES += [
    ("foreign-service-and-endpoints", _with_foreign_service(),
     ["Service team-api", "Endpoints team-api", "EndpointSlice team-api-x"]),
    ("owned-by-a-stranger", _owned_by_stranger(), ["Deployment team", "ReplicaSet team-1"]),
]


@pytest.mark.parametrize(("extra", "named"), [(e, n) for _, e, n in CASES],
                         ids=[i for i, _, _ in CASES])
def test_strangers(extra: list[dict], named: list[str]) -> None:
    found = strangers.classify([*baseline(), *extra], cluster=CLUSTER, mesh_id=MESH,
                               revision="", namespaced=NAMESPACED)
    assert sorted(f"{o['kind']} {o['metadata']['name']}" for o in found) == sorted(named)


def test_meshctls_istio_of_another_cluster_name_is_a_stranger() -> None:
    """istioctl's owning-resource label counts only for this cluster's operators."""
    found = strangers.classify(baseline(), cluster="cluster2", mesh_id=MESH, revision="",
                               namespaced=NAMESPACED)
    assert {o["kind"] for o in found} >= {"Deployment", "Service"}
