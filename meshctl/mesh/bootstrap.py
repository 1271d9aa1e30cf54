"""bootstrap: the live run and the dry-run of one flow (:mod:`meshctl.mesh.flow`).

The steps are built from the plan alone; the dry-run prints them and the live run
executes the same list, so the dry-run shows exactly what the live run does.  A dry-run
contacts no cluster and signs nothing with the real root (:mod:`meshctl.mesh.dry_run`).

Values that only a live cluster can give (an east-west gateway's address, a remote
secret's token) appear as named placeholders, never as made-up values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshctl import istio, kube
from meshctl.ca import certs
from meshctl.config import Config
from meshctl.kube import Kube
from meshctl.mesh import facts, flow, install, remote_secret
from meshctl.mesh import teardown as teardown_mod
from meshctl.mesh.dry_run import PLAN_FILE, DryRun, dry_run, plan_document  # noqa: F401
from meshctl.topology import Plan

TOKEN_PLACEHOLDER = flow.TOKEN_PLACEHOLDER


# --- the live run ----------------------------------------------------------------------


@dataclass
class Outcome:
    """What a live run did; ``mutations`` counts writes the API servers saw from us."""

    clusters: dict[str, Kube]
    changes: list[str] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)
    executed: list[flow.Step] = field(default_factory=list)  # in the order they finished

    @property
    def mutations(self) -> int:
        return sum(k.mutations for k in self.clusters.values())


def run(config: Config, plan: Plan, *, skip_preflight: bool = False, force: bool = False,
        progress: install.Progress = install._quiet) -> Outcome:
    """The whole flow against live clusters, idempotently: :func:`flow.steps`, executed.

    Facts first: every client, istioctl, preflight (or its ownership checks), install
    records and live ``cacerts`` of every cluster before the first write anywhere; then
    the local CA, a CA check across all clusters, and only then changes.
    """
    live = flow.Live(config, plan, skip_preflight=skip_preflight, force=force,
                     progress=progress)
    flow.execute(flow.steps(config, plan), live)
    return Outcome(clusters=live.clients, changes=live.changes, addresses=live.addresses,
                   executed=live.executed)


def teardown(config: Config, plan: Plan, *,
             progress: install.Progress = install._quiet) -> dict[str, teardown_mod.Report]:
    """Undo bootstrap, removing only what meshctl recorded as its own (``teardown``)."""
    return teardown_mod.run(config, plan, each=facts.each, progress=progress)


# --- single-cluster entry points (install, link, unlink tasks) --------------------------


def install_manifests(config: Config, plan: Plan, name: str) -> dict[str, str]:
    """The IstioOperator files ``install`` would give ``name`` (placeholders where live)."""
    cp = plan.get(name)
    return {f"{c.key}": c.operator for c in install.components(config, plan, cp,
                                                                main_address=None)}


def install_one(config: Config, plan: Plan, name: str, *,
                progress: install.Progress = install._quiet) -> str | None:
    """Istio on one cluster: the flow's steps for ``name`` only (facts of that cluster
    first; a remote-role cluster reads its main's address).  Its ``cacerts`` goes in
    before istioctl, as in bootstrap: an istiod started without it signs with a
    self-signed CA of its own and keeps it until restarted."""
    cp = plan.get(name)
    local = ("root CA", "check cacerts")
    chosen = [s for s in flow.steps(config, plan) if (s.cluster == name and s.phase in (
        "facts", "prepare", "install primaries", "install remotes")) or (
        s.cluster is None and (s.phase in local or s.files[:1] == (f"{name}/{certs.CA_CERT}",)))]
    live = flow.Live(config, plan, skip_preflight=True, progress=progress, names=[name])
    address = flow.main_address(config, cp)
    if address:
        live.addresses[cp.control_plane or ""] = address
    flow.execute(chosen, live)
    return live.addresses.get(name)


def link(config: Config, *, target: str, source: str, server: str | None = None) -> str:
    clusters = facts.each([target, source], lambda n: kube.client(config.clusters[n]))
    secret = flow.remote_secret_of(config, clusters, istio.find(), source, server)
    return remote_secret.apply(clusters[target], secret)


def unlink(config: Config, *, target: str, source: str) -> bool:
    return remote_secret.remove(kube.client(config.clusters[target]), source,
                                mesh_id=config.mesh.mesh_id)
