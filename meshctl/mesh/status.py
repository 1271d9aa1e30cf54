"""The mesh as it is now, read from the live clusters: one row per cluster.

Data first (``ClusterStatus``), rendering in ``report``.  Read-only: only GETs and
LISTs.  One unreachable cluster is a row that says so (why, in words: TLS, DNS,
refused, timed out) and the others are still read; the task then exits 3.

Each remote secret's kubeconfig is checked by :mod:`meshctl.kube.remote_kubeconfig`'s
allow-list (never given to a loader): a link whose secret carries an exec plugin, a
file path, other credentials or no kubeconfig at all is listed under ``link_errors``
with the Secret and the field, not as a working link.

``--json`` prints ``{"schema": "meshctl.status/v1", "clusters": [...]}``, one object
per cluster with the fields of :class:`ClusterStatus` (keys only added within v1)::

    {"name", "role", "network", "reachable": bool, "istio_version": str | null,
     "links": [source, ...], "link_errors": ["<cluster>: Secret …: <field> …", ...],
     "cert_days_left": float | null, "east_west_address": str | null,
     "error": str | null}
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from meshctl import istio, kube
from meshctl.ca import cacerts, certs
from meshctl.config import Config
from meshctl.errors import ClusterError
from meshctl.kube import remote_kubeconfig
from meshctl.mesh import install, remote_secret


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _istio_version(k: kube.Kube, config: Config) -> str | None:
    """The control plane's version label (set by istioctl), else its image tag."""
    name = istio.istiod_name(config.mesh.istio.revision)
    dep = k.get(f"/apis/apps/v1/namespaces/istio-system/deployments/{name}",
                what=f"read Deployment istio-system/{name}")
    if not dep:
        return None
    labelled = (dep["metadata"].get("labels") or {}).get("operator.istio.io/version")
    if labelled:
        return labelled
    containers = dep["spec"]["template"]["spec"].get("containers") or [{}]
    image = containers[0].get("image", "")
    return image.rsplit(":", 1)[-1] if ":" in image else image or "unknown"


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


def one(config: Config, name: str) -> ClusterStatus:
    cluster = config.clusters[name]
    base = {"name": name, "role": cluster.role, "network": cluster.network}
    try:
        k = kube.client(cluster, deadline=min(15.0, kube.DEFAULT_DEADLINE))
        bundle = cacerts.read(k)
        links, link_errors = _links(k)
        return ClusterStatus(
            **base, reachable=True, istio_version=_istio_version(k, config), links=links,
            link_errors=link_errors,
            cert_days_left=round(certs.days_left(bundle.ca_cert), 1) if bundle else None,
            east_west_address=install.east_west_address(k, cluster))
    except ClusterError as e:  # a config error (bad kubeconfig) stays exit 2, not a row
        return ClusterStatus(**base, reachable=False, error=e.message)


def collect(config: Config, names: list[str] | tuple[str, ...]) -> list[ClusterStatus]:
    """Status of every named cluster, read concurrently."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
        return list(pool.map(lambda n: one(config, n), names))
