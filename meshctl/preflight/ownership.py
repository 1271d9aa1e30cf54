"""Preflight's ownership checks: is an Istio here that meshctl did not install?

meshctl does not adopt an Istio it did not install: pushing ``cacerts`` into a live
mesh changes the CA under running workloads (mTLS between them breaks at their next
certificate renewal), and ``teardown`` must never remove another team's Istio.  So
each sign of someone else's Istio is a FAIL, naming what was found:

- ``istio``: an istiod Deployment (any namespace, any revision) that istioctl did not
  render from one of meshctl's IstioOperators, or on a cluster without meshctl's
  install record;
- ``istio-helm``: a Helm release of an Istio chart (meshctl never uses Helm);
- ``istio-operator``: an IstioOperator resource not named as meshctl's;
- ``istio-ca``: ``istio-system/istio-ca-secret``, istiod's self-signed CA, in use (also
  when ``cacerts`` came after istiod started: istiod has not loaded it until restarted);
- ``injector-webhook``: a sidecar-injector webhook that is not meshctl's;
- ``mesh-config``: on a cluster meshctl did install, a live meshID, trustDomain,
  clusterName or network that differs from the cluster files (drift).

"meshctl's" is :mod:`meshctl.ownership`'s answer: istioctl's owning-resource label
names one of meshctl's IstioOperators for this cluster AND the install record
``istio-system/meshctl-install`` carries ``managed-by: meshctl``.  A read that failed
is a FAIL too: not knowing is no reason to write.  Pure: facts in, results out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from meshctl import ownership
from meshctl.ca import pki
from meshctl.config import Mesh
from meshctl.preflight.checks import FAIL, PASS, WARN, Result, result
from meshctl.preflight.found import (
    ISTIO_NS,
    ROOT_CERT_CM,
    Found,
    is_meshctl_operator,
    served_roots,
    settings_from,
)

if TYPE_CHECKING:
    from meshctl.preflight.facts import Facts

CHECKS = ("istio", "istio-helm", "istio-operator", "istio-ca", "injector-webhook",
          "mesh-config")
HINT = ("meshctl does not adopt an existing Istio: remove it, or join this cluster by hand; "
        "see the README 'Clusters that already run Istio'")
READ_HINT = ("to tell whose Istio this is the context needs to list deployments, secrets, "
             "configmaps, istiooperators and mutatingwebhookconfigurations")
SHOWN = 3  # findings named in one message; --json has them all


TAG_PREFIX = "istio-revision-tag-"


def mine(facts: Facts, obj: Found) -> bool:
    """Rendered by istioctl from one of meshctl's IstioOperators, on a recorded cluster;
    or a revision tag (``istioctl tag set``, which ``upgrade --finish`` runs: no operator
    owns it) that points at a revision whose injector is one of meshctl's here."""
    if not facts.istio_found.record:
        return False
    name = facts.cluster.name
    if ownership.is_meshctl_operator(obj.owner, name):
        return True
    return (not obj.owner and obj.kind == "MutatingWebhookConfiguration"
            and obj.name.startswith(TAG_PREFIX)
            and any(o.revision == obj.revision and ownership.is_meshctl_operator(o.owner, name)
                    for o in facts.istio_found.webhooks))


