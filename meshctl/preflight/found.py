"""What preflight finds of an Istio already on a cluster, folded into small records.

Pure: API objects in, :class:`Found` / :class:`HelmRelease` / :class:`Settings` out.
``preflight.facts`` reads the objects (one LIST per kind) and hands each item here as
it arrives, so only these records are kept, never the pages.

Everything here is read from a cluster that other people write to, so it is treated
as untrusted input: Helm's release payload is decoded with a cap on its decompressed
size and any junk gives "unreadable", never an exception; values shown to the user
are cut to one short line.  The payload itself is never kept or printed: only the
chart's name and version (both checked against a strict pattern) leave this module.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshctl import ownership
from meshctl.ca import pki
from meshctl.errors import one_line

ISTIO_NS = "istio-system"
CA_SECRET = "istio-ca-secret"
RECORD = "meshctl-install"  # ownership's install record (ConfigMap in istio-system)
INJECTOR_SUFFIX = "sidecar-injector.istio.io"
HELM_TYPE = "helm.sh/release.v1"
# Helm's own labels on a release Secret; superseded and uninstalled revisions left by
# --keep-history are history, not something installed now.
HELM_SELECTOR = "owner=helm,status notin (superseded,uninstalled)"
MAX_RELEASE_BYTES = 16 * 2**20  # decompressed Helm payload; real Istio charts are < 4 MiB
MAX_CONFIG_BYTES = 256 * 1024  # a mesh config YAML or values JSON we are willing to parse
GZIP_MAGIC = b"\x1f\x8b"
ROOT_CERT_CM = "istio-ca-root-cert"  # istiod publishes the root it signs under here
ROOT_CERT_KEY = "root-cert.pem"
# what settings_from reads, and the root istiod serves (:func:`served_roots`)
CONFIG_KEYS = ("mesh", "merged-values", "values", ROOT_CERT_KEY)
SAFE_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,62}$")
# Istio's chart names (manifests/charts); the generic ones must also say "istio".
ISTIO_CHARTS = {"istiod", "istiod-remote", "ztunnel", "istio-cni", "istio-discovery",
                "istio-ingress", "istio-egress", "istio-base"}
GENERIC_CHARTS = {"base", "gateway", "gateways", "cni"}
ISTIO_RELEASE_NAME = re.compile(r"istio|ztunnel")


@dataclass(frozen=True)
class Found:
    """One Istio object: kind, where, and what istioctl's labels say about it."""

    kind: str
    namespace: str
    name: str
    revision: str = ""
    version: str = ""
    owner: str = ""  # istioctl's owning-resource label; "" when the object has none
    cluster_id: str = ""  # istiod only: its CLUSTER_ID environment variable

    def describe(self) -> str:
        """``Deployment istio-system/istiod (revision default, 1.24.2, owning resource x)``."""
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        notes = [f"revision {self.revision}" if self.revision else "",
                 self.version,
                 f"owning resource {self.owner}" if self.owner else "no owning resource"]
        return f"{self.kind} {where} ({', '.join(n for n in notes if n)})"


@dataclass(frozen=True)
class HelmRelease:
    """A Helm release of an Istio chart (from its release Secret)."""

    namespace: str
    release: str
    revision: str  # Helm's release revision (the Secret's .vN)
    status: str
    chart: str = ""  # "" when the payload could not be read
    chart_version: str = ""

    def describe(self) -> str:
        chart = (f"chart {self.chart} {self.chart_version}".rstrip() if self.chart
                 else "chart unreadable")
        notes = ", ".join(n for n in (chart, f"revision {self.revision}", self.status) if n)
        return f"Helm release {self.namespace}/{self.release} ({notes})"


@dataclass(frozen=True)
class Setting:
    """One live mesh setting and where it was read."""

    value: str
    source: str


