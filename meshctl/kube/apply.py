"""Writes: server-side apply with ``fieldManager=meshctl``, compare-first, owned deletes.

:func:`ensure` reads first and applies only when the live object differs or holds a
field meshctl no longer sets, so a re-run of bootstrap sends no mutating request.  A
field another manager owns is a :class:`FieldConflict` naming the field and the manager
(exit 1) unless forced; an object without meshctl's label (or with another mesh's) is
:class:`NotOwned` and never adopted silently; :func:`delete` removes only what carries
meshctl's label (and the mesh's, when the object meshctl renders has one), with a uid
precondition so a re-created object of the same name is not touched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from meshctl import ownership
from meshctl.errors import CheckFailed
from meshctl.kube.client import Conflict, Kube, NotFound
from meshctl.ownership import FIELD_MANAGER

# --- paths and objects ---------------------------------------------------------------

# kind -> (plural, namespaced); apiVersion comes from the object itself.
KINDS: dict[str, tuple[str, bool]] = {
    "Namespace": ("namespaces", False),
    "Secret": ("secrets", True),
    "ConfigMap": ("configmaps", True),
    "Service": ("services", True),
    "ServiceAccount": ("serviceaccounts", True),
    "Pod": ("pods", True),
    "Deployment": ("deployments", True),
    "ClusterRole": ("clusterroles", False),
    "ClusterRoleBinding": ("clusterrolebindings", False),
    "Role": ("roles", True),
    "RoleBinding": ("rolebindings", True),
    "Gateway": ("gateways", True),
    "VirtualService": ("virtualservices", True),
    "DestinationRule": ("destinationrules", True),
    "CustomResourceDefinition": ("customresourcedefinitions", False),
    "MutatingWebhookConfiguration": ("mutatingwebhookconfigurations", False),
    "ValidatingWebhookConfiguration": ("validatingwebhookconfigurations", False),
}


def collection_path(api_version: str, kind: str, namespace: str | None = None) -> str:
    """``/api/v1/namespaces/ns/secrets`` and friends."""
    plural, namespaced = KINDS[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespaced and namespace:
        return f"{base}/namespaces/{quote(namespace)}/{plural}"
    return f"{base}/{plural}"


def object_path(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return (collection_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
            + "/" + quote(meta["name"]))


def describe(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj['kind']} {ns}{meta['name']}"


def contains(live: Any, desired: Any) -> bool:
    """True when every field of ``desired`` is in ``live`` with the same value.

    Mappings are compared key by key (extra live keys, such as defaults the API
    server adds, are fine); lists and scalars must be equal.
    """
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and contains(live[k], v) for k, v in desired.items())
    return live == desired


UNREAD: Any = object()  # ``ensure(live=...)`` default: the caller has not read it


class FieldConflict(CheckFailed):
    """Server-side apply refused: another field manager owns a field meshctl would set."""


class NotOwned(CheckFailed):
    """The object exists and was not made by meshctl: meshctl leaves it as it is."""


def _field_paths(fields: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple]:
    """Leaf paths of a ``fieldsV1`` set, stopping at list entries (``k:``/``v:``/``i:``).

    A list is compared as a whole by :func:`contains`, so here it is one leaf.
    """
    out: set[tuple] = set()
    for key, sub in fields.items():
        if key == ".":
            continue
        if not key.startswith("f:"):
            out.add(prefix)  # an entry of a list: the list is the leaf
            continue
        path = (*prefix, key[2:])
        out |= _field_paths(sub, path) if sub else {path}
    return out


def _object_paths(obj: Any, prefix: tuple[str, ...] = ()) -> set[tuple]:
    """Leaf paths of a desired object, in the shape of :func:`_field_paths`."""
    if not isinstance(obj, Mapping) or not obj:
        return {prefix}
    out: set[tuple] = set()
    for key, sub in obj.items():
        out |= _object_paths(sub, (*prefix, key))
    return out


def applied_fields(live: Mapping[str, Any], manager: str = FIELD_MANAGER) -> set[tuple] | None:
    """The fields ``manager`` owns through server-side apply, or ``None`` if it owns none."""
    entries = [m for m in (live.get("metadata") or {}).get("managedFields") or []
               if m.get("manager") == manager and m.get("operation") == "Apply"]
    if not entries:
        return None
    return set().union(*(_field_paths(m.get("fieldsV1") or {}) for m in entries))


def in_sync(live: Mapping[str, Any] | None, obj: Mapping[str, Any]) -> bool:
    """True when applying ``obj`` would change nothing: every field is there with our
    value, meshctl already owns it through apply, and owns no field ``obj`` dropped."""
    if live is None:
        return False
    desired = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    if not contains(live, desired):
        return False
    owned = applied_fields(live)
    if owned is None:
        return False
    wanted = _object_paths(desired)
    # every owned leaf must still be wanted, or lie under a wanted list
    return all(any(path[:len(w)] == w for w in wanted) for path in owned)


# "conflict with "kubectl" using v1: .metadata.labels.a" or, for several fields,
# "conflicts with "helm" using v1: - .metadata.labels.a - .spec.b" (whitespace folded)
_CONFLICT = re.compile(r'conflicts? with "(?P<manager>[^"]+)"(?: using [\w./]+)?:'
                       r'(?P<fields>(?:\s*-?\s*\.\S+)+)')


def conflicts(reason: str) -> list[tuple[str, str]]:
    """(manager, field) pairs from an apply's 409 message."""
    return [(m["manager"], field.rstrip(","))
            for m in _CONFLICT.finditer(reason)
            for field in m["fields"].replace(" - ", " ").split() if field.startswith(".")]


