"""The mesh's Istio revisions on one cluster, read the way Istio itself defines them.

An upgrade runs two control planes side by side, so "which Istio runs here" stops being
one Deployment's label.  Istio keeps no single record of its revisions; each fact lives
in the object Istio acts on, and this module reads exactly those, never a copy:
- a **revision** is an istiod Deployment in ``istio-system`` (label ``app=istiod``,
  revision in ``istio.io/rev``; the unrevisioned ``istiod`` carries ``default``).  A
  remote-role cluster has none: its revisions are its sidecar-injector webhooks
  (``istio-sidecar-injector-<rev>``, pointing at the primary's istiod);
- a **tag** is a MutatingWebhookConfiguration labelled ``istio.io/tag`` (``istioctl tag
  set``), whose ``istio.io/rev`` label is the revision it injects.  The ``default`` tag
  serves ``istio-injection=enabled``.  istioctl's first install creates
  ``istio-revision-tag-default`` and deactivates ``istio-sidecar-injector`` (its selectors
  become ``istio.io/deactivated: never-match``); a mesh without tag webhooks (older
  istioctl, Helm) has the injector itself serve ``istio-injection=enabled``, which is
  read from its namespaceSelector, so both shapes give the same answer;
- a **namespace's revision** is what its labels select: ``istio-injection=enabled`` →
  the default tag; ``istio.io/rev=X`` → X through the tags.  A namespace with both is
  injected by the default tag: Istio's revision webhooks require ``istio-injection`` to
  be absent.  Any other ``istio-injection`` value means not injected at all;
- **connected proxies** are asked from each revision's istiod pods, as ``istioctl
  proxy-status --revision R`` does, through an API-server port-forward
  (:mod:`meshctl.kube.istiod`, which verify uses too).  The endpoint is ``/debug/syncz``: the same
  per-proxy list that proxy-status reads over XDS (``istio.io/debug/syncz``), not
  ``/debug/connections``, which also counts istioctl's own debug clients.  Those
  clients (Istio's ``pkg/adsc``) announce ``ISTIO_VERSION`` ``65536.65536.65536`` and no
  proxy config; proxy-status drops them by the missing proxy config, which the HTTP
  answer does not show, so they are dropped here by that version.  They linger in
  istiod for about 30 s after an ``istioctl`` run through a port-forward.

Read-only: GETs and LISTs (and the port-forward's GET), nothing else.  The pure parts
(``*_from``) take the API objects as dicts, so they are tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshctl import kube
from meshctl.kube import istiod

DEFAULT = "default"
NAMESPACE = "istio-system"
REV_LABEL = "istio.io/rev"
TAG_LABEL = "istio.io/tag"
INJECTION_LABEL = "istio-injection"
VERSION_LABEL = "operator.istio.io/version"
OWNER_LABEL = "install.operator.istio.io/owning-resource"
INJECTOR = "istio-sidecar-injector"
DEACTIVATED = "istio.io/deactivated"
#: What istioctl's own XDS debug client (Istio's ``pkg/adsc``) says its version is.
ISTIOCTL_CLIENT_VERSION = "65536.65536.65536"

_DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
_WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def name(revision: str) -> str:
    """A revision's name as Istio labels it: the unrevisioned install is ``default``."""
    return revision or DEFAULT


@dataclass(frozen=True)
class ControlPlane:
    """One istiod Deployment: a revision that runs on this cluster."""

    revision: str  # "default" for the unrevisioned istiod
    deployment: str  # "istiod", "istiod-canary"
    version: str | None  # istioctl's version label, else the discovery image's tag
    ready: bool
    owner: str | None  # the IstioOperator that installed it (istioctl's label)


# --- pure: API objects in, facts out ------------------------------------------------------

def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def image_tag(image: str) -> str | None:
    """``hub/pilot:1.31.0`` → ``1.31.0``; a digest or no tag → None (no version said)."""
    if "@" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    return (last.rsplit(":", 1)[1] or None) if ":" in last else None


