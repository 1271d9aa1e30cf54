"""verify's ledger: its namespace claimed before any write, every write recorded, and cleaned up
after, removing only what this run made.

Clusters are shared, and verify's namespace (``meshctl-verify`` or ``--namespace``) may
hold what others put there, or be another mesh's, or be a namespace meshctl made for
something else (``istio-system``).  So:

- :func:`claim`, before the first write anywhere: a namespace of that name that is not
  verify's sample namespace *for this mesh ID* is refused (:class:`CheckFailed`, exit 1,
  one line).  Verify's is labelled ``app.kubernetes.io/managed-by: meshctl``,
  ``meshctl.io/mesh: <meshID>`` and ``meshctl.io/purpose: verify`` (:data:`PURPOSE`); one
  labelled managed-by meshctl for another mesh ID, or for no purpose of verify's, is
  foreign.
- :meth:`Ledger.ensure` is how a probe writes: it checks the live object first (the
  namespace again, any other object must be absent or carry meshctl's labels for this
  mesh ID), records the object *before* sending it, then applies it.  So an interrupted
  run still knows everything it may have created.
- :func:`cleanup` (run in a ``finally`` by :func:`meshctl.verify.run.run`, also on
  Ctrl-C, skipped by ``--keep``) deletes, newest first, each recorded object that still
  carries meshctl's labels for this mesh ID (with a uid precondition), then the
  namespace only when this run created or reused it as verify's (same uid, same labels)
  and nothing else is in it: every namespaced kind the API server serves is listed
  (:func:`meshctl.kube.inventory.namespaced_objects`); what Kubernetes made from verify's
  objects (ReplicaSets, Pods, EndpointSlices, Endpoints) and what it makes in every
  namespace do not count.  What it keeps is reported with the reason; a cluster it cannot
  read stops the cleanup there, never the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshctl import kube, ownership
from meshctl.errors import CheckFailed, MeshctlError
from meshctl.kube import inventory
from meshctl.verify.result import DEFAULT_NAMESPACE, Progress, quiet

PURPOSE = "meshctl.io/purpose"
VERIFY = "verify"


def strictly_ours(obj: Mapping[str, Any] | None, mesh_id: str) -> bool:
    """meshctl's labels with *this* mesh ID (an absent mesh label is not enough here)."""
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return labels.get(ownership.MANAGED_BY) == ownership.MANAGER and \
        labels.get(ownership.MESH) == mesh_id


def namespace_problem(live: Mapping[str, Any] | None, *, cluster: str, namespace: str,
                      mesh_id: str) -> str | None:
    """Why verify must not use this live namespace, or ``None`` (absent, or verify's own
    sample namespace for ``mesh_id``)."""
    if live is None:
        return None
    labels = (live.get("metadata") or {}).get("labels") or {}
    where = f"{cluster}: Namespace {namespace}"
    if labels.get(ownership.MANAGED_BY) != ownership.MANAGER:
        return f"{where} exists and was not made by meshctl"
    mesh = labels.get(ownership.MESH)
    if mesh != mesh_id:
        said = f"mesh {mesh!r}" if mesh is not None else "no mesh (no meshctl.io/mesh label)"
        return f"{where} was made by meshctl for {said}, not for this mesh {mesh_id!r}"
    if labels.get(PURPOSE) != VERIFY:
        return f"{where} was made by meshctl for this mesh, but not as verify's sample namespace"
    return None


def _refuse(problems: list[str]) -> CheckFailed:
    return CheckFailed("; ".join(problems) + "; verify deploys its sample only into a "
                       "namespace it owns and leaves this one as it is",
                       hint=f"pick another name with --namespace (default {DEFAULT_NAMESPACE})")


@dataclass
class Ledger:
    """What this run wrote (or was about to write), per cluster, in order."""

    namespace: str
    mesh_id: str
    written: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # cluster -> uid of the namespace this run used (None: created, uid not read yet)
    namespace_uid: dict[str, str | None] = field(default_factory=dict)

    def ensure(self, k: kube.Kube, obj: Mapping[str, Any]) -> str:
        """Check, record, then apply ``obj`` on ``k``'s cluster (see the module docstring)."""
        what = kube.describe(obj)
        live = k.get(kube.object_path(obj), what=f"read {what}")
        if obj["kind"] == "Namespace":
            problem = namespace_problem(live, cluster=k.cluster, namespace=self.namespace,
                                        mesh_id=self.mesh_id)
            if problem:
                raise _refuse([problem])
        elif live is not None and not strictly_ours(live, self.mesh_id):
            raise CheckFailed(f"{k.cluster}: {what} exists and is not meshctl's for mesh "
                              f"{self.mesh_id!r}; left as it is",
                              hint=f"pick another name with --namespace (default "
                                   f"{DEFAULT_NAMESPACE})")
        self.written.setdefault(k.cluster, []).append(dict(obj))
        if obj["kind"] == "Namespace":
            self.namespace_uid.setdefault(k.cluster, (live or {}).get("metadata", {}).get("uid"))
        result = kube.ensure(k, obj, live=live)
        if obj["kind"] == "Namespace" and self.namespace_uid.get(k.cluster) is None:
            made = k.get(kube.object_path(obj), what=f"read {what}")
            self.namespace_uid[k.cluster] = (made or {}).get("metadata", {}).get("uid")
        return result


