"""Preflight's checks: facts in, results out, no I/O.

Each function turns the facts of one cluster (``preflight.facts``) into one
:class:`Result`; checks across the set of clusters take all facts.  Being pure,
each rule reads as what it decides, and the numbers behind every verdict travel
with it (``Result.numbers``) for ``--json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from meshctl import istio
from meshctl.ca import pki
from meshctl.config import Config
from meshctl.errors import one_line
from meshctl.kube import connection
from meshctl.preflight import capacity as cap
from meshctl.preflight.facts import Facts
from meshctl.verdicts import FAIL, PASS, WARN
from meshctl.versions import major_minor

# Kubernetes minors each Istio minor supports: the minimum is istioctl's own
# ``k8sversion.MinK8SVersion`` (below it istioctl warns that Istio is unsupported),
# the maximum the newest one istio.io/docs/releases/supported-releases lists as
# tested (None: not published yet, e.g. a development build).
K8S_SUPPORT: dict[int, tuple[int, int | None]] = {
    22: (27, 30), 23: (27, 30), 24: (28, 31), 25: (29, 32), 26: (29, 33),
    27: (29, 33), 28: (30, 34), 31: (32, None),
}
# meshctl's own floor, whatever istioctl accepts: verify asks who it is with
# SelfSubjectReview authentication.k8s.io/v1, served from Kubernetes 1.28 on.
MESHCTL_MIN_MINOR = 28
PSA_ENFORCE = "pod-security.kubernetes.io/enforce"


@dataclass(frozen=True)
class Result:
    """One check on one cluster: verdict, one line, the numbers behind it, a fix."""

    cluster: str
    check: str
    status: str
    message: str
    numbers: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    hint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "check": self.check, "status": self.status,
                "message": self.message, "numbers": dict(self.numbers),
                "hint": self.hint or None}


def result(facts: Facts, check: str, status: str, message: str, *, hint: str = "",
           limit: int = 600, **numbers: Any) -> Result:
    return Result(cluster=facts.cluster.name, check=check, status=status,
                  message=one_line(message, limit), numbers=MappingProxyType(numbers),
                  hint=one_line(hint, 400) if hint else "")



# --- connection -----------------------------------------------------------------------


def context(facts: Facts) -> Result:
    c = facts.cluster
    if facts.context_error:
        return result(facts, "context", FAIL, facts.context_error,
                      hint=f"fix 'context'/'kubeconfig' in {c.source}")
    return result(facts, "context", PASS, f"context {c.context} found")


def api(facts: Facts) -> Result | None:
    if facts.context_error:
        return None
    if facts.unreachable:
        return result(facts, "api", FAIL, facts.unreachable,
                      hint="is the cluster running and the kubeconfig's server right?")
    return result(facts, "api", PASS, f"API server {facts.server} answers "
                  f"(Kubernetes {k8s_version(facts)})")


def k8s_version(facts: Facts) -> str:
    """gitVersion when it is a release; a source build says v0.0.0, then 1.<minor>."""
    if facts.git_version.startswith("v1."):
        return facts.git_version
    return f"1.{facts.minor}" if facts.minor is not None else (facts.git_version or "?")


def kubernetes_version(facts: Facts, istioctl: istio.Istioctl | None) -> Result:
    ist = istioctl.minor if istioctl else None
    shown = k8s_version(facts)
    if facts.minor is not None and facts.minor < MESHCTL_MIN_MINOR:
        return result(facts, "kubernetes-version", FAIL,
                      f"Kubernetes {shown}: below meshctl's minimum 1.{MESHCTL_MIN_MINOR} "
                      "(verify needs SelfSubjectReview authentication.k8s.io/v1)",
                      hint=f"upgrade the cluster to ≥ 1.{MESHCTL_MIN_MINOR}",
                      kubernetesMinor=facts.minor, minSupportedMinor=MESHCTL_MIN_MINOR,
                      maxTestedMinor=None)
    if facts.minor is None or ist is None:
        why = ("istioctl not found" if ist is None
               else "the API server does not report a release version")
        return result(facts, "kubernetes-version", WARN,
                      f"Kubernetes {shown}: support not checked ({why})",
                      hint="check istio.io supported releases for this pair")
    known = [m for m in K8S_SUPPORT if m <= ist[1]]
    low, high = K8S_SUPPORT[max(known)] if known else (0, None)
    low = max(low, MESHCTL_MIN_MINOR)
    if known and max(known) != ist[1]:
        high = None  # a newer Istio than the table: its maximum is unknown
    numbers = {"kubernetesMinor": facts.minor, "minSupportedMinor": low,
               "maxTestedMinor": high}
    where = f"Kubernetes {shown} with istioctl {istioctl.version}"  # type: ignore[union-attr]
    if facts.minor < low:
        return result(facts, "kubernetes-version", FAIL,
                      f"{where}: below the minimum 1.{low}",
                      hint=f"upgrade the cluster to ≥ 1.{low}, or use an older istioctl",
                      **numbers)
    if high is not None and facts.minor > high:
        return result(facts, "kubernetes-version", WARN,
                      f"{where}: newer than the newest tested 1.{high}",
                      hint="check istio.io supported releases before installing", **numbers)
    return result(facts, "kubernetes-version", PASS, f"{where}: supported", **numbers)


# --- permissions and nodes ------------------------------------------------------------


def permissions(facts: Facts) -> Result:
    if facts.permissions_error:
        return result(facts, "permissions", FAIL,
                      f"cannot review permissions: {facts.permissions_error}")
    if facts.admin:
        return result(facts, "permissions", PASS, "cluster admin: may do everything",
                      missing=0)
    if facts.missing:
        listed = [str(p) for p in facts.missing]
        return result(facts, "permissions", FAIL,
                      f"missing {len(listed)} permission(s): {', '.join(listed)}",
                      hint="use a cluster-admin context for install and link", limit=3000,
                      missing=len(listed), missingPermissions=listed)
    return result(facts, "permissions", PASS, "every permission install and link need",
                  missing=0)


def nodes(facts: Facts) -> Result:
    if facts.nodes_error:
        return result(facts, "nodes", FAIL, f"cannot list nodes: {facts.nodes_error}",
                      hint="the context needs 'list nodes' for preflight")
    all_nodes = list(facts.nodes.values())
    excluded = [n for n in all_nodes if n.excluded]
    counts = {"total": len(all_nodes),
              "ready": sum(1 for n in all_nodes if n.excluded != "NotReady"),
              "schedulable": len(all_nodes) - len(excluded)}
    if not all_nodes or counts["schedulable"] == 0:
        return result(facts, "nodes", FAIL,
                      f"{counts['schedulable']} of {counts['total']} nodes Ready and "
                      "schedulable for Istio pods" + _excluded_note(excluded),
                      hint="add a node, uncordon one, or remove the taints", **counts)
    if excluded:
        return result(facts, "nodes", WARN,
                      f"{counts['schedulable']} of {counts['total']} nodes schedulable for "
                      "Istio pods" + _excluded_note(excluded),
                      hint="istiod and gateways have no tolerations; these nodes do not count",
                      **counts)
    return result(facts, "nodes", PASS, f"{counts['total']} nodes Ready and schedulable",
                  **counts)


def _excluded_note(excluded: Sequence[cap.Node]) -> str:
    shown = ", ".join(f"{n.name} ({n.excluded})" for n in excluded[:3])
    more = f" and {len(excluded) - 3} more" if len(excluded) > 3 else ""
    return f"; excluded: {shown}{more}" if excluded else ""


# --- istio, certificates, namespaces --------------------------------------------------


def existing_istio(facts: Facts, istioctl: istio.Istioctl | None,
                   revision: str) -> Result | None:
    if facts.pods_error:
        return None  # resources reports the pods error
    if not facts.istiod:
        return result(facts, "istio", PASS, "no Istio control plane yet", istiod=0)
    versions = sorted({p.version for p in facts.istiod})
    revisions = sorted({p.revision for p in facts.istiod})
    numbers = {"istiod": len(facts.istiod), "versions": ", ".join(versions),
               "revisions": ", ".join(revisions)}
    text = f"istiod {', '.join(versions)} (revision {', '.join(revisions)})"
    ist = istioctl.minor if istioctl else None
    minors = [m for m in (major_minor(v) for v in versions) if m]
    skew = max((abs(ist[1] - m[1]) for m in minors), default=0) if ist else 0
    ours = revision or "default"
    side_by_side = ours not in revisions
    if not ist or skew == 0 or side_by_side:
        note = (f"; revision {ours} installs beside it" if side_by_side else "")
        return result(facts, "istio", PASS, f"{text} running{note}", skew=skew, **numbers)
    if skew == 1:
        return result(facts, "istio", WARN,
                      f"{text} running; istioctl {istioctl.version} is one minor apart: "  # type: ignore[union-attr]
                      "install upgrades it in place",
                      hint="set istio.revision in mesh.yaml for a canary upgrade instead",
                      skew=skew, **numbers)
    return result(facts, "istio", FAIL,
                  f"{text} running; istioctl {istioctl.version} is {skew} minors apart",  # type: ignore[union-attr]
                  hint="use an istioctl at most one minor from it, or a new istio.revision",
                  skew=skew, **numbers)


def ca_roots(facts: Facts, local_root: str | None, others: Mapping[str, set[str]]) -> Result:
    """Mixed roots break mTLS across clusters: FAIL when this cluster trusts another."""
    if facts.cacerts_error:
        return result(facts, "cacerts", FAIL, f"cannot read cacerts: {facts.cacerts_error}",
                      hint="the context needs 'get secrets' in istio-system")
    if not facts.cacerts_present:
        return result(facts, "cacerts", PASS, "no istio-system/cacerts yet")
    if facts.cacerts is None:
        return result(facts, "cacerts", FAIL, "istio-system/cacerts exists but is not a "
                      f"usable CA bundle: {facts.cacerts_unusable or 'unreadable'}",
                      hint="inspect it; certs.issue replaces it (after a backup) only with "
                           "--force")
    roots = {pki.fingerprint(r) for r in facts.cacerts.roots}
    short = ", ".join(sorted(r[:23] + "…" for r in roots))
    if local_root and local_root not in roots:
        return result(facts, "cacerts", FAIL,
                      f"istio-system/cacerts trusts root {short}, not the local root "
                      f"{local_root[:23]}…: mixed roots break mTLS across clusters",
                      hint="stage a root rotation (certs.rotate --root) or restore the "
                           "matching CA folder")
    clash = sorted(name for name, theirs in others.items() if theirs and not roots & theirs)
    if clash:
        return result(facts, "cacerts", FAIL,
                      f"istio-system/cacerts root {short} differs from the root on "
                      f"{', '.join(clash)}: mixed roots break mTLS across clusters",
                      hint="issue every cluster's intermediate from one root (certs.issue)")
    where = "the local root" if local_root else "no local root to compare yet"
    return result(facts, "cacerts", PASS, f"istio-system/cacerts present, root {short} "
                  f"({where})")


def _cni_enabled(values: Mapping[str, Any]) -> bool:
    cni = values.get("istio_cni") or {}
    pilot_cni = (values.get("pilot") or {}).get("cni") or {}
    return bool(cni.get("enabled") or pilot_cni.get("enabled"))


def inject_namespaces(facts: Facts, values: Mapping[str, Any]) -> Result | None:
    wanted = facts.cluster.inject_namespaces
    if not wanted:
        return None
    if facts.namespaces_error:
        return result(facts, "inject-namespaces", FAIL,
                      f"cannot list namespaces: {facts.namespaces_error}")
    missing = [ns for ns in wanted if ns not in facts.namespaces]
    strict = [] if _cni_enabled(values) else [
        (ns, facts.namespaces[ns].get(PSA_ENFORCE)) for ns in wanted
        if facts.namespaces.get(ns, {}).get(PSA_ENFORCE) in ("baseline", "restricted")]
    numbers = {"namespaces": len(wanted), "missing": len(missing), "podSecurityBlocked":
               len(strict)}
    if missing:
        return result(facts, "inject-namespaces", FAIL,
                      f"namespace(s) {', '.join(missing)} do not exist", **numbers,
                      hint=f"create them or drop them from injectNamespaces in "
                           f"{facts.cluster.source}")
    if strict:
        listed = ", ".join(f"{ns} (enforce={level})" for ns, level in strict)
        return result(facts, "inject-namespaces", FAIL,
                      f"PodSecurity forbids the sidecar's istio-init container "
                      f"(NET_ADMIN, NET_RAW) in {listed}", **numbers,
                      hint="enable Istio CNI (istio.values.istio_cni.enabled in mesh.yaml "
                           "and install the cni component) or set the namespace's enforce "
                           "level to privileged")
    return result(facts, "inject-namespaces", PASS, f"{', '.join(wanted)} exist",
                  **numbers)


# --- across the set -------------------------------------------------------------------


def api_server_address(facts: Facts) -> Result | None:
    """The address other clusters' remote secrets will name for this API server."""
    c, server = facts.cluster, facts.server
    if not facts.footprint.link_source or not (c.api_server or server):
        return None
    status, hint = PASS, ""
    if c.api_server:
        text = f"other clusters use apiServer {c.api_server} (set in {c.source.name})"
    elif connection.is_loopback(server):
        status, hint = FAIL, f"set apiServer in {c.source} to an address they can reach"
        text = (f"the kubeconfig's API server {server} is a loopback address other "
                "clusters cannot reach")
    else:
        text = f"other clusters use the kubeconfig's server {server}"
    return result(facts, "api-server-address", status, text, hint=hint)