def control_plane_from(dep: Mapping[str, Any]) -> ControlPlane:
    """A ControlPlane from an istiod Deployment; its name decides when the label is absent."""
    meta = dep.get("metadata") or {}
    dep_name = str(meta.get("name") or "")
    labels = _labels(dep)
    revision = labels.get(REV_LABEL) or (
        dep_name.removeprefix("istiod-") if dep_name.startswith("istiod-") else DEFAULT)
    version = labels.get(VERSION_LABEL)
    if not version:
        containers = ((dep.get("spec") or {}).get("template") or {}).get("spec", {}).get(
            "containers") or []
        discovery = next((c for c in containers if c.get("name") == "discovery"),
                         containers[0] if containers else {})
        version = image_tag(str(discovery.get("image") or ""))
    status = dep.get("status") or {}
    available = any(c.get("type") == "Available" and c.get("status") == "True"
                    for c in status.get("conditions") or [])
    ready = available and int(status.get("readyReplicas") or 0) >= 1
    return ControlPlane(revision=revision, deployment=dep_name, version=version,
                        ready=ready, owner=labels.get(OWNER_LABEL))


def control_planes_from(deployments: Iterable[Mapping[str, Any]]) -> list[ControlPlane]:
    return sorted((control_plane_from(d) for d in deployments), key=lambda c: c.revision)


def _deactivated(selector: Mapping[str, Any] | None) -> bool:
    return DEACTIVATED in ((selector or {}).get("matchLabels") or {})


def _selects_injection_enabled(selector: Mapping[str, Any] | None) -> bool:
    """True when a namespaceSelector matches ``istio-injection=enabled`` namespaces."""
    selector = selector or {}
    if (selector.get("matchLabels") or {}).get(INJECTION_LABEL) == "enabled":
        return True
    return any(e.get("key") == INJECTION_LABEL and e.get("operator") == "In"
               and "enabled" in (e.get("values") or [])
               for e in selector.get("matchExpressions") or [])


def _serves_injection_enabled(webhook_config: Mapping[str, Any]) -> bool:
    return any(_selects_injection_enabled(w.get("namespaceSelector"))
               and not _deactivated(w.get("namespaceSelector"))
               for w in webhook_config.get("webhooks") or [])


def _injector_revision(webhook_config: Mapping[str, Any]) -> str | None:
    """The revision an injector config (not a tag) serves, from its label or its name."""
    wc_name = str((webhook_config.get("metadata") or {}).get("name") or "")
    if wc_name != INJECTOR and not wc_name.startswith(INJECTOR + "-"):
        return None
    return _labels(webhook_config).get(REV_LABEL) or name(
        wc_name.removeprefix(INJECTOR).removeprefix("-"))