def _listed(items: Sequence[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return "; ".join(items[:SHOWN]) + more


def _unread(facts: Facts, check: str, *reads: str) -> Result | None:
    errors = [facts.istio_found.errors[r] for r in reads if r in facts.istio_found.errors]
    if not errors:
        return None
    return result(facts, check, FAIL, f"cannot tell whether an Istio meshctl did not "
                  f"install is here: {errors[0]}", hint=READ_HINT)


def _foreign(facts: Facts, check: str, what: str, items: list[str], note: str = "") -> Result:
    return result(facts, check, FAIL, f"{what} meshctl did not install: {_listed(items)}"
                  f"{note}", hint=HINT, limit=1000, found=items)


def _no_record_note(facts: Facts, objs: Sequence[Found]) -> str:
    """Why a meshctl-named object still does not count as meshctl's."""
    named = any(ownership.is_meshctl_operator(o.owner, facts.cluster.name) for o in objs)
    return (f" (named for meshctl, but there is no {ownership.MANAGED_BY}={ownership.MANAGER}"
            " install record istio-system/meshctl-install)"
            if named and not facts.istio_found.record else "")


def _not_all_mine(facts: Facts, check: str, what: str, objs: Sequence[Found],
                  *reads: str) -> Result | None:
    """FAIL when a read failed or any of ``objs`` is not meshctl's; else None."""
    failed = _unread(facts, check, *reads)
    if failed:
        return failed
    theirs = [o for o in objs if not mine(facts, o)]
    if theirs:
        return _foreign(facts, check, what, [o.describe() for o in theirs],
                        _no_record_note(facts, theirs))
    return None


def istiod(facts: Facts) -> Result:
    """``istio``: every istiod Deployment must be meshctl's."""
    refused = _not_all_mine(facts, "istio", "istiod", facts.istio_found.istiods,
                            "istiod", "configmaps")
    if refused:
        return refused
    ours = facts.istio_found.istiods
    text = (f"istiod installed by meshctl: {_listed([d.describe() for d in ours])}" if ours
            else "no istiod installed")
    return result(facts, "istio", PASS, text, limit=1000, istiod=len(ours))


def helm(facts: Facts) -> Result:
    """``istio-helm``: meshctl never installs with Helm, so any Istio release is foreign."""
    failed = _unread(facts, "istio-helm", "helm")
    if failed:
        return failed
    releases = [r.describe() for r in facts.istio_found.helm]
    if releases:
        return result(facts, "istio-helm", FAIL, "Istio installed with Helm (meshctl does "
                      f"not install with Helm): {_listed(releases)}", hint=HINT, limit=1000,
                      found=releases)
    return result(facts, "istio-helm", PASS, "no Helm release of an Istio chart")


def operators(facts: Facts) -> Result:
    """``istio-operator``: IstioOperator resources must carry meshctl's names."""
    failed = _unread(facts, "istio-operator", "operators")
    if failed:
        return failed
    theirs = [o.describe() for o in facts.istio_found.operators
              if not is_meshctl_operator(o.name, facts.cluster.name)]
    if theirs:
        return _foreign(facts, "istio-operator", "IstioOperator resource(s)", theirs)
    return result(facts, "istio-operator", PASS, "no IstioOperator resource of anyone else")


def ca_secret(facts: Facts) -> Result:
    """``istio-ca``: istiod signing with its own self-signed root is someone's live mesh.

    istiod writes ``istio-ca-secret`` only when it started without ``cacerts``, and it
    reads ``cacerts`` only when it starts: one pushed later waits for a restart.  So on a
    cluster meshctl installed, the old secret is a leftover only once istiod serves the
    root of ``cacerts`` (``istio-ca-root-cert``); until then the self-signed CA still
    signs every workload certificate (FAIL), and with no root published yet there is no
    telling (WARN).
    """
    failed = _unread(facts, "istio-ca", "ca-secret", "configmaps")
    if failed:
        return failed
    got = facts.istio_found
    if not got.ca_secret:
        return result(facts, "istio-ca", PASS, "no self-signed Istio CA (istio-ca-secret)")
    where = "istio-system/istio-ca-secret"
    restart = (f"restart istiod so it loads cacerts (kubectl -n {ISTIO_NS} rollout restart "
               f"deployment/{{istiod}}), then delete istio-ca-secret")
    if got.record and facts.cacerts_present:
        served = served_roots(got.configmaps)
        ours = {pki.fingerprint(r) for r in facts.cacerts.roots} if facts.cacerts else set()
        hint = restart.format(istiod=_istiod_name(facts))
        if served and ours & served:
            return result(facts, "istio-ca", PASS, f"{where} is a leftover: istiod serves "
                          f"the root of istio-system/cacerts ({ROOT_CERT_CM})")
        if served is None or not ours:
            return result(facts, "istio-ca", WARN, f"{where} exists beside istio-system/"
                          f"cacerts, and there is no telling which one istiod signs with "
                          f"(no readable {ROOT_CERT_CM} or cacerts)", hint=hint,
                          found=[f"Secret {where}"])
        return result(facts, "istio-ca", FAIL, f"istiod has not loaded istio-system/cacerts: "
                      f"it serves another root ({ROOT_CERT_CM}) and still signs with its "
                      f"self-signed CA ({where})", hint=hint, found=[f"Secret {where}"])
    why = ("an Istio meshctl did not install signs workload certificates with it"
           if not got.record else "istiod started before cacerts existed")
    return result(facts, "istio-ca", FAIL, f"self-signed Istio CA in use ({where}): {why}",
                  hint=HINT if not got.record else
                  "push cacerts (certs.issue), restart istiod, then delete istio-ca-secret",
                  found=[f"Secret {where}"])


def _istiod_name(facts: Facts) -> str:
    ours = [d.name for d in facts.istio_found.istiods if mine(facts, d)]
    return ours[0] if ours else "istiod"


def webhooks(facts: Facts) -> Result:
    """``injector-webhook``: sidecar-injector webhooks must be meshctl's."""
    refused = _not_all_mine(facts, "injector-webhook", "sidecar-injector webhook(s)",
                            facts.istio_found.webhooks, "webhooks", "configmaps")
    if refused:
        return refused
    return result(facts, "injector-webhook", PASS, "no sidecar-injector webhook of anyone "
                  "else")


def drift(facts: Facts, mesh: Mesh) -> Result | None:
    """``mesh-config``: the live settings of meshctl's own install against the files.

    Only on a cluster with meshctl's install record; elsewhere there is nothing of
    meshctl's to compare (the checks above say whose Istio it is).
    """
    got = facts.istio_found
    if not got.record:
        return None
    cluster = facts.cluster
    settings = settings_from(got.configmaps, mesh.istio.revision)
    live: list[tuple[str, str, str, str]] = []  # key, live value, where, planned
    if got.record_mesh:
        live.append(("meshID", got.record_mesh, f"install record label {ownership.MESH}",
                     mesh.mesh_id))
    ours = [d for d in got.istiods if mine(facts, d) and d.cluster_id]
    if ours:
        live.append(("clusterName", ours[0].cluster_id,
                     f"Deployment {ours[0].namespace}/{ours[0].name} env CLUSTER_ID",
                     cluster.name))
    planned = {"meshID": mesh.mesh_id, "trustDomain": mesh.trust_domain,
               "network": cluster.network, "clusterName": cluster.name}
    for key, want in planned.items():
        if key in settings and not (key == "clusterName" and ours):
            live.append((key, settings[key].value, settings[key].source, want))
    differ = [f"{key} is {value!r} in {where}, the plan says {want!r}"
              for key, value, where, want in live if value != want]
    if differ:
        return result(facts, "mesh-config", FAIL, "meshctl's Istio here has drifted: "
                      + "; ".join(differ), limit=1500,
                      hint="put the cluster files back as installed, or tear down and "
                           "bootstrap again: meshID, trustDomain, clusterName and network "
                           "of a live mesh do not change in place", drift=differ)
    checked = sorted({key for key, *_ in live})
    return result(facts, "mesh-config", PASS,
                  f"live {', '.join(checked)} match the plan" if checked
                  else "no live mesh settings to compare yet", checked=checked)


def checks(facts: Facts, mesh: Mesh) -> list[Result]:
    """Every ownership check of one reachable cluster, in CHECKS order."""
    out = [istiod(facts), helm(facts), operators(facts), ca_secret(facts), webhooks(facts),
           drift(facts, mesh)]
    return [r for r in out if r is not None]