def claim(clients: Mapping[str, kube.Kube], namespace: str, mesh_id: str) -> Ledger:
    """Facts first: the namespace on every cluster is absent or verify's for this mesh ID,
    else :class:`CheckFailed` before anything is written anywhere.  A cluster that cannot
    be read says nothing here: the static checks report it, and the traffic half, which
    checks again right before its first write there, does not run."""
    problems = []
    for k in clients.values():
        try:
            live = k.get(f"/api/v1/namespaces/{namespace}", what=f"read Namespace {namespace}")
        except MeshctlError:
            continue
        if problem := namespace_problem(live, cluster=k.cluster, namespace=namespace,
                                        mesh_id=mesh_id):
            problems.append(problem)
    if problems:
        raise _refuse(problems)
    return Ledger(namespace, mesh_id)


@dataclass(frozen=True)
class Tidied:
    removed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()  # what stayed, each with the reason


def _delete(k: kube.Kube, live: Mapping[str, Any]) -> bool:
    """DELETE with a uid precondition: an object re-created under the name is not touched."""
    try:
        k.request("DELETE", kube.object_path(live), what=f"delete {kube.describe(live)}",
                  body={"apiVersion": "v1", "kind": "DeleteOptions",
                        "preconditions": {"uid": live["metadata"]["uid"]}})
    except (kube.NotFound, kube.Conflict):
        return False
    return True


def _endpoints_of(services: set[str]) -> Any:
    """Endpoints carry no ownerReference: the endpoints controller names them after the
    Service."""
    return lambda obj: obj.get("kind") == "Endpoints" and \
        (obj.get("metadata") or {}).get("name") in services


def _tidy_cluster(k: kube.Kube, ledger: Ledger, removed: list[str], kept: list[str]) -> None:
    ns, mesh_id = ledger.namespace, ledger.mesh_id
    ours: list[str] = []
    services: set[str] = set()
    for obj in reversed(ledger.written.get(k.cluster, [])):
        if obj["kind"] == "Namespace":
            continue
        what = kube.describe(obj)
        live = k.get(kube.object_path(obj), what=f"read {what}")
        if live is None:
            continue
        if not strictly_ours(live, mesh_id):
            kept.append(f"{k.cluster}: {what}: no longer carries meshctl's labels for mesh "
                        f"{mesh_id!r}")
            continue
        ours.append(live["metadata"]["uid"])
        if obj["kind"] == "Service":
            services.add(obj["metadata"]["name"])
        if _delete(k, {**live, "apiVersion": obj["apiVersion"], "kind": obj["kind"]}):
            removed.append(f"{k.cluster}: {what}")
    if k.cluster not in ledger.namespace_uid:
        return
    live = k.get(f"/api/v1/namespaces/{ns}", what=f"read Namespace {ns}")
    if live is None:
        return
    uid = live["metadata"]["uid"]
    where = f"{k.cluster}: Namespace {ns}"
    if namespace_problem(live, cluster=k.cluster, namespace=ns, mesh_id=mesh_id):
        kept.append(f"{where}: no longer labelled as verify's for mesh {mesh_id!r}")
        return
    if ledger.namespace_uid[k.cluster] not in (None, uid):
        kept.append(f"{where}: not the namespace this run used (uid differs)")
        return
    if live["metadata"].get("deletionTimestamp"):
        return
    left = inventory.strangers(inventory.namespaced_objects(k, ns), [*ours, uid],
                               also_ours=_endpoints_of(services))
    if left:
        names = [inventory.describe(o) for o in left]
        kept.append(f"{where}: it holds {len(left)} object(s) verify did not make "
                    f"({', '.join(names[:4])}{', …' if len(names) > 4 else ''})")
        return
    if _delete(k, {**live, "apiVersion": "v1", "kind": "Namespace"}):
        removed.append(f"{where}")


def cleanup(clients: Mapping[str, kube.Kube], ledger: Ledger,
            progress: Progress = quiet) -> Tidied:
    """Remove what this run recorded in ``ledger`` (see the module docstring)."""
    removed: list[str] = []
    kept: list[str] = []
    for cluster in ledger.written:
        before = len(removed)
        try:
            _tidy_cluster(clients[cluster], ledger, removed, kept)
        except MeshctlError as e:
            kept.append(f"{cluster}: cleanup stopped, the rest of the sample stays: "
                        f"{e.message}")
        progress(cluster, f"removed {len(removed) - before} sample objects")
    for line in kept:
        progress(line.split(":", 1)[0], f"kept {line.split(': ', 1)[-1]}")
    return Tidied(tuple(removed), tuple(kept))