def tags_from(webhook_configs: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """``{tag: revision}``; without a ``default`` tag webhook, an active injector that
    serves ``istio-injection=enabled`` is the default (what Istio does with it)."""
    configs = list(webhook_configs)
    tags = {_labels(w)[TAG_LABEL]: name(_labels(w).get(REV_LABEL, ""))
            for w in configs if _labels(w).get(TAG_LABEL)}
    if DEFAULT not in tags:
        serving = sorted({rev for w in configs if not _labels(w).get(TAG_LABEL)
                          and (rev := _injector_revision(w)) and _serves_injection_enabled(w)})
        if len(serving) == 1:  # two would be a broken mesh: no single default to name
            tags[DEFAULT] = serving[0]
    return dict(sorted(tags.items()))


def injector_revisions_from(webhook_configs: Iterable[Mapping[str, Any]]) -> dict[str, str | None]:
    """``{revision: version label}`` of the injector configs (not tags), deactivated or
    not: on a remote-role cluster these are the revisions, since no istiod runs there."""
    out: dict[str, str | None] = {}
    for w in webhook_configs:
        rev = None if _labels(w).get(TAG_LABEL) else _injector_revision(w)
        if rev:
            out[rev] = out.get(rev) or _labels(w).get(VERSION_LABEL)
    return dict(sorted(out.items()))


def namespaces_from(namespaces: Iterable[Mapping[str, Any]],
                    tags: Mapping[str, str]) -> dict[str, list[str]]:
    """``{revision: [namespace]}`` by Istio's selection rules (module docstring).

    A label that resolves to no tag is kept as written (``istio.io/rev=gone`` → ``gone``;
    ``istio-injection=enabled`` with no default tag → ``default``), so callers can flag
    it against the revisions that exist.
    """
    out: dict[str, list[str]] = {}
    for ns in namespaces:
        labels = _labels(ns)
        ns_name = str((ns.get("metadata") or {}).get("name") or "")
        if INJECTION_LABEL in labels:
            if labels[INJECTION_LABEL] != "enabled":
                continue  # "disabled" (or anything else) turns every webhook off
            rev = tags.get(DEFAULT, DEFAULT)
        elif labels.get(REV_LABEL):
            rev = tags.get(labels[REV_LABEL], labels[REV_LABEL])
        else:
            continue
        out.setdefault(rev, []).append(ns_name)
    return {rev: sorted(names) for rev, names in sorted(out.items())}


def proxy_count(syncz: Any) -> int:
    """Proxies in one istiod's ``/debug/syncz`` answer, without istioctl's debug clients."""
    return sum(1 for e in syncz or [] if isinstance(e, dict)
               and e.get("istio_version") != ISTIOCTL_CLIENT_VERSION)


# --- reads from a cluster -------------------------------------------------------------------

def control_planes(k: kube.Kube) -> list[ControlPlane]:
    """The istiod Deployments in ``istio-system`` (``app=istiod``), sorted by revision."""
    return control_planes_from(k.items(_DEPLOYMENTS, query={"labelSelector": "app=istiod"}))


def _webhook_configs(k: kube.Kube) -> list[dict[str, Any]]:
    return list(k.items(_WEBHOOKS))


def tags(k: kube.Kube) -> dict[str, str]:
    """Revision tag → revision (see :func:`tags_from`)."""
    return tags_from(_webhook_configs(k))


def default_revision(k: kube.Kube) -> str | None:
    """The revision the ``default`` tag points at; None when nothing serves it."""
    return tags(k).get(DEFAULT)


def injector_revisions(k: kube.Kube) -> dict[str, str | None]:
    """Revisions that have an injector webhook here, with its version label."""
    return injector_revisions_from(_webhook_configs(k))


def namespaces_by_revision(k: kube.Kube, *,
                           tag_map: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Injected namespaces per revision (``tag_map``: tags already read, to save a LIST)."""
    return namespaces_from(k.items("/api/v1/namespaces"),
                           tags(k) if tag_map is None else tag_map)


def connected_proxies(k: kube.Kube, revision: str) -> int:
    """Proxies connected to the revision's running istiod pods, summed over the pods
    (each holds only its own connections).  Raises ClusterError when a pod cannot be
    asked; 0 when no istiod pod of the revision runs."""
    total = 0
    for pod in istiod.istiod_pods(k, name(revision)):
        total += proxy_count(istiod.istiod_get(
            k, pod["metadata"]["name"], istiod.monitoring_port(pod), "/debug/syncz"))
    return total


def proxies_by_revision(k: kube.Kube) -> dict[str, int]:
    """``{revision: connected proxies}`` for every control plane on this cluster."""
    return {cp.revision: connected_proxies(k, cp.revision) for cp in control_planes(k)}


def versions_by_revision(k: kube.Kube) -> dict[str, str | None]:
    """``{revision: version}``: the control planes', else (remote-role clusters) the
    injector webhooks' version labels."""
    planes = {cp.revision: cp.version for cp in control_planes(k)}
    if planes:
        return planes
    return injector_revisions(k)
