"""What bootstrap must know from every cluster before its first write anywhere.

cilium-cli's ``clustermesh connect`` habit: collect facts from all clusters, validate
them together, and only then change anything.  A cluster that already runs an Istio
meshctl did not install, an install record of another mesh or of another istioctl
version, a ``cacerts`` under another root, a label on a namespace that another tool
owns: each stops the run before any cluster (or the local CA folder) is written, and
every cluster's problems are reported together, not only the first.

:func:`each` is the one way work fans out over clusters: concurrent, and when several
clusters fail, every cluster's error is in the one line that reaches the user.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from meshctl import istio, kube, manifests, ownership
from meshctl.ca import cacerts, certs
from meshctl.config import Config
from meshctl.errors import CheckFailed, MeshctlError
from meshctl.kube import Kube
from meshctl.mesh import install, install_record, remote_secret
from meshctl.topology import Plan

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Several(MeshctlError):
    """More than one cluster failed: every message, the highest exit code."""

    def __init__(self, errors: Sequence[MeshctlError]) -> None:
        self.errors = tuple(errors)
        self.exit_code = max(e.exit_code for e in errors)
        super().__init__(f"{len(errors)} failures: " + "; ".join(str(e) for e in errors),
                         hint=None)


def each(keys: Sequence[K], fn: Callable[[K], T], *, workers: int = 8) -> dict[K, T]:
    """``fn`` for every key concurrently; after all end, raise every failure together."""
    if not keys:
        return {}
    with ThreadPoolExecutor(max_workers=min(workers, len(keys))) as pool:
        futures = {key: pool.submit(fn, key) for key in keys}
    results: dict[K, T] = {}
    errors: list[MeshctlError] = []
    for key, fut in futures.items():
        try:
            results[key] = fut.result()
        except MeshctlError as e:
            errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise Several(errors)
    return results


@dataclass
class Facts:
    """Read once before the first write; the run reuses it instead of reading again."""

    clients: dict[str, Kube]
    istioctl: istio.Istioctl
    records: dict[str, dict[str, str]]
    cacerts: dict[str, dict | None]


def _namespace_conflict(k: Kube, plan: Plan, name: str) -> str | None:
    """The network label on an ``istio-system`` meshctl did not make, set otherwise by
    another manager: server-side apply would refuse it, so say so before any write."""
    live = k.get(install.NS_PATH, what=f"read Namespace {install.NS}")
    if live is None or ownership.is_managed(live):
        return None
    want = plan.get(name).network
    have = (live["metadata"].get("labels") or {}).get(install.NETWORK_LABEL)
    if have is None or have == want:
        return None
    manager = install._field_manager(live, "labels", install.NETWORK_LABEL) or "another tool"
    return (f"{name}: Namespace {install.NS}: .metadata.labels.{install.NETWORK_LABEL} is "
            f"{have!r} (owned by {manager}), the plan wants {want!r}")


def _record_problem(cm: Mapping | None, plan: Plan, name: str,
                    ctl: istio.Istioctl, revision: str | None = None) -> str | None:
    """The install record is cluster data: its shape and mesh are checked before it is
    carried forward, and one without meshctl's label would be refused at its first write."""
    if cm is not None and not ownership.is_managed(cm):
        return (f"{name}: ConfigMap {install.NS}/meshctl-install exists and was not made by "
                "meshctl")
    problem = install_record.problem(cm, cluster=name, mesh_id=plan.mesh_id)
    if problem:
        return problem
    version = install.version_problem(install.record_data(cm), ctl, revision)
    return f"{name}: {version}" if version else None