def apply(kube: Kube, obj: Mapping[str, Any], *, force: bool = False) -> str:
    """Server-side apply ``obj`` as ``fieldManager=meshctl``; no read, always one write.

    A field another manager owns is a :class:`FieldConflict` naming the field and the
    manager, unless ``force``, which takes it over and says so in the returned text.
    """
    path, what = object_path(obj), describe(obj)
    query = {"fieldManager": FIELD_MANAGER}
    try:
        kube.request("PATCH", path, body=dict(obj), query=query,
                     content_type="application/apply-patch+yaml", what=f"apply {what}")
        return "applied"
    except Conflict as e:
        found = conflicts(e.reason)
        if not found:
            raise
        named = ", ".join(f"{field} (owned by {manager})" for manager, field in found)
        if not force:
            raise FieldConflict(f"{kube.cluster}: {what}: {named}",
                                hint="another tool manages this field; change it there, or "
                                     "re-run with --force to take it over") from None
        kube.request("PATCH", path, body=dict(obj), query={**query, "force": "true"},
                     content_type="application/apply-patch+yaml", what=f"apply {what}")
        return f"took over {named}"


def not_ours(live: Mapping[str, Any] | None, obj: Mapping[str, Any]) -> bool:
    """True when ``obj`` would be meshctl's (its labels say so) but the live object of that
    name is not: made by someone else, or by meshctl for another mesh."""
    return live is not None and ownership.is_managed(obj) and not ownership.is_managed(
        live, ownership.mesh_of(obj))


def not_ours_message(kube_cluster: str, live: Mapping[str, Any], obj: Mapping[str, Any]) -> str:
    whose = (f"was made by meshctl for mesh {ownership.mesh_of(live)!r}"
             if ownership.is_managed(live) else "was not made by meshctl")
    return f"{kube_cluster}: {describe(obj)} exists and {whose}; left as it is"


def ensure(kube: Kube, obj: Mapping[str, Any], *, live: Any = UNREAD,
           force: bool = False) -> str:
    """Bring ``obj`` about by server-side apply; returns created/updated/unchanged.

    Reads first and compares (:func:`in_sync`), so a converged cluster sees GETs only.
    An object ``obj`` marks as meshctl's that exists without meshctl's label (or with
    another mesh's) belongs to someone else: :class:`NotOwned`, unless ``force`` (which
    takes over conflicting fields and, with ``obj``'s labels, the object: a caller that
    deletes by label passes ``ownership.without_ownership(obj)`` instead, as bootstrap
    does).  A caller that has just read the object passes it as ``live`` (``None``:
    absent) so it is not read twice.
    """
    path, what = object_path(obj), describe(obj)
    if live is UNREAD:
        live = kube.get(path, what=f"read {what}")
    if not_ours(live, obj) and not force:
        raise NotOwned(not_ours_message(kube.cluster, live, obj),
                       hint="remove or rename it, or re-run with --force to take it over")
    if in_sync(live, obj):
        return "unchanged"
    result = apply(kube, obj, force=force)
    verb = "created" if live is None else "updated"
    return verb if result == "applied" else f"{verb}; {result}"


def _value_at(obj: Any, path: tuple) -> Any:
    for key in path:
        if not isinstance(obj, Mapping) or key not in obj:
            return None
        obj = obj[key]
    return obj


def predicted_conflicts(live: Mapping[str, Any], obj: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(manager, field) pairs an apply of ``obj`` over ``live`` would be refused on: a
    field ``obj`` sets to another value that another manager owns (from ``managedFields``,
    as the API server decides).  Read before any write, so that bootstrap can refuse
    with nothing changed instead of after istioctl has run."""
    desired = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    wanted = [p for p in _object_paths(desired) if _value_at(live, p) != _value_at(desired, p)]
    found = []
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply":
            continue
        owned = _field_paths(entry.get("fieldsV1") or {})
        for path in wanted:
            if any(o[:len(path)] == path or path[:len(o)] == o for o in owned if o):
                found.append((str(entry.get("manager")), "." + ".".join(map(str, path))))
    return sorted(set(found))


def delete(kube: Kube, obj: Mapping[str, Any], *, only_managed: bool = True) -> bool:
    """Delete ``obj`` if it exists and (unless told otherwise) meshctl made it.

    True when something was deleted.  An object without meshctl's label, or with another
    mesh's, is left alone: every delete asks "did meshctl make this, for this mesh?".
    """
    path = object_path(obj)
    live = kube.get(path, what=f"read {describe(obj)}")
    if live is None or (only_managed and not ownership.is_managed(
            live, ownership.mesh_of(obj))):
        return False
    try:
        kube.request("DELETE", path, what=f"delete {describe(obj)}",
                     body={"apiVersion": "v1", "kind": "DeleteOptions",
                           "preconditions": {"uid": live["metadata"]["uid"]}})
    except NotFound:
        return False
    return True