def east_west_address(facts: Facts) -> Result | None:
    c = facts.cluster
    if not facts.footprint.east_west_gateway:
        return None
    if c.east_west_address:
        return result(facts, "east-west-address", PASS,
                      f"east-west gateway address {c.east_west_address} (configured)")
    if facts.services_error:
        return result(facts, "east-west-address", WARN,
                      f"cannot list services: {facts.services_error}")
    if facts.lb_has_address:
        return result(facts, "east-west-address", PASS,
                      "a LoadBalancer Service here has been given an address before")
    return result(facts, "east-west-address", WARN,
                  "no LoadBalancer Service here has an address, so the east-west gateway "
                  "may never get one",
                  hint=f"install MetalLB (or cloud LB), or set eastWestAddress in "
                       f"{c.source} to a NodePort-reachable address")


def unique(facts: Facts, everyone: Sequence[Facts]) -> Result | None:
    """Two cluster files for one API server would join a cluster to itself."""
    if not facts.server:
        return None
    same = [f.cluster.name for f in everyone
            if f is not facts and f.server and f.server == facts.server]
    if same:
        return result(facts, "unique", FAIL,
                      f"API server {facts.server} is also {', '.join(same)}'s: one cluster "
                      "cannot join twice", hint="point each cluster file at its own cluster")
    return None


def istioctl_present(facts: Facts, istioctl: istio.Istioctl | None, error: str) -> Result:
    if istioctl is None:
        return result(facts, "istioctl", FAIL, error or "istioctl not found",
                      hint=f"install istioctl or set {istio.ENV}")
    return result(facts, "istioctl", PASS, f"istioctl {istioctl.version} ({istioctl.path})")


def local_root_fingerprint(config: Config) -> str | None:
    from meshctl.ca import certs

    path, _ = certs.root_paths(config.mesh.ca)
    try:
        return pki.fingerprint(pki.load_certs(path.read_bytes())[0])
    except (OSError, ValueError, IndexError):
        return None
