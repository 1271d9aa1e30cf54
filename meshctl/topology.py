"""The mesh plan as data, computed once from configuration alone.

Every later step (dry-run, install, link, verify, teardown) reads this plan instead
of re-deriving "who is main, which networks, which secret goes where".  Pure
functions, no I/O: the whole module is testable without a cluster.

Rules (docs/architecture.md, Istio's multicluster install guides):
- every primary holds a remote secret for every other cluster in the set
  (multi-primary: all directions; primary-remote: only primaries read remotes);
- a ``remote``-role cluster runs no istiod: it is controlled by the main, whose
  istiod is exposed through the main's east-west gateway (``expose-istiod``);
- clusters on more than one network each get an east-west gateway (15443,
  AUTO_PASSTHROUGH) and expose their services; the main also gets one whenever
  it must expose istiod.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from meshctl.config import Cluster, Config
from meshctl.errors import UsageError

MULTI_PRIMARY = "multi-primary"
PRIMARY_REMOTE = "primary-remote"
MIXED = "multi-primary with remotes"


def east_west_placeholder(cluster: str) -> str:
    """The name the plan uses for an address known only once a gateway is up."""
    return f"<east-west-gateway-address:{cluster}>"


@dataclass(frozen=True)
class ClusterPlan:
    """What one cluster gets."""

    name: str
    role: str  # "main" or "remote" as chosen on the command line
    istio_role: str  # "primary" or "remote" from the cluster file
    network: str
    context: str
    east_west_gateway: bool
    expose_services: bool
    expose_istiod: bool
    control_plane: str | None  # the cluster whose istiod serves a remote-role cluster
    remote_secrets: tuple[str, ...]  # clusters whose secret this cluster holds


@dataclass(frozen=True)
class Link:
    """A remote secret for ``source`` applied to ``target`` (``target`` reads ``source``)."""

    target: str
    source: str


@dataclass(frozen=True)
class Plan:
    mesh_id: str
    model: str
    multi_network: bool
    main: str
    remotes: tuple[str, ...]
    clusters: tuple[ClusterPlan, ...]
    links: tuple[Link, ...] = field(default=())

    def get(self, name: str) -> ClusterPlan:
        return next(c for c in self.clusters if c.name == name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.clusters)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select(config: Config, main: str, remotes: list[str] | tuple[str, ...]) -> list[Cluster]:
    """Validate ``--main``/``--remote`` against the config; main first, then remotes."""
    if not main:
        raise UsageError("--main is required")
    if not remotes:
        raise UsageError("at least one --remote is required")
    main_cluster = config.cluster(main, flag="--main")
    if not main_cluster.is_primary:
        raise UsageError(f"--main {main}: {main_cluster.source} has role 'remote'; the main "
                         "cluster must be a primary (it runs istiod)")
    seen = {main}
    chosen = [main_cluster]
    for name in remotes:
        if name == main:
            raise UsageError(f"--remote {name} is also --main; a cluster cannot be its own remote")
        if name in seen:
            raise UsageError(f"--remote {name} is given twice")
        seen.add(name)
        chosen.append(config.cluster(name, flag="--remote"))
    contexts: dict[tuple[str | None, str], str] = {}
    for c in chosen:
        key = (c.kubeconfig, c.context)
        if key in contexts:
            raise UsageError(f"{c.source}: key 'context': {c.context!r} is also the context of "
                             f"cluster {contexts[key]!r}; one cluster cannot join twice")
        contexts[key] = c.name
    return chosen


def plan(config: Config, main: str, remotes: list[str] | tuple[str, ...]) -> Plan:
    """The whole mesh plan for ``main`` and ``remotes``."""
    chosen = select(config, main, remotes)
    networks = {c.network for c in chosen}
    multi_network = len(networks) > 1
    has_remote_role = any(not c.is_primary for c in chosen)
    primaries = [c for c in chosen if c.is_primary]
    if not has_remote_role:
        model = MULTI_PRIMARY
    elif len(primaries) == 1:
        model = PRIMARY_REMOTE
    else:
        model = MIXED

    links = tuple(Link(target=p.name, source=c.name)
                  for p in primaries for c in chosen if c.name != p.name)
    cluster_plans = []
    for c in chosen:
        is_main = c.name == main
        expose_istiod = is_main and has_remote_role
        cluster_plans.append(ClusterPlan(
            name=c.name,
            role="main" if is_main else "remote",
            istio_role=c.role,
            network=c.network,
            context=c.context,
            east_west_gateway=multi_network or expose_istiod,
            expose_services=multi_network,
            expose_istiod=expose_istiod,
            control_plane=None if c.is_primary else main,
            remote_secrets=tuple(link.source for link in links if link.target == c.name),
        ))
    return Plan(mesh_id=config.mesh.mesh_id, model=model, multi_network=multi_network,
                main=main, remotes=tuple(remotes), clusters=tuple(cluster_plans), links=links)


def plan_for(config: Config, cluster: str, *, main: str | None = None) -> Plan:
    """The plan one cluster is installed by: every cluster of the folder is the mesh.

    A primary is its own main; a remote-role cluster needs ``main`` (its control plane).
    """
    target = config.cluster(cluster, flag="--cluster")
    if not target.is_primary and not main:
        raise UsageError(f"--cluster {cluster} has role 'remote': pass --main with the "
                         "primary whose istiod will control it")
    chosen_main = main or cluster
    others = [n for n in sorted(config.clusters) if n != chosen_main]
    if not others:
        raise UsageError(f"{config.dir}: only one cluster file; a mesh needs two")
    return plan(config, chosen_main, others)
