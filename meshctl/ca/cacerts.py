"""The cluster's copy of its intermediate CA: the ``istio-system/cacerts`` Secret.

istiod reads this Secret as its plug-in CA.  Pushing it is the one place where a key
(the intermediate's, never the root's) goes to a cluster, so the rules are strict:
the same content already there means no write at all; different content is refused
unless forced, and forcing first saves the live Secret to a local 0600 backup.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from meshctl import kube, ownership, render
from meshctl.ca import backups, certs, pki
from meshctl.errors import CheckFailed, UsageError

NAMESPACE = "istio-system"
PATH = f"/api/v1/namespaces/{NAMESPACE}/secrets/cacerts"
WHAT = "Secret istio-system/cacerts"


def _data(bundle: certs.Bundle) -> dict[str, str]:
    return {name: base64.b64encode(content).decode() for name, content in bundle.files().items()}


def manifest(bundle: certs.Bundle, mesh_id: str) -> str:
    """The ``istio-system/cacerts`` Secret; contains the intermediate key."""
    return render.render("cacerts.yaml.j2", data=_data(bundle), mesh_id=mesh_id,
                         root_fingerprint=pki.fingerprint(bundle.signing_root),
                         intermediate_serial=f"{bundle.ca_cert.serial_number:x}")


def read(k: kube.Kube) -> certs.Bundle | None:
    """The bundle in the live Secret, or ``None`` when there is no usable one."""
    secret = k.get(PATH, what=f"read {WHAT}")
    return from_secret(k.cluster, secret) if secret else None


def parse(cluster: str, secret: Mapping[str, Any]) -> certs.Bundle:
    """The bundle in a live Secret; ``ValueError`` naming the field and why not.

    The Secret may have been written by anyone (an encrypted ``ca-key.pem``, a
    truncated certificate): every way it can be wrong is a ``ValueError`` here, never
    a ``TypeError`` or ``binascii.Error`` from below.
    """
    raw = secret.get("data") or {}
    if not isinstance(raw, Mapping):
        raise ValueError("data is not a mapping")
    data = {}
    for name, value in raw.items():
        try:
            data[name] = base64.b64decode(str(value), validate=True)
        except ValueError:
            raise ValueError(f"{name}: not base64") from None
    return certs.bundle_from_files(cluster, data)


def from_secret(cluster: str, secret: Mapping[str, Any]) -> certs.Bundle | None:
    """:func:`parse`, or ``None`` when the Secret is not a usable CA bundle."""
    try:
        return parse(cluster, secret)
    except ValueError:
        return None


def unusable(secret: Mapping[str, Any]) -> str | None:
    """Why the live Secret is not a usable CA bundle, naming the field
    (``ca-key.pem: the private key is encrypted …``); ``None`` when it is one."""
    try:
        parse("", secret)
    except ValueError as e:
        return str(e)
    return None


def problem(cluster: str, secret: Mapping[str, Any]) -> str | None:
    """:func:`unusable` as one line naming the cluster, the Secret and the field."""
    why = unusable(secret)
    return f"{cluster}: {WHAT} is not a usable CA bundle: {why}" if why else None


def difference(live: certs.Bundle, wanted: certs.Bundle) -> str:
    """What differs, by root fingerprint, intermediate serial and expiry (never key bytes)."""
    parts = []
    live_roots = [pki.fingerprint(r)[:23] + "…" for r in live.roots]
    wanted_roots = [pki.fingerprint(r)[:23] + "…" for r in wanted.roots]
    if live_roots != wanted_roots:
        parts.append(f"root {', '.join(live_roots)} in the cluster, "
                     f"{', '.join(wanted_roots)} locally")
    if live.ca_cert.serial_number != wanted.ca_cert.serial_number:
        parts.append(f"intermediate serial {live.ca_cert.serial_number:x} in the cluster, "
                     f"{wanted.ca_cert.serial_number:x} locally")
    if live.ca_cert.not_valid_after_utc != wanted.ca_cert.not_valid_after_utc:
        parts.append(f"expiry {live.ca_cert.not_valid_after_utc:%Y-%m-%d} in the cluster, "
                     f"{wanted.ca_cert.not_valid_after_utc:%Y-%m-%d} locally")
    return "; ".join(parts) or "the key or chain bytes differ"


def ensure_namespace(k: kube.Kube, mesh_id: str) -> None:
    """``istio-system`` must exist before the Secret: when it does not, create it as
    meshctl's (its labels), so bootstrap later adopts it and teardown removes it."""
    if k.get(f"/api/v1/namespaces/{NAMESPACE}", what="read Namespace istio-system") is None:
        kube.ensure(k, {"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": NAMESPACE, "labels": ownership.labels(mesh_id)}})