def _owned_problems(k: Kube, config: Config, plan: Plan, name: str, *, force: bool,
                    links: bool) -> list[str]:
    """What bootstrap will apply here that exists as someone else's, read before the first
    write: the exposure Gateways and VirtualService (refused, or with ``--force`` taken
    over but left theirs), a field of them another manager owns, and a remote secret of
    meshctl's name without its label (refused even with ``--force``)."""
    cp = plan.get(name)
    docs = [*(manifests.split(manifests.expose_istiod(config)) if cp.expose_istiod else []),
            *(manifests.split(manifests.expose_services(plan.mesh_id))
              if cp.expose_services else [])]
    out = []
    for doc in docs:
        live = k.get(kube.object_path(doc), what=f"read {kube.describe(doc)}")
        if live is None or force:
            continue
        if kube.not_ours(live, doc):
            out.append(kube.not_ours_message(name, live, doc))
        elif taken := kube.predicted_conflicts(live, doc):
            out.append(f"{name}: {kube.describe(doc)}: " + ", ".join(
                f"{field} (owned by {manager})" for manager, field in taken))
    for link in plan.links if links else ():
        if link.target == name:
            secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {
                "name": remote_secret.secret_name(link.source), "namespace": install.NS,
                "labels": ownership.labels(plan.mesh_id)}}
            live = k.get(kube.object_path(secret), what=f"read {kube.describe(secret)}")
            if kube.not_ours(live, secret):
                out.append(kube.not_ours_message(name, live, secret))
    return out


def _foreign_istio(config: Config, plan: Plan, names: list[str], ctl: istio.Istioctl,
                   skip_preflight: bool) -> list[str]:
    """preflight (or, with --skip-preflight, only its ownership checks) on every cluster."""
    from meshctl.preflight import runner as preflight  # imported late: large, and only needed here

    if skip_preflight:
        results = preflight.foreign_istio(config, names, plan=plan, istioctl=ctl)
        return [f"{r.cluster}: {r.message}" for r in results if r.status == "FAIL"]
    reports = preflight.run(config, names, plan=plan, istioctl=ctl)
    return [preflight.summary(reports)] if preflight.failed(reports) else []


def gather(config: Config, plan: Plan, *, skip_preflight: bool = False, force: bool = False,
           names: Sequence[str] | None = None) -> Facts:
    """Every client, istioctl, preflight, records, live ``cacerts``: raise before writing.

    ``names`` narrows the clusters (``install --cluster X``); default: the whole plan.
    """
    whole = names is None  # bootstrap: the links too; install --cluster links nothing
    names = list(names or plan.names)
    clients = each(names, lambda n: kube.client(config.clusters[n]))
    ctl = istio.find()
    problems = _foreign_istio(config, plan, names, ctl, skip_preflight)
    hints = ["meshctl changes only what it owns: see the README, 'Clusters that already "
             "run Istio'"] if problems else []
    cms = each(names, lambda n: install.read_record(clients[n]))
    records = {n: install.record_data(cms[n]) for n in names}
    stale = [p for n in names if (p := _record_problem(cms[n], plan, n, ctl,
                                                             config.mesh.istio.revision))]
    if stale:
        hints.append("use the istioctl and clusters folder that installed it")
    conflicts = [] if force else [
        p for p in each(names, lambda n: _namespace_conflict(clients[n], plan, n)).values()
        if p]
    if conflicts:
        hints.append("change it with the tool that owns it, or re-run with --force to take "
                     "the field over (teardown puts the old value back)")
    owned = [p for found in each(names, lambda n: _owned_problems(
        clients[n], config, plan, n, force=force, links=whole)).values() for p in found]
    if owned:
        hints.append("remove or rename what is not meshctl's, or re-run with --force to "
                     "take over its fields (it stays theirs: teardown keeps it)")
    live = each(names, lambda n: clients[n].get(cacerts.PATH, what=f"read {cacerts.WHAT}"))
    problems += stale + conflicts + owned
    if problems:
        raise CheckFailed("; ".join(problems) + "; nothing was changed on any cluster",
                          hint="; ".join(hints))
    return Facts(clients=clients, istioctl=ctl, records=records, cacerts=live)


def check_cacerts(facts: Facts, bundles: Mapping[str, certs.Bundle]) -> None:
    """Another CA on any cluster stops the run before the first cluster write."""
    found = {n: why for n, bundle in bundles.items()
             if (why := cacerts.conflict(n, facts.cacerts[n], bundle)) is not None}
    if found:
        detail = "; ".join(f"{n}: {why}" for n, why in found.items())
        raise CheckFailed(f"{cacerts.WHAT} holds another CA on {', '.join(found)} ({detail}); "
                          "nothing was changed on any cluster",
                          hint="changing the CA of a live mesh breaks mTLS; use certs.rotate "
                               "--root for a staged rotation, or certs.issue --force")
