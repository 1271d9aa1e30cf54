"""Sidecar injection labels on the cluster files' ``injectNamespaces``, and their undo.

Istio's injector picks a namespace by its labels: ``istio-injection=enabled`` (served by
the ``default`` revision or tag) or ``istio.io/rev=<revision>``.  ``istio-injection``
overrides ``istio.io/rev``, and a leftover of the other one makes injection depend on
which webhook answers first (istio/istio#48643), so meshctl always sets one of the two
and removes the other (:func:`labels_for`).

These namespaces are usually the users' own, so the rules for a foreign object hold:

- Before meshctl first changes a namespace, the install record (key
  ``injection-namespaces``) keeps its uid, whether meshctl created it, and the previous
  value of both labels.  Only the first change records: a re-run or a move to another
  revision must never record meshctl's own values as "previous".
- Labels are set by server-side apply as meshctl's field manager, with only the label
  keys meshctl sets on a namespace it did not create, and taking over a label another
  manager holds (``force``): the cluster file naming the namespace is the operator asking
  for that label, the result line names the manager it was taken from, and teardown puts
  the recorded value back.  A namespace that does not exist is created as meshctl's.
- A label that must be absent is removed by a JSON merge patch with ``null``, as
  ``ownership.RESTORE_FIELD_MANAGER``: server-side apply can only drop a field that
  meshctl alone owns, and a label set by ``kubectl label``, Helm or a controller is
  theirs, so no apply of meshctl's can remove it.  The merge patch removes the key
  whoever owns it, and a fixed name of meshctl's own (never one read from the cluster)
  writes it.  meshctl's own applied label goes first by the apply itself (an applied
  set without the key releases it), so a patch is sent only when someone else holds it.

:func:`restore` (teardown, before Istio is uninstalled) puts both labels back on the
namespace the record names, with the same uid, and deletes a namespace meshctl created
only when it is still meshctl's and holds nothing meshctl did not make
(:mod:`strangers`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from meshctl import kube, ownership
from meshctl.mesh import install, install_record, strangers

LABEL_INJECTION = "istio-injection"
LABEL_REV = "istio.io/rev"
LABELS = install_record.INJECTION_LABELS  # (LABEL_INJECTION, LABEL_REV)
REC_INJECTION = install_record.INJECTION
# a namespace another step of meshctl applies (with another applied set under the same
# field manager, which each apply would strip of the other's fields): never labelled here
NOT_LABELLED = frozenset({install.NS})
DELETED = "deleted (meshctl created it)"  # the end of restore's line for a deleted namespace


def labels_for(revision: str) -> dict[str, str | None]:
    """The injection labels a namespace needs for ``revision`` (None: must be absent)."""
    if revision in ("", "default"):
        return {LABEL_INJECTION: "enabled", LABEL_REV: None}
    return {LABEL_INJECTION: None, LABEL_REV: revision}


def _path(ns: str) -> str:
    return f"/api/v1/namespaces/{quote(ns)}"


def _labels(live: Mapping[str, Any] | None) -> dict[str, str]:
    return dict(((live or {}).get("metadata") or {}).get("labels") or {})


def _uid(live: Mapping[str, Any]) -> str:
    return str((live.get("metadata") or {}).get("uid") or "")


def recorded_namespaces(rec: Mapping[str, str]) -> dict[str, dict]:
    """The record's ``injection-namespaces``, parsed and checked (empty when absent or
    not in the shape meshctl writes: a record that says more is refused, never half-used)."""
    return install_record.injection_namespaces(rec)


def _remember(k: kube.Kube, mesh_id: str, ns: str, live: Mapping[str, Any],
              created: bool) -> None:
    """Record ``ns`` as it is now, unless the record already holds this very namespace
    (same uid): its "previous" is then from before meshctl and must stay."""
    entries = recorded_namespaces(install.recorded(k))
    if ns in entries and entries[ns]["uid"] == _uid(live):
        return
    now = _labels(live)
    entries[ns] = {"uid": _uid(live), "created": created,
                   "previous": {key: None if created else now.get(key) for key in LABELS}}
    install.record(k, mesh_id, {REC_INJECTION: json.dumps(entries, sort_keys=True)})


def _remove(k: kube.Kube, ns: str, keys: Sequence[str]) -> None:
    """Remove label ``keys`` whoever holds them (see the module docstring for why)."""
    if keys:
        k.request("PATCH", _path(ns), body={"metadata": {"labels": dict.fromkeys(keys)}},
                  query={"fieldManager": ownership.RESTORE_FIELD_MANAGER},
                  content_type="application/merge-patch+json",
                  what=f"remove label {', '.join(keys)} from Namespace {ns}")


def _shown(wanted: Mapping[str, str | None]) -> str:
    return ", ".join(f"{key}={value}" if value is not None else f"no {key}"
                     for key, value in wanted.items())


def _label_one(k: kube.Kube, ns: str, wanted: Mapping[str, str | None],
               mesh_id: str) -> str | None:
    """Bring one namespace's injection labels about; what changed, or None."""
    live = k.get(_path(ns), what=f"read Namespace {ns}")
    put = {key: value for key, value in wanted.items() if value is not None}
    ours = live is None or ownership.is_managed(live, mesh_id)
    meta: dict[str, Any] = {"name": ns, "labels": dict(put)}
    if ours:  # meshctl's namespace: its whole applied set, ownership labels included
        meta["labels"].update(ownership.labels(mesh_id))
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}
    now = _labels(live)
    absent = [key for key, value in wanted.items() if value is None and key in now]
    if ours:
        if kube.in_sync(live, doc) and not absent:
            if live is not None and ns not in recorded_namespaces(install.recorded(k)):
                _remember(k, mesh_id, ns, live, created=True)  # a run cut short before
            return None
    elif all(now.get(key) == value for key, value in put.items()) and not absent:
        return None  # already as wanted: nothing to change, nothing to record
    if live is not None:
        _remember(k, mesh_id, ns, live, created=ours)
    result = kube.ensure(k, doc, live=live, force=not ours)
    if live is None:
        made = k.get(_path(ns), what=f"read Namespace {ns}") or {"metadata": {}}
        _remember(k, mesh_id, ns, made, created=True)
    done = [] if result == "unchanged" else [result]
    if absent:  # what the apply did not release is someone else's: removed by patch
        after = _labels(k.get(_path(ns), what=f"read Namespace {ns}"))
        theirs = [key for key in absent if key in after]
        _remove(k, ns, theirs)
        done += [f"removed {key}, set by another manager" for key in theirs]
    whose = "" if ours else " (not meshctl's)"
    return f"Namespace {ns}{whose}: {_shown(wanted)} ({'; '.join(done) or 'updated'})"


