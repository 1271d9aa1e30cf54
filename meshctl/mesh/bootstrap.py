"""bootstrap: the live run and the dry-run of one flow (:mod:`meshctl.mesh.flow`).

The steps are built from the plan alone; the dry-run prints them and the live run
executes the same list, so the dry-run shows exactly what the live run does.  A dry-run
contacts no cluster: it builds every certificate and manifest in memory, and only when
all of them exist writes them under ``--out`` (one folder per cluster) with ``plan.json``.

Values that only a live cluster can give (an east-west gateway's address, a remote
secret's token) appear as named placeholders, never as made-up values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshctl import files, istio, kube, manifests
from meshctl.ca import cacerts, certs, pki
from meshctl.config import Config
from meshctl.errors import UsageError
from meshctl.kube import Kube
from meshctl.mesh import facts, flow, install, remote_secret
from meshctl.mesh import teardown as teardown_mod
from meshctl.topology import Plan, east_west_placeholder

PLAN_FILE = "plan.json"
TOKEN_PLACEHOLDER = flow.TOKEN_PLACEHOLDER


@dataclass
class DryRun:
    """What a dry-run wrote and found."""

    out: Path
    root_source: str  # "existing" (from ca.dir) or "ephemeral" (in memory, not saved)
    root_fingerprint: str
    steps: list[flow.Step]
    written: list[Path] = field(default_factory=list)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    parent = out.parent if not out.exists() else out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is not a folder")


def dry_run(config: Config, plan: Plan, out: Path) -> DryRun:
    """Write every certificate and manifest bootstrap would apply; contact no cluster.

    The root CA comes from ``ca.dir`` when one exists; otherwise an ephemeral root is
    made in memory so the intermediates are real, and nothing of it but its
    certificate is written (a dry-run must not create CA state).
    """
    _check_out(out)
    if certs.root_exists(config.mesh.ca):
        root, root_source = certs.load_root(config.mesh.ca), "existing"
        certs.refuse_to_sign(root, config.mesh.ca)
    else:
        root, root_source = certs.make_root(config.mesh.ca), "ephemeral"

    # Build everything in memory first: a failure here leaves the disk untouched.
    payload: dict[Path, tuple[bytes, int]] = {}
    existing = {c.name: certs.load_bundle(certs.cluster_dir(config.mesh.ca, c.name), c.name)
                for c in plan.clusters}
    fresh = certs.make_intermediates(root, [  # keys made in parallel
        n for n, b in existing.items() if b is None or certs.chain_problem(b, root.cert)],
        config.mesh.ca)
    for c in plan.clusters:
        bundle = fresh.get(c.name) or existing[c.name]
        assert bundle is not None
        for name, data in bundle.files().items():
            mode = files.PRIVATE if name == certs.CA_KEY else files.PUBLIC
            payload[out / c.name / name] = (data, mode)
        payload[out / c.name / "cacerts.yaml"] = (
            cacerts.manifest(bundle, config.mesh.mesh_id).encode(), files.PRIVATE)
        for name, text in manifests.for_cluster(config, plan, c).items():
            payload[out / c.name / name] = (text.encode(), files.PUBLIC)

    result = DryRun(out=out, root_source=root_source,
                    root_fingerprint=pki.fingerprint(root.cert), steps=flow.steps(config, plan))
    document = plan_document(config, plan, result)
    payload[out / PLAN_FILE] = (json.dumps(document, indent=2).encode() + b"\n", files.PUBLIC)

    # all files or none (a full disk or a read-only --out is one line, nothing half-written)
    result.written.extend(files.write_all(payload))
    for c in plan.clusters:  # then drop files an earlier dry-run wrote that this plan has not
        folder = out / c.name
        if folder.is_dir():
            for stale in folder.iterdir():
                if stale.is_file() and stale not in payload and stale.suffix in (".pem",
                                                                                   ".yaml"):
                    stale.unlink()
    return result


def plan_document(config: Config, plan: Plan, result: DryRun) -> dict[str, Any]:
    """``plan.json``: the plan, the CA used, and the ordered steps."""
    placeholders = {east_west_placeholder(c.name): "address of the east-west gateway's "
                    "LoadBalancer (or the cluster file's eastWestAddress), known after install"
                    for c in plan.clusters if c.east_west_gateway}
    placeholders.update({TOKEN_PLACEHOLDER.format(source=link.source):
                         f"token of istio-system/istio-reader-service-account on {link.source}"
                         for link in plan.links})
    return {
        "apiVersion": "meshctl/v1",
        "kind": "BootstrapPlan",
        "dryRun": True,
        "mesh": {"meshID": plan.mesh_id, "trustDomain": config.mesh.trust_domain,
                 "model": plan.model, "multiNetwork": plan.multi_network},
        "ca": {"dir": str(config.mesh.ca.dir), "root": result.root_source,
               "rootFingerprint": result.root_fingerprint, "keyType": config.mesh.ca.key},
        "plan": plan.to_dict(),
        "placeholders": placeholders,
        "steps": [dict(s.describe(), order=i + 1) for i, s in enumerate(result.steps)],
    }


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
    return remote_secret.remove(kube.client(config.clusters[target]), source)
