"""What meshctl owns on a cluster, and how it knows: labels, the install record, istioctl's
owning-resource label.

Clusters are shared.  meshctl may change or delete only what it made, so "did meshctl
make this?" must have one answer, asked in one place:

- Objects meshctl creates carry ``app.kubernetes.io/managed-by: meshctl`` and
  ``meshctl.io/mesh: <meshID>``.  An object that existed before meshctl never gets them.
- Istio itself is installed by istioctl, which labels what it renders with
  ``install.operator.istio.io/owning-resource: <IstioOperator name>``.  meshctl names its
  IstioOperators ``meshctl-<cluster>`` and ``meshctl-eastwest-<cluster>``; an istiod,
  gateway or webhook with another owning resource (or none) was installed by someone else.
- The install record (ConfigMap ``istio-system/meshctl-install``) says what meshctl did on
  the cluster that labels alone cannot: whether it created ``istio-system`` (its uid), the
  labels it set on namespaces it does not own and their previous values, the istioctl
  version and the hash of each IstioOperator it installed.

Pure: no I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "meshctl"
MESH = "meshctl.io/mesh"
OWNING_RESOURCE = "install.operator.istio.io/owning-resource"
FIELD_MANAGER = "meshctl"
# teardown's merge patches that put a found namespace's label back: a fixed name of
# meshctl's own (never one read from the cluster or the install record), apart from
# FIELD_MANAGER so that a later apply's conflict says the value came from a restore
RESTORE_FIELD_MANAGER = "meshctl-restore"
# an Istio revision: a DNS label short enough for istiod-<revision>
_REVISION = re.compile(r"[a-z0-9]([-a-z0-9]{0,53}[a-z0-9])?")


def labels(mesh_id: str) -> dict[str, str]:
    """The labels every object meshctl creates carries."""
    return {MANAGED_BY: MANAGER, MESH: mesh_id}


def _labels(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    return ((obj or {}).get("metadata") or {}).get("labels") or {}


def is_managed(obj: Mapping[str, Any] | None, mesh_id: str | None = None) -> bool:
    """True when ``obj`` carries meshctl's managed-by label (and, if given, this mesh's)."""
    found = _labels(obj)
    if found.get(MANAGED_BY) != MANAGER:
        return False
    return mesh_id is None or found.get(MESH) in (None, mesh_id)


def mesh_of(obj: Mapping[str, Any] | None) -> str | None:
    """The mesh an object meshctl renders is for (its ``meshctl.io/mesh`` label), if any:
    a live object of that name counts as meshctl's only when it is of the same mesh."""
    return _labels(obj).get(MESH)


def without_ownership(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` without meshctl's labels: what ``--force`` may write over an object someone
    else made.  It takes fields over, never the object: teardown deletes only what
    carries these labels, so the object stays theirs."""
    meta = dict(obj.get("metadata") or {})
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in (MANAGED_BY, MESH)}
    if labels:
        meta["labels"] = labels
    else:
        meta.pop("labels", None)
    return {**obj, "metadata": meta}


def operator_names(cluster: str) -> tuple[str, ...]:
    """The IstioOperator names meshctl installs on ``cluster`` (control plane, gateway)
    without a revision; :func:`control_plane_operator` names a revision's."""
    return (f"meshctl-{cluster}", f"meshctl-eastwest-{cluster}")


def control_plane_operator(cluster: str, revision: str = "") -> str:
    """The IstioOperator name of ``cluster``'s control plane at ``revision``.

    One name per revision, because during an upgrade two control planes stand side by
    side and istioctl prunes by the owning IstioOperator's name: each revision's objects
    must carry their own.  The unrevisioned one keeps the name meshctl always gave it.
    """
    return f"meshctl-{cluster}-{revision}" if revision else f"meshctl-{cluster}"


def is_meshctl_operator(name: object, cluster: str) -> bool:
    """True when ``name`` is one of meshctl's IstioOperator names on ``cluster``: the
    control plane (any revision's) or the east-west gateway."""
    if not isinstance(name, str):
        return False
    if name in operator_names(cluster):
        return True
    revision = name.removeprefix(f"meshctl-{cluster}-")
    return revision != name and bool(_REVISION.fullmatch(revision))


def installed_by_meshctl(obj: Mapping[str, Any] | None, cluster: str) -> bool:
    """True when istioctl rendered ``obj`` from one of meshctl's IstioOperators."""
    return is_meshctl_operator(_labels(obj).get(OWNING_RESOURCE), cluster)
