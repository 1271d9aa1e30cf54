"""The install record read back as untrusted input: its shape, checked before use.

The record (ConfigMap ``istio-system/meshctl-install``, written by :mod:`install`) is
cluster data: whoever may edit a ConfigMap in ``istio-system`` may edit it.  teardown
acts on it with the operator's rights (``istioctl uninstall``, label restores, CRD and
namespace deletes) and bootstrap carries it forward, so :func:`problem` checks that it
holds exactly what meshctl writes, for this mesh and this cluster, before anything acts
on it:

- only the keys meshctl writes, each value in the shape meshctl writes it;
- ``mesh`` equals mesh.yaml's meshID (and the ConfigMap's ``meshctl.io/mesh`` label, if
  any, agrees): a teardown run with another mesh's files must not uninstall this one;
- ``foreign-namespace-fields`` names only the label and annotation meshctl sets on an
  ``istio-system`` it found (:data:`RESTORABLE`), with previous values those keys can
  hold; the manager a record names is never used (restores write as meshctl);
- ``injection-namespaces`` names namespaces (DNS-1123 labels), each with exactly its uid,
  whether meshctl created it, and the previous values of only the two injection labels
  (:data:`INJECTION_LABELS`), each a label value or null;
- ``operator.<key>`` is an IstioOperator with meshctl's name for this cluster, its
  SHA-256 recorded beside it.  Even so the text is never handed to istioctl: teardown
  renders its own (``istioctl uninstall -f`` prunes by the file's name and namespace,
  and reads charts from a path the file may name).

A record that fails is refused whole, one line naming the cluster and the key (values
are cut short, never echoed whole): acting on the parts that look right would still
trust a record someone else wrote.  Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from meshctl import names, ownership
from meshctl.mesh import upgrade_record

WHAT = "install record istio-system/meshctl-install"
MESH = "mesh"
VERSION = "istioctl-version"
NAMESPACE = "namespace"  # {"created": bool, "uid": str}
FOREIGN_FIELDS = "foreign-namespace-fields"  # {"labels": {k: {"previous", "manager"}}, …}
INJECTION = "injection-namespaces"  # {ns: {"uid", "created", "previous": {label: v}}}
CRDS = "crds"  # "installed": meshctl's first install created Istio's CRDs; "existing"
OPERATOR_PREFIX = "operator."  # operator.<key>: the IstioOperator text that was installed
CONTROL_PLANE = "istio-operator.yaml"
EASTWEST = "eastwest-gateway.yaml"
COMPONENTS = (CONTROL_PLANE, EASTWEST)  # record keys holding a hash, in install order
NETWORK_LABEL = "topology.istio.io/network"
CONTROL_PLANE_ANNOTATION = "topology.istio.io/controlPlaneClusters"
# what meshctl sets on an istio-system it did not create: (section, key)
RESTORABLE = frozenset({("labels", NETWORK_LABEL), ("annotations", CONTROL_PLANE_ANNOTATION)})
# the labels meshctl puts on (and restores on) the cluster file's injectNamespaces
INJECTION_LABELS = ("istio-injection", "istio.io/rev")
IOP_API_VERSION = "install.istio.io/v1alpha1"
MAX_OPERATOR = 256 * 1024  # an IstioOperator meshctl renders is a few KiB
SHA256 = re.compile(r"^[0-9a-f]{64}$")
VERSION_TEXT = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_~-]{0,127}$")
UID = re.compile(r"^[0-9A-Za-z-]{1,64}$")
MANAGER_NAME = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,127}$")  # printable ASCII, one line
CLUSTER_LIST = re.compile(r"^[A-Za-z0-9._-]{1,63}(,[A-Za-z0-9._-]{1,63}){0,31}$")


@dataclass(frozen=True)
class Field:
    """A label or annotation meshctl set on a namespace it found, and its value before."""

    section: str  # "labels" | "annotations"
    key: str
    previous: str | None  # None: the key was not set


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def operator_name(cluster: str, key: str, revision: str = "") -> str:
    """The IstioOperator name meshctl gives component ``key`` on ``cluster``."""
    return operator_names(cluster, key, revision)[0]


def operator_names(cluster: str, key: str, revision: str = "") -> tuple[str, ...]:
    """The names component ``key`` at ``revision`` may have: the gateway one name for
    every revision (it is upgraded in place); a revision's control plane its own name,
    or (installed before names carried the revision) ``meshctl-<cluster>``."""
    if key == EASTWEST:
        return (ownership.operator_names(cluster)[1],)
    named = ownership.control_plane_operator(cluster, revision)
    legacy = ownership.control_plane_operator(cluster)
    if key == upgrade_record.TARGET:
        return (named,)
    return (named,) if named == legacy else (named, legacy)


def _label_value(value: str) -> bool:
    """A Kubernetes label value, whole (``fullmatch``: a trailing newline is not one)."""
    return bool(names.LABEL_VALUE.fullmatch(value))


def _json(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return None


def _valid_previous(section: str, value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    if section == "labels":
        return value == "" or _label_value(value)
    return bool(CLUSTER_LIST.fullmatch(value))


def _foreign_fields_problem(value: str) -> str | None:
    doc = _json(value)
    if not isinstance(doc, dict):
        return "is not a JSON object"
    for section, keys in doc.items():
        if section not in ("labels", "annotations") or not isinstance(keys, dict):
            return f"has section {names.shown(str(section), 30)}, not labels/annotations"
        for key, was in keys.items():
            if (section, key) not in RESTORABLE:
                return (f"names {section[:-1]} {names.shown(str(key), 60)}, which meshctl "
                        "never sets")
            if not isinstance(was, dict) or set(was) != {"previous", "manager"}:
                return f"{section[:-1]} {key}: not {{previous, manager}}"
            if not _valid_previous(section, was["previous"]):
                return f"{section[:-1]} {key}: previous value is not one {key} can hold"
            manager = was["manager"]
            if manager is not None and not (isinstance(manager, str)
                                            and MANAGER_NAME.fullmatch(manager)):
                return f"{section[:-1]} {key}: manager is not a field manager name"
    return None


def _namespace_problem(value: str) -> str | None:
    doc = _json(value)
    if not isinstance(doc, dict) or set(doc) != {"created", "uid"}:
        return "is not a JSON object of created and uid"
    if not isinstance(doc["created"], bool):
        return "created is not true or false"
    if not isinstance(doc["uid"], str) or not UID.fullmatch(doc["uid"]):
        return "uid is not a Kubernetes uid"
    return None


def _injection_problem(value: str) -> str | None:
    doc = _json(value)
    if not isinstance(doc, dict):
        return "is not a JSON object"
    for ns, entry in doc.items():
        if not names.dns_label(ns):
            return "names something that is not a namespace name (a DNS-1123 label)"
        if not isinstance(entry, dict) or set(entry) != {"uid", "created", "previous"}:
            return f"{ns}: not {{uid, created, previous}}"
        if not isinstance(entry["uid"], str) or not UID.fullmatch(entry["uid"]):
            return f"{ns}: uid is not a Kubernetes uid"
        if not isinstance(entry["created"], bool):
            return f"{ns}: created is not true or false"
        previous = entry["previous"]
        if not isinstance(previous, dict) or set(previous) != set(INJECTION_LABELS):
            return f"{ns}: previous does not hold exactly {', '.join(INJECTION_LABELS)}"
        for key, was in previous.items():
            if not _valid_previous("labels", was):
                return f"{ns}: previous {key} is not a label value"
    return None


def _operator_problem(text: str, key: str, data: Mapping[str, str], cluster: str) -> str | None:
    if len(text) > MAX_OPERATOR:
        return f"is over {MAX_OPERATOR // 1024} KiB"
    recorded_hash = data.get(key)
    if recorded_hash is None:
        return f"has no hash recorded beside it (key {key!r})"
    if digest(text) != recorded_hash:
        return f"does not match its recorded hash (key {key!r})"
    try:
        docs = list(yaml.safe_load_all(text))
    except (yaml.YAMLError, RecursionError):
        return "is not YAML"
    doc = docs[0] if len(docs) == 1 else None
    if not isinstance(doc, dict):
        return "is not one YAML document"
    meta = doc.get("metadata")
    if doc.get("apiVersion") != IOP_API_VERSION or doc.get("kind") != "IstioOperator" \
            or not isinstance(meta, dict):
        return "is not an IstioOperator"
    spec = doc.get("spec")
    revision = spec.get("revision", "") if isinstance(spec, dict) else ""
    if not isinstance(revision, str) or (revision and not names.dns_label(
            revision, longest=names.REVISION_MAX)):
        return "names a revision that is not a DNS label"
    wants = operator_names(cluster, key, revision)
    if meta.get("name") not in wants or meta.get("namespace", "istio-system") != \
            "istio-system" or set(meta) - {"name", "namespace"}:
        return f"is not meshctl's IstioOperator istio-system/{wants[0]}"
    return None


def _value_problem(key: str, value: str, data: Mapping[str, str], *, cluster: str,
                   mesh_id: str) -> str | None:
    """Why one key's value is not what meshctl writes there (None: it is)."""
    if key == MESH:
        if not _label_value(value):
            return "is not a meshID"
        if value != mesh_id:
            return f"meshctl installed it for mesh {value!r}, not {mesh_id!r}"
        return None
    if key == VERSION:
        return None if VERSION_TEXT.fullmatch(value) else "is not an istioctl version"
    if key == NAMESPACE:
        return _namespace_problem(value)
    if key == FOREIGN_FIELDS:
        return _foreign_fields_problem(value)
    if key == INJECTION:
        return _injection_problem(value)
    if key == CRDS:
        return None if value in ("installed", "existing") else "is not installed or existing"
    if key == upgrade_record.KEY:
        return upgrade_record.problem(value)
    if key in COMPONENTS or key == upgrade_record.TARGET:
        return None if SHA256.fullmatch(value) else "is not a SHA-256"
    if key.startswith(OPERATOR_PREFIX) and key.removeprefix(OPERATOR_PREFIX) in (
            *COMPONENTS, upgrade_record.TARGET):
        return _operator_problem(value, key.removeprefix(OPERATOR_PREFIX), data, cluster)
    return "is not a key meshctl writes"