@dataclass
class IstioFound:
    """Everything the ownership checks need from one cluster."""

    istiods: list[Found] = field(default_factory=list)
    operators: list[Found] = field(default_factory=list)
    helm: list[HelmRelease] = field(default_factory=list)
    webhooks: list[Found] = field(default_factory=list)
    record: bool = False  # istio-system/meshctl-install exists with managed-by: meshctl
    record_mesh: str = ""  # its meshctl.io/mesh label, if any
    ca_secret: bool = False  # istio-system/istio-ca-secret exists
    # ConfigMaps named istio*/values* in istio-system: only the CONFIG_KEYS of each
    configmaps: dict[str, dict[str, str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # what could not be read, by kind


# --- small helpers ------------------------------------------------------------------------


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels = _meta(obj).get("labels")
    return labels if isinstance(labels, Mapping) else {}


def shown(value: Any, limit: int = 63) -> str:
    """A value from the cluster as we show it: one line, short."""
    return one_line(str(value), limit) if value is not None else ""


def _token(value: Any) -> str:
    """A chart name or version, only if it looks like one (never arbitrary payload text)."""
    return value if isinstance(value, str) and SAFE_TOKEN.match(value) else ""


def image_tag(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1].split("@", 1)[0] if ":" in last else ""


# --- istiod, IstioOperators, webhooks -------------------------------------------------


def istiod_from(dep: Mapping[str, Any]) -> Found:
    """An istiod Deployment (label app=istiod) as a record: revision, version, owner."""
    meta, labels = _meta(dep), _labels(dep)
    spec = ((dep.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = [c for c in spec.get("containers") or [] if isinstance(c, Mapping)]
    main = next((c for c in containers if c.get("name") == "discovery"),
                containers[0] if containers else {})
    env = {e.get("name"): e.get("value") for e in main.get("env") or []
           if isinstance(e, Mapping)}
    version = labels.get("operator.istio.io/version") or image_tag(str(main.get("image", "")))
    return Found(kind="Deployment", namespace=shown(meta.get("namespace")),
                 name=shown(meta.get("name")),
                 revision=shown(labels.get("istio.io/rev") or "default"),
                 version=shown(version), owner=shown(labels.get(ownership.OWNING_RESOURCE)),
                 cluster_id=shown(env.get("CLUSTER_ID") or ""))


def operator_from(iop: Mapping[str, Any]) -> Found:
    meta = _meta(iop)
    spec = iop.get("spec") if isinstance(iop.get("spec"), Mapping) else {}
    return Found(kind="IstioOperator", namespace=shown(meta.get("namespace")),
                 name=shown(meta.get("name")),
                 revision=shown(spec.get("revision") or "default"),
                 owner=shown(_labels(iop).get(ownership.OWNING_RESOURCE)))


def is_meshctl_operator(name: str, cluster: str) -> bool:
    """meshctl's IstioOperator names, and the ``installed-state-<name>`` copies that
    istioctl before 1.24 stored in the cluster for a named IstioOperator."""
    return ownership.is_meshctl_operator(name.removeprefix("installed-state-"), cluster)


def webhook_from(mwc: Mapping[str, Any]) -> Found | None:
    """A MutatingWebhookConfiguration with a sidecar-injector webhook; else None."""
    hooks = mwc.get("webhooks") if isinstance(mwc.get("webhooks"), list) else []
    if not any(isinstance(h, Mapping) and str(h.get("name", "")).endswith(INJECTOR_SUFFIX)
               for h in hooks):
        return None
    labels = _labels(mwc)
    return Found(kind="MutatingWebhookConfiguration", namespace="",
                 name=shown(_meta(mwc).get("name")),
                 revision=shown(labels.get("istio.io/rev") or "default"),
                 version=shown(labels.get("operator.istio.io/version") or ""),
                 owner=shown(labels.get(ownership.OWNING_RESOURCE)))


# --- Helm -------------------------------------------------------------------------------


def _gunzip(data: bytes) -> bytes | None:
    """gzip data, or None when it is not gzip or decompresses past the cap."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_RELEASE_BYTES)
    except zlib.error:
        return None
    if inflater.unconsumed_tail:
        return None  # more than MAX_RELEASE_BYTES: not something we read
    return out


def release_payload(encoded: Any) -> dict | None:
    """Helm's release document from a Secret's ``data.release``, or None on any junk.

    Helm stores base64(gzip(JSON)) as the Secret's value, and the API returns Secret
    values base64-encoded again; gzip is optional (Helm checks the magic bytes).  One
    base64 layer less is accepted too.
    """
    if not isinstance(encoded, str) or len(encoded) > 4 * MAX_RELEASE_BYTES:
        return None
    try:
        data = base64.b64decode(encoded, validate=True)
        if not data.startswith(GZIP_MAGIC) and not data.lstrip().startswith(b"{"):
            data = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    if data.startswith(GZIP_MAGIC):
        unpacked = _gunzip(data)
        if unpacked is None:
            return None
        data = unpacked
    elif len(data) > MAX_RELEASE_BYTES:
        return None
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def chart_of(doc: Mapping[str, Any] | None) -> tuple[str, str, bool]:
    """(chart name, chart version, is Istio's) from a release document."""
    chart = doc.get("chart") if isinstance(doc, Mapping) else None
    meta = chart.get("metadata") if isinstance(chart, Mapping) else None
    if not isinstance(meta, Mapping):
        return "", "", False
    name, version = _token(meta.get("name")), _token(meta.get("version"))
    if name in ISTIO_CHARTS or name.startswith("istio"):
        return name, version, True
    if name in GENERIC_CHARTS:
        said = [meta.get("home"), meta.get("icon"), meta.get("description"),
                *(meta.get("sources") or []), *(meta.get("keywords") or [])]
        return name, version, any(isinstance(s, str) and "istio" in s.lower() for s in said)
    return name, version, False


def helm_from(secret: Mapping[str, Any]) -> HelmRelease | None:
    """An Istio chart's release Secret as a record; None for any other chart.

    A payload that cannot be read is reported only when the release's name says
    Istio (``istio*``, ``ztunnel``): unreadable is not the same as absent.
    """
    meta, labels = _meta(secret), _labels(secret)
    name = str(meta.get("name", ""))
    release = labels.get("name") or name.removeprefix("sh.helm.release.v1.").rsplit(".v", 1)[0]
    data = secret.get("data") if isinstance(secret.get("data"), Mapping) else {}
    chart, version, istio = chart_of(release_payload(data.get("release")))
    if not chart:
        if not ISTIO_RELEASE_NAME.search(str(release)):
            return None
    elif not istio:
        return None
    return HelmRelease(namespace=shown(meta.get("namespace")), release=shown(release),
                       revision=shown(labels.get("version") or name.rsplit(".v", 1)[-1]),
                       status=shown(labels.get("status") or ""), chart=chart,
                       chart_version=version)


# --- live mesh settings -----------------------------------------------------------------


def _parse(text: Any, loader: str) -> Mapping[str, Any]:
    if not isinstance(text, str) or len(text) > MAX_CONFIG_BYTES:
        return {}
    try:
        doc = yaml.safe_load(text) if loader == "yaml" else json.loads(text)
    except (yaml.YAMLError, ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, Mapping) else {}


def _dig(doc: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


def mesh_configmap(revision: str) -> str:
    """istioctl's mesh config ConfigMap: ``istio``, or ``istio-<rev>`` for a revision."""
    return f"istio-{revision}" if revision else "istio"


def settings_from(configmaps: Mapping[str, Mapping[str, Any]], revision: str) -> dict[str, Setting]:
    """meshID, trustDomain, network and clusterName as the live Istio has them.

    Read from the mesh config ConfigMap (``mesh``: ``defaultConfig.meshId``,
    ``trustDomain``), then the values istioctl rendered (``istio-sidecar-injector``:
    ``values``; ``values``: ``merged-values``), first found wins.
    """
    cm_name = mesh_configmap(revision)
    mesh = _parse((configmaps.get(cm_name) or {}).get("mesh"), "yaml")
    suffix = f"-{revision}" if revision else ""
    # the injector's values come from istiod's own chart; ``values`` is rewritten by every
    # istioctl install of the revision, the east-west gateway's too
    sources = [
        (f"ConfigMap {ISTIO_NS}/istio-sidecar-injector{suffix} values",
         _parse((configmaps.get(f"istio-sidecar-injector{suffix}") or {}).get("values"),
                "json")),
        (f"ConfigMap {ISTIO_NS}/values{suffix} merged-values",
         _parse((configmaps.get(f"values{suffix}") or {}).get("merged-values"), "json")),
    ]
    found: dict[str, Setting] = {}

    def put(key: str, value: Any, source: str) -> None:
        if key not in found and isinstance(value, str) and value:
            found[key] = Setting(shown(value), source)

    where = f"ConfigMap {ISTIO_NS}/{cm_name} mesh"
    put("meshID", _dig(mesh, "defaultConfig", "meshId"), f"{where} defaultConfig.meshId")
    put("trustDomain", mesh.get("trustDomain"), f"{where} trustDomain")
    for source, values in sources:
        put("meshID", _dig(values, "global", "meshID"), f"{source} global.meshID")
        put("network", _dig(values, "global", "network"), f"{source} global.network")
        put("clusterName", _dig(values, "global", "multiCluster", "clusterName"),
            f"{source} global.multiCluster.clusterName")
    return found


def served_roots(configmaps: Mapping[str, Mapping[str, Any]]) -> set[str] | None:
    """Fingerprints of the roots istiod serves (``istio-ca-root-cert`` in istio-system,
    which istiod writes from the CA it loaded at start), or None when it has written none
    or it does not parse."""
    pem = (configmaps.get(ROOT_CERT_CM) or {}).get(ROOT_CERT_KEY)
    if not isinstance(pem, str) or len(pem) > MAX_CONFIG_BYTES:
        return None
    try:
        return {pki.fingerprint(c) for c in pki.load_certs(pem.encode())}
    except ValueError:
        return None


def record_from(cm: Mapping[str, Any]) -> tuple[bool, str]:
    """(managed by meshctl, its mesh label) for the install record ConfigMap."""
    labels = _labels(cm)
    return labels.get(ownership.MANAGED_BY) == ownership.MANAGER, shown(
        labels.get(ownership.MESH) or "")
