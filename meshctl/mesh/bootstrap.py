"""The bootstrap flow: an ordered list of steps over the plan, and its dry-run.

The steps are data (:class:`Step`), built from the plan alone, so that the dry-run
prints exactly the flow a live run follows.  A dry-run contacts no cluster: it
builds every certificate and manifest in memory, and only when all of them exist
writes them under ``--out`` (one folder per cluster) with ``plan.json``.

Values that only a live cluster can give (an east-west gateway's address, a remote
secret's token) appear as named placeholders, never as made-up values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tenacity

from meshctl import files, istio, kube, manifests
from meshctl.ca import cacerts, certs, pki
from meshctl.config import Config
from meshctl.errors import CheckFailed, MeshctlError, UsageError
from meshctl.kube import Kube
from meshctl.mesh import facts, install, remote_secret
from meshctl.mesh import teardown as teardown_mod
from meshctl.topology import Link, Plan, east_west_placeholder

PLAN_FILE = "plan.json"
TOKEN_PLACEHOLDER = "<service-account-token:{source}>"


@dataclass(frozen=True)
class Step:
    """One thing bootstrap does, on one cluster (or locally when ``cluster`` is None)."""

    cluster: str | None
    action: str
    objects: tuple[str, ...]
    live: bool  # needs a reachable cluster (dry-run only describes it)
    files: tuple[str, ...] = ()  # what the dry-run wrote for this step, relative to --out
    needs: tuple[str, ...] = ()  # placeholders whose live values this step waits for
    note: str = ""


def _istiod(config: Config) -> str:
    return f"Deployment istio-system/{istio.istiod_name(config.mesh.istio.revision)}"


def steps(config: Config, plan: Plan) -> list[Step]:
    """The ordered flow for ``plan``: facts first, then local CA, then cluster changes."""
    out: list[Step] = []
    for c in plan.clusters:
        out.append(Step(c.name, "preflight", (), live=True,
                        note="resources, permissions, versions; abort on FAIL"))
    out.append(Step(None, "root CA", (f"{config.mesh.ca.dir}/root-cert.pem",), live=False,
                    note="created once on this machine, reused after; its key never leaves it"))
    for c in plan.clusters:
        out.append(Step(None, "intermediate CA", (f"{config.mesh.ca.dir}/{c.name}/",),
                        live=False, files=tuple(f"{c.name}/{f}" for f in certs.CACERTS_FILES)))
    for c in plan.clusters:
        out.append(Step(c.name, "apply", ("Namespace istio-system",), live=True,
                        files=(f"{c.name}/namespace.yaml",)))
        out.append(Step(c.name, "apply", ("Secret istio-system/cacerts",), live=True,
                        files=(f"{c.name}/cacerts.yaml",)))
    primaries = [c for c in plan.clusters if c.istio_role == "primary"]
    remotes = [c for c in plan.clusters if c.istio_role == "remote"]
    for c in primaries + remotes:  # the live flow's order: primaries, then remote-role
        needs = (east_west_placeholder(c.control_plane),) if c.control_plane else ()
        profile = " (profile remote)" if c.control_plane else ""
        objects = (f"IstioOperator meshctl-{c.name}{profile}",)
        if c.istio_role == "primary":
            objects += (_istiod(config),)
        out.append(Step(c.name, "istioctl install", objects, live=True,
                        files=(f"{c.name}/istio-operator.yaml",), needs=needs))
        if c.east_west_gateway:
            out.append(Step(c.name, "istioctl install",
                            ("Deployment istio-system/istio-eastwestgateway",
                             "Service istio-system/istio-eastwestgateway"), live=True,
                            files=(f"{c.name}/eastwest-gateway.yaml",), needs=needs))
        if c.expose_istiod:
            out.append(Step(c.name, "apply", ("Gateway istio-system/istiod-gateway",
                                              "VirtualService istio-system/istiod-vs"),
                            live=True, files=(f"{c.name}/expose-istiod.yaml",)))
        if c.expose_services:
            out.append(Step(c.name, "apply", ("Gateway istio-system/cross-network-gateway",),
                            live=True, files=(f"{c.name}/expose-services.yaml",)))
        if c.east_west_gateway:
            out.append(Step(c.name, "wait for east-west address", (), live=True,
                            note=f"fills {east_west_placeholder(c.name)}"))
    for link in plan.links:
        out.append(Step(link.target, "link",
                        (f"Secret istio-system/istio-remote-secret-{link.source}",),
                        live=True, needs=(TOKEN_PLACEHOLDER.format(source=link.source),),
                        note=f"istioctl create-remote-secret on {link.source}; "
                             "token read from the cluster, kept in memory"))
    for c in plan.clusters:
        out.append(Step(c.name, "wait", (_istiod(config) if c.istio_role == "primary"
                                         else "remote secret synced on the main",),
                        live=True, note="Available, with progress"))
    return out


@dataclass
class DryRun:
    """What a dry-run wrote and found."""

    out: Path
    root_source: str  # "existing" (from ca.dir) or "ephemeral" (in memory, not saved)
    root_fingerprint: str
    steps: list[Step]
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
    for c in plan.clusters:
        existing = certs.load_bundle(certs.cluster_dir(config.mesh.ca, c.name), c.name)
        if existing is not None and certs.chain_problem(existing, root.cert) is None:
            bundle = existing
        else:
            bundle = certs.make_intermediate(root, c.name, config.mesh.ca)
        for name, data in bundle.files().items():
            mode = files.PRIVATE if name == certs.CA_KEY else files.PUBLIC
            payload[out / c.name / name] = (data, mode)
        payload[out / c.name / "cacerts.yaml"] = (
            manifests.cacerts_secret(bundle).encode(), files.PRIVATE)
        for name, text in manifests.for_cluster(config, plan, c).items():
            payload[out / c.name / name] = (text.encode(), files.PUBLIC)

    flow = steps(config, plan)
    result = DryRun(out=out, root_source=root_source,
                    root_fingerprint=pki.fingerprint(root.cert), steps=flow)
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
        "steps": [dict(asdict(s), order=i + 1) for i, s in enumerate(result.steps)],
    }


# --- the live run ----------------------------------------------------------------------


@dataclass
class Outcome:
    """What a live run did; ``mutations`` counts writes the API servers saw from us."""

    clusters: dict[str, Kube]
    changes: list[str] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)

    @property
    def mutations(self) -> int:
        return sum(k.mutations for k in self.clusters.values())


def run(config: Config, plan: Plan, *, skip_preflight: bool = False, force: bool = False,
        progress: install.Progress = install._quiet) -> Outcome:
    """The whole flow against live clusters, idempotently (module docstring).

    Facts first (``facts.gather``): every client, istioctl, preflight (or its ownership
    checks), install records and live ``cacerts`` of every cluster before the first write
    anywhere; then the local CA, a CA check across all clusters, and only then changes.
    """
    names = list(plan.names)
    if skip_preflight:
        progress("*", "preflight skipped (--skip-preflight); ownership checks still run")
    known = facts.gather(config, plan, skip_preflight=skip_preflight, force=force)
    clusters, ctl = known.clients, known.istioctl
    outcome = Outcome(clusters=clusters)

    if certs.root_exists(config.mesh.ca):
        root = certs.load_root(config.mesh.ca)
        certs.refuse_to_sign(root, config.mesh.ca)
    else:
        root, _ = certs.init_root(config.mesh.ca)
        progress("*", f"root CA created in {config.mesh.ca.dir}")
    bundles = {n: certs.ensure_intermediate(root, n, config.mesh.ca)[0] for n in names}
    facts.check_cacerts(known, bundles)

    def prepare(name: str) -> None:
        k = clusters[name]
        install.wait_namespace_gone_if_terminating(k, progress=progress)
        for change in install.prepare_namespace(k, plan.get(name), plan.mesh_id, force=force):
            outcome.changes.append(f"{name}: {change}")
        result = cacerts.apply(k, bundles[name], backup_dir=config.mesh.ca.dir / "backups",
                               live=known.cacerts[name])
        if result != "unchanged":
            outcome.changes.append(f"{name}: cacerts {result}")
            progress(name, f"cacerts {result}")

    facts.each(names, prepare)

    def install_one(name: str) -> str | None:
        cp = plan.get(name)
        main_address = outcome.addresses.get(cp.control_plane) if cp.control_plane else None
        return install.install_cluster(clusters[name], ctl, config, plan, cp,
                                       main_address=main_address, force=force,
                                       progress=progress)

    primaries = [c.name for c in plan.clusters if c.istio_role == "primary"]
    remotes = [c.name for c in plan.clusters if c.istio_role == "remote"]
    for batch in (primaries, remotes):
        for name, address in facts.each(batch, install_one).items():
            if address:
                outcome.addresses[name] = address

    for target, source, result in link_all(config, clusters, ctl, plan.links):
        if result != "unchanged":
            outcome.changes.append(f"{target}: remote secret for {source} {result}")
            progress(target, f"remote secret for {source} {result}")
    return outcome


def _already_exists(exc: BaseException) -> bool:
    """istioctl lost a race to create the reader token Secret (another run made it)."""
    return isinstance(exc, MeshctlError) and "already exists" in str(exc)


def remote_secret_of(config: Config, clusters: dict[str, Kube], ctl: istio.Istioctl,
                     source: str, server: str | None = None) -> remote_secret.RemoteSecret:
    """One ``istioctl create-remote-secret`` on ``source``, parsed and checked, in memory.

    istioctl creates the reader's token Secret when it is missing; two runs at once can
    both try, and the loser fails with "already exists" although the token is then there:
    that one case is retried (twice, a second apart), never any other failure.
    """
    cluster = config.clusters[source]
    chosen = remote_secret.server_for(cluster, clusters[source].server, server)
    for attempt in tenacity.Retrying(retry=tenacity.retry_if_exception(_already_exists),
                                     stop=tenacity.stop_after_attempt(3),
                                     wait=tenacity.wait_fixed(1.0), reraise=True):
        with attempt:
            return remote_secret.create(ctl, cluster, chosen)
    raise AssertionError("unreachable")  # pragma: no cover


def link_all(config: Config, clusters: dict[str, Kube], ctl: istio.Istioctl,
             links: Sequence[Link]) -> list[tuple[str, str, str]]:
    """Every link of the plan: one istioctl per *source*, its secret applied to each target.

    Concurrency runs across sources, never on one source at once, so no two istioctl
    processes race to create the same token Secret, and N targets cost one istioctl.
    Returns (target, source, result) per link.
    """
    by_source: dict[str, list[str]] = {}
    for lk in links:
        by_source.setdefault(lk.source, []).append(lk.target)

    def one_source(source: str) -> list[tuple[str, str, str]]:
        secret = remote_secret_of(config, clusters, ctl, source)
        return [(target, source, remote_secret.apply(clusters[target], secret))
                for target in by_source[source]]

    done = facts.each(list(by_source), one_source)
    return [row for rows in done.values() for row in rows]


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
    """Istio on one cluster; a remote-role cluster reads its main's east-west address."""
    cp = plan.get(name)
    known = facts.gather(config, plan, skip_preflight=True, names=[name])
    k, ctl = known.clients[name], known.istioctl
    main_address = None
    if cp.control_plane:
        main_k = kube.client(config.clusters[cp.control_plane])
        main_address = install.east_west_address(main_k, config.clusters[cp.control_plane])
        if not main_address:
            raise CheckFailed(f"{cp.control_plane}: its east-west gateway has no address yet",
                              hint=f"install {cp.control_plane} first")
    return install.install_cluster(k, ctl, config, plan, cp, main_address=main_address,
                                   progress=progress)


def link(config: Config, *, target: str, source: str, server: str | None = None) -> str:
    clusters = facts.each([target, source], lambda n: kube.client(config.clusters[n]))
    secret = remote_secret_of(config, clusters, istio.find(), source, server)
    return remote_secret.apply(clusters[target], secret)


def unlink(config: Config, *, target: str, source: str) -> bool:
    return remote_secret.remove(kube.client(config.clusters[target]), source)
