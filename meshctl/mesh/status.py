"""The mesh as it is now, read from the live clusters: one row per cluster.

Data first (``ClusterStatus``), rendering in ``report``.  Read-only: only GETs and
LISTs.  One unreachable cluster is a row that says so (why, in words: TLS, DNS,
refused, timed out) and the others are still read; the task then exits 3.

Each remote secret's kubeconfig is checked by :mod:`meshctl.kube.remote_kubeconfig`'s
allow-list (never given to a loader): a link whose secret carries an exec plugin, a
file path, other credentials or no kubeconfig at all is listed under ``link_errors``
with the Secret and the field, not as a working link.

Revisions (:mod:`meshctl.revisions`): during an upgrade two control planes run side by
side, so a cluster has one row per revision: its istiod Deployment, version, readiness
and the proxies connected to it (asked from its istiod pods, as ``istioctl proxy-status
--revision R`` does).  A proxy count that cannot be read is null with the reason in
``proxies_error``; the rest of the row still shows.  A remote-role cluster runs no
istiod: its revisions are its injector webhooks, and its proxies are counted by its
primary's istiod (``proxies_error`` says so instead of a number).  ``istio_version`` is
the default revision's version, else the only one's (null when several run and no
default tag points at one of them).  Namespaces whose labels name a revision that
exists nowhere on the cluster are listed under that name and in ``revision_problems``.

``--json`` prints ``{"schema": "meshctl.status/v1", "clusters": [...]}``, one object
per cluster with the fields of :class:`ClusterStatus` (keys only added within v1)::

    {"name", "role", "network", "reachable": bool, "istio_version": str | null,
     "links": [source, ...], "link_errors": ["<cluster>: Secret …: <field> …", ...],
     "cert_days_left": float | null, "east_west_address": str | null,
     "error": str | null,
     "revisions": [{"revision", "deployment": str | null, "version": str | null,
                    "ready": bool | null, "proxies": int | null,
                    "proxies_error": str | null, "tags": [tag, ...]}, ...],
     "default_revision": str | null, "tags": {tag: revision},
     "namespaces": {revision: [namespace, ...]}, "revision_problems": [str, ...],
     "upgrade": {"from_revision", "to_revision", "from_version", "to_version", "stage",
                 "done": bool, "moved": [namespace, ...]} | null}

``upgrade`` is what this cluster's install record says of an upgrade in progress (or the
last one): while it is open the cluster runs two revisions of two versions, which is
expected then and shown as such (``report.status_notes``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from meshctl import kube, revisions
from meshctl.ca import cacerts, certs
from meshctl.config import Config
from meshctl.errors import ClusterError
from meshctl.kube import remote_kubeconfig
from meshctl.mesh import install, remote_secret, upgrade_record


@dataclass(frozen=True)
class RevisionStatus:
    """One revision on one cluster: a control plane (primary) or an injector (remote)."""

    revision: str
    deployment: str | None  # None on a remote-role cluster (no istiod there)
    version: str | None
    ready: bool | None  # the Deployment's; None without one
    proxies: int | None  # None: not counted here, see proxies_error
    proxies_error: str | None = None
    tags: tuple[str, ...] = field(default=())  # revision tags pointing at it


@dataclass(frozen=True)
class ClusterStatus:
    name: str
    role: str
    network: str
    reachable: bool
    istio_version: str | None = None  # istiod's image tag; None: no istiod
    links: tuple[str, ...] = field(default=())  # clusters whose remote secret it holds
    link_errors: tuple[str, ...] = field(default=())  # remote secrets refused, and why
    cert_days_left: float | None = None
    east_west_address: str | None = None
    error: str | None = None
    revisions: tuple[RevisionStatus, ...] = field(default=())
    default_revision: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    namespaces: dict[str, list[str]] = field(default_factory=dict)
    revision_problems: tuple[str, ...] = field(default=())
    upgrade: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _proxies(k: kube.Kube, revision: str) -> tuple[int | None, str | None]:
    """(count, None), or (None, why): one revision's unanswered port-forward must not
    hide the rest of the row."""
    try:
        return revisions.connected_proxies(k, revision), None
    except ClusterError as e:
        return None, e.message


def _revision_rows(k: kube.Kube, role: str,
                   tags: dict[str, str]) -> tuple[RevisionStatus, ...]:
    by_revision: dict[str, list[str]] = {}
    for tag, rev in tags.items():
        by_revision.setdefault(rev, []).append(tag)
    if role == "remote":
        return tuple(
            RevisionStatus(rev, None, version, None, None,
                           "no istiod on a remote-role cluster: its proxies are counted "
                           "by its primary's istiod", tuple(by_revision.get(rev, ())))
            for rev, version in revisions.injector_revisions(k).items())
    rows = []
    for cp in revisions.control_planes(k):
        count, why = _proxies(k, cp.revision)
        rows.append(RevisionStatus(cp.revision, cp.deployment, cp.version, cp.ready, count,
                                   why, tuple(by_revision.get(cp.revision, ()))))
    return tuple(rows)


def istio_version(rows: tuple[RevisionStatus, ...], default: str | None) -> str | None:
    """The default revision's version, else the only revision's; None when it is not
    one version (several revisions, none the default)."""
    versions = {r.revision: r.version for r in rows}
    if default in versions:
        return versions[default]
    return next(iter(versions.values())) if len(versions) == 1 else None


def _problems(cluster: str, namespaces: dict[str, list[str]],
              rows: tuple[RevisionStatus, ...]) -> tuple[str, ...]:
    known = {r.revision for r in rows}
    return tuple(f"{cluster}: namespace(s) {', '.join(names)} select revision {rev!r}, "
                 "which has no istiod or injector here: their new pods get no sidecar"
                 for rev, names in namespaces.items() if rev not in known)


def _links(k: kube.Kube) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(sources of usable remote secrets, one line per refused one)."""
    selector = {"labelSelector": f"{remote_secret.LABEL}=true"}
    found, refused = [], []
    for s in k.items(f"/api/v1/namespaces/{remote_secret.NAMESPACE}/secrets", query=selector):
        name = s["metadata"]["name"]
        source = (s["metadata"].get("annotations") or {}).get(remote_secret.ANNOTATION)
        where = f"{k.cluster}: Secret {remote_secret.NAMESPACE}/{name}"
        if not isinstance(source, str) or not source:
            refused.append(f"{where}: no {remote_secret.ANNOTATION} annotation")
            continue
        try:
            remote_kubeconfig.from_secret(s, source, where)
        except remote_kubeconfig.Refused as e:
            refused.append(e.message)
            continue
        found.append(source)
    return tuple(sorted(found)), tuple(refused)


