"""What the operator's credentials may do on a cluster, asked the way RBAC answers it.

One SelfSubjectAccessReview for "everything" first: a cluster admin passes it and
nothing more is asked.  Otherwise one SelfSubjectRulesReview gives every rule held in
istio-system (matched here as RBAC matches it) and one access review per cluster-wide
permission.  When the server says its rules list is incomplete (an authorizer besides
RBAC), the namespaced permissions are asked one by one too.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from meshctl import kube

ISTIO_NS = "istio-system"
SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
SSRR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews"


@dataclass(frozen=True)
class Permission:
    verb: str
    resource: str
    group: str = ""
    namespace: str | None = None

    def __str__(self) -> str:
        res = f"{self.resource}.{self.group}" if self.group else self.resource
        where = f" in {self.namespace}" if self.namespace else " (cluster-wide)"
        return f"{self.verb} {res}{where}"


# What `istioctl install` (default profile, plus the east-west gateway), cacerts push,
# namespace labels and `istioctl create-remote-secret` + link need; "create" stands
# for the write verbs of each kind, "patch" where meshctl updates in place.
PERMISSIONS: tuple[Permission, ...] = tuple(
    Permission(verb, resource, group, None if scope == "cluster" else ISTIO_NS)
    for verb, resource, group, scope in (
        # verb, resource, API group, where (the whole cluster, or istio-system)
        ("create", "namespaces", "", "cluster"),
        ("patch", "namespaces", "", "cluster"),
        ("create", "customresourcedefinitions", "apiextensions.k8s.io", "cluster"),
        ("create", "clusterroles", "rbac.authorization.k8s.io", "cluster"),
        ("create", "clusterrolebindings", "rbac.authorization.k8s.io", "cluster"),
        ("create", "mutatingwebhookconfigurations", "admissionregistration.k8s.io", "cluster"),
        ("create", "validatingwebhookconfigurations", "admissionregistration.k8s.io", "cluster"),
        ("create", "deployments", "apps", ISTIO_NS),
        ("create", "services", "", ISTIO_NS),
        ("create", "serviceaccounts", "", ISTIO_NS),
        ("create", "configmaps", "", ISTIO_NS),
        ("create", "secrets", "", ISTIO_NS),
        ("patch", "secrets", "", ISTIO_NS),
        ("get", "secrets", "", ISTIO_NS),
        ("create", "roles", "rbac.authorization.k8s.io", ISTIO_NS),
        ("create", "rolebindings", "rbac.authorization.k8s.io", ISTIO_NS),
        ("create", "poddisruptionbudgets", "policy", ISTIO_NS),
        ("create", "horizontalpodautoscalers", "autoscaling", ISTIO_NS),
    ))
GATEWAY_PERMISSION = Permission("create", "gateways", "networking.istio.io", ISTIO_NS)
EVERYTHING = Permission("*", "*", "*")


def allowed(k: kube.Kube, perm: Permission) -> bool:
    """One SelfSubjectAccessReview: may the kubeconfig's user do ``perm``?"""
    attrs: dict[str, str] = {"verb": perm.verb, "group": perm.group,
                             "resource": perm.resource}
    if perm.namespace:
        attrs["namespace"] = perm.namespace
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs}}
    review = k.request("POST", SSAR_PATH, body=body, what=f"access review: {perm}")
    return bool((review.get("status") or {}).get("allowed"))


def _rule_allows(rule: dict[str, Any], perm: Permission) -> bool:
    """RBAC's own matching for one resource rule (a rule naming objects grants less)."""
    def has(key: str, value: str) -> bool:
        values = rule.get(key) or []
        return "*" in values or value in values
    return (has("verbs", perm.verb) and has("apiGroups", perm.group)
            and has("resources", perm.resource) and not rule.get("resourceNames"))


def namespace_rules(k: kube.Kube, namespace: str) -> list[dict[str, Any]] | None:
    """Every resource rule the user holds in ``namespace`` (one SelfSubjectRulesReview),
    or ``None`` when the server says the list is incomplete (another authorizer)."""
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": namespace}}
    review = k.request("POST", SSRR_PATH, body=body, what=f"rules review in {namespace}")
    status = review.get("status") or {}
    return None if status.get("incomplete") else list(status.get("resourceRules") or [])


def missing(k: kube.Kube, *, gateways: bool) -> tuple[bool, list[Permission]]:
    """``(admin, missing)``: one wildcard review for admins; else one rules review for
    istio-system and one access review per cluster-wide permission (about 9 requests
    instead of 19).  ``gateways``: meshctl will apply Istio Gateways here too."""
    if allowed(k, EVERYTHING):
        return True, []
    wanted = [*PERMISSIONS, *([GATEWAY_PERMISSION] if gateways else [])]
    rules = namespace_rules(k, ISTIO_NS)
    by_rules = {p: any(_rule_allows(r, p) for r in rules)
                for p in wanted if p.namespace == ISTIO_NS} if rules is not None else {}
    ask = [p for p in wanted if p not in by_rules]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = dict(zip(ask, pool.map(lambda p: allowed(k, p), ask), strict=True))
    answers.update(by_rules)
    return False, [p for p in wanted if not answers[p]]