def apply(k: kube.Kube, bundle: certs.Bundle, *, mesh_id: str, force: bool = False,
          backup_dir: Path, live: Any = kube.UNREAD) -> str:
    """Push ``bundle`` as ``cacerts``: created, unchanged, labelled, or replaced (only
    with ``force``).  "labelled": meshctl's own Secret from before it carried the mesh
    label gets it, its data untouched.

    Raises :class:`CheckFailed` (exit 1) naming what differs when the cluster holds
    another CA and ``force`` is not given.
    """
    if any(pki.same_public_key(root, bundle.ca_key) for root in bundle.roots):
        # the one key that must never reach a cluster; cheap to make impossible
        raise UsageError(f"{k.cluster}: refusing to push {WHAT}: its ca-key.pem is a root's key")
    wanted = yaml.safe_load(manifest(bundle, mesh_id))
    if live is kube.UNREAD:
        live = k.get(PATH, what=f"read {WHAT}")
    if live is None:
        ensure_namespace(k, mesh_id)
        kube.ensure(k, wanted, live=None)
        return "created"
    if (live.get("data") or {}) == wanted["data"]:
        labels = (live.get("metadata") or {}).get("labels") or {}
        if ownership.is_managed(live) and ownership.MESH not in labels:
            kube.ensure(k, wanted, live=live)
            return "labelled"
        return "unchanged"
    what_differs = _differs(k.cluster, live, bundle)
    if not force:
        raise CheckFailed(f"{k.cluster}: {WHAT} holds another CA: {what_differs}",
                          hint="--force replaces it after saving the current one locally")
    saved = backups.backup_secret(backup_dir, k.cluster, live)
    body = {**wanted, "metadata": {**wanted["metadata"],
                                   "resourceVersion": live["metadata"]["resourceVersion"]}}
    k.request("PUT", PATH, body=body, what=f"replace {WHAT}")
    return f"replaced (previous saved to {saved})"


def conflict(cluster: str, live: dict | None, bundle: certs.Bundle) -> str | None:
    """What an ``apply`` without force would refuse: ``None`` when it would go through."""
    if live is None or (live.get("data") or {}) == _data(bundle):
        return None
    return _differs(cluster, live, bundle)


def _differs(cluster: str, live: Mapping[str, Any], bundle: certs.Bundle) -> str:
    try:
        return difference(parse(cluster, live), bundle)
    except ValueError as e:
        return f"the cluster's Secret is not a CA bundle ({e})"


def apply_all(clients: dict[str, kube.Kube], bundles: dict[str, certs.Bundle], *,
              mesh_id: str, force: bool = False, backup_dir: Path) -> dict[str, str]:
    """Push every bundle, facts first: without ``force``, any cluster holding another CA
    stops the whole push before the first write, naming every such cluster."""
    live = {name: clients[name].get(PATH, what=f"read {WHAT}") for name in bundles}
    if not force:
        conflicts = {name: why for name in bundles
                     if (why := conflict(name, live[name], bundles[name])) is not None}
        if conflicts:
            detail = "; ".join(f"{name}: {why}" for name, why in conflicts.items())
            raise CheckFailed(f"{WHAT} holds another CA on {', '.join(conflicts)} ({detail}); "
                              "nothing was pushed",
                              hint="--force replaces them after saving the current ones locally")
    return {name: apply(clients[name], bundles[name], mesh_id=mesh_id, force=force,
                        backup_dir=backup_dir, live=live[name]) for name in bundles}