def _upgrade(k: kube.Kube) -> dict[str, Any] | None:
    """The install record's upgrade entry, as checked by its own rules (None: none)."""
    up = upgrade_record.parse(install.recorded(k))
    return None if up is None else {**asdict(up), "moved": list(up.moved)}


def one(config: Config, name: str) -> ClusterStatus:
    cluster = config.clusters[name]
    base = {"name": name, "role": cluster.role, "network": cluster.network}
    try:
        k = kube.client(cluster, deadline=min(15.0, kube.DEFAULT_DEADLINE))
        bundle = cacerts.read(k)
        links, link_errors = _links(k)
        tags = revisions.tags(k)
        rows = _revision_rows(k, cluster.role, tags)
        namespaces = revisions.namespaces_by_revision(k, tag_map=tags)
        default = tags.get(revisions.DEFAULT)
        return ClusterStatus(
            **base, reachable=True, istio_version=istio_version(rows, default), links=links,
            link_errors=link_errors,
            cert_days_left=round(certs.days_left(bundle.ca_cert), 1) if bundle else None,
            east_west_address=install.east_west_address(k, cluster),
            revisions=rows, default_revision=default, tags=tags, namespaces=namespaces,
            revision_problems=_problems(name, namespaces, rows), upgrade=_upgrade(k))
    except ClusterError as e:  # a config error (bad kubeconfig) stays exit 2, not a row
        return ClusterStatus(**base, reachable=False, error=e.message)


def collect(config: Config, names: list[str] | tuple[str, ...]) -> list[ClusterStatus]:
    """Status of every named cluster, read concurrently."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
        return list(pool.map(lambda n: one(config, n), names))