def ensure(k: kube.Kube, namespaces: Sequence[str], revision: str,
           mesh_id: str) -> list[str]:
    """Put :func:`labels_for` ``revision`` on each namespace; what changed (empty when
    nothing did: a re-run sends no write).  ``istio-system`` is skipped: install applies
    that namespace with its own set of fields under the same field manager, and each
    apply would drop the other's."""
    wanted = labels_for(revision)
    changed = []
    for ns in namespaces:
        if ns in NOT_LABELLED:
            continue
        line = _label_one(k, ns, wanted, mesh_id)
        if line:
            changed.append(line)
    return changed


def relabel(k: kube.Kube, namespaces: Sequence[str], revision: str,
            mesh_id: str) -> list[str]:
    """Move namespaces to ``revision`` (upgrade's ``--move`` and ``--rollback``): the same
    as :func:`ensure`, whose record keeps the values from before meshctl's first change."""
    return ensure(k, namespaces, revision, mesh_id)


def _restored(ns: str, key: str, previous: str | None) -> str:
    if previous is None:
        return f"Namespace {ns}: label {key} removed (it was not set before meshctl)"
    return f"Namespace {ns}: label {key} back to {previous!r}"


def _put_back(k: kube.Kube, ns: str, live: Mapping[str, Any],
              previous: Mapping[str, str | None], created: bool) -> list[str]:
    """Release meshctl's applied labels and patch both back to their recorded values;
    a line for each label whose value this changed."""
    before = _labels(live)
    if not created:  # an empty applied set releases the labels meshctl applied (on its
        # own namespace it would drop the ownership labels too: the patch alone there)
        kube.apply(k, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    now = _labels(k.get(_path(ns), what=f"read Namespace {ns}"))
    patch = {key: previous.get(key) for key in LABELS if now.get(key) != previous.get(key)}
    if patch:
        k.request("PATCH", _path(ns), body={"metadata": {"labels": patch}},
                  query={"fieldManager": ownership.RESTORE_FIELD_MANAGER},
                  content_type="application/merge-patch+json",
                  what=f"restore labels on Namespace {ns}")
    return [_restored(ns, key, previous.get(key)) for key in LABELS
            if before.get(key) != previous.get(key)]


def restore(k: kube.Kube, rec: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """teardown's undo of :func:`ensure`: (done, kept with why).

    ``rec`` has passed ``install_record.problem``.  Only a namespace with the recorded
    uid is touched.  One meshctl created is deleted when it is still meshctl's and holds
    nothing meshctl did not make; else its injection labels go and it is kept, with why.
    """
    mesh_id = rec.get(install_record.MESH, "")
    done: list[str] = []
    kept: list[str] = []
    for ns, entry in sorted(recorded_namespaces(rec).items()):
        live = k.get(_path(ns), what=f"read Namespace {ns}")
        if live is None or (live.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if _uid(live) != entry["uid"]:
            kept.append(f"Namespace {ns}: labels not restored, it is not the namespace "
                        "meshctl labelled (uid differs from the install record)")
            continue
        created = bool(entry["created"]) and ownership.is_managed(live, mesh_id)
        if entry["created"] and not created:
            kept.append(f"Namespace {ns}: meshctl created it, but it no longer carries "
                        "meshctl's labels; left as it is")
            continue
        why = strangers.why_kept(k, ns, cluster=k.cluster, mesh_id=mesh_id,
                                 revision="") if created else None
        if created and not why:
            if kube.delete(k, {"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": ns, "labels": ownership.labels(mesh_id)}}):
                done.append(f"Namespace {ns} {DELETED}")
            continue
        done.extend(_put_back(k, ns, live, entry["previous"], created))
        if why:
            kept.append(f"Namespace {ns} (meshctl created it): {why}")
    return done, kept