def problem(cm: Mapping[str, Any] | None, *, cluster: str, mesh_id: str) -> str | None:
    """Why ``cm`` (meshctl's install record, as read) must not be acted on; None when it
    is what meshctl writes for ``mesh_id`` on ``cluster`` (or there is no record)."""
    if cm is None or not ownership.is_managed(cm):
        return None  # no record (one without meshctl's label is not meshctl's)
    where = f"{cluster}: {WHAT}"
    data = cm.get("data") or {}
    if cm.get("binaryData") or not isinstance(data, dict) \
            or not all(isinstance(v, str) for v in data.values()):
        return f"{where}: holds data meshctl never writes (binary or not text)"
    if MESH not in data:
        return f"{where}: key 'mesh' is missing"
    label = ((cm.get("metadata") or {}).get("labels") or {}).get(ownership.MESH)
    # the mesh first (the likeliest cause), an operator's text after its hash
    for key in sorted(data, key=lambda k: (k != MESH, k.startswith(OPERATOR_PREFIX), k)):
        why = _value_problem(str(key), data[key], data, cluster=cluster, mesh_id=mesh_id)
        if why is not None:
            if key == MESH and why.startswith("meshctl installed"):
                return f"{cluster}: {why}"
            return f"{where}: key {names.shown(str(key), 60)} {why}"
        if key == MESH and label is not None and label != data[MESH]:
            return f"{where}: its {ownership.MESH} label and its key 'mesh' disagree"
    return None


def namespace(data: Mapping[str, str]) -> dict[str, Any] | None:
    """The recorded ``{"created", "uid"}`` of ``istio-system`` (a checked record)."""
    doc = _json(data.get(NAMESPACE) or "null")
    return doc if isinstance(doc, dict) and _namespace_problem(data[NAMESPACE]) is None \
        else None


def foreign_fields(data: Mapping[str, str]) -> list[Field]:
    """What to put back on a namespace meshctl found: only :data:`RESTORABLE` keys with
    values they can hold (a record that says more is refused by :func:`problem`)."""
    value = data.get(FOREIGN_FIELDS)
    if not value or _foreign_fields_problem(value) is not None:
        return []
    doc = _json(value)
    return [Field(section, key, was["previous"])
            for section, keys in sorted(doc.items()) for key, was in sorted(keys.items())]


def injection_namespaces(data: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The recorded injection namespaces (``{ns: {"uid", "created", "previous"}}``) of a
    checked record; empty when there are none or the entry is not what meshctl writes
    (a record that says more is refused by :func:`problem`, never half-used)."""
    value = data.get(INJECTION)
    if not value or _injection_problem(value) is not None:
        return {}
    return dict(_json(value))
