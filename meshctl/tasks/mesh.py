"""The mesh-wide tasks: preflight, install, link, bootstrap, status, verify, canary, teardown."""

from __future__ import annotations

from pathlib import Path

from invoke import task

from meshctl import bootstrap as flow
from meshctl import config, report, topology
from meshctl import status as status_mod
from meshctl.tasks import _common
from meshctl.tasks._common import guard, not_yet

CLUSTERS_DIR_HELP = "folder of cluster files (default: $MESHCTL_CLUSTERS_DIR or ./clusters)"


@task(iterable=["cluster"], help={"cluster": "cluster to check (repeatable)",
                                  "json": "print one JSON document",
                                  "clusters-dir": CLUSTERS_DIR_HELP})
@guard
def preflight(c, cluster=None, json=False, clusters_dir=None):
    """Check that each cluster can take the mesh (resources, permissions, versions)."""
    from invoke.exceptions import Exit

    from meshctl import preflight as checks  # imported here: only this task needs it

    cfg = config.load(_common.clusters_dir(clusters_dir))
    reports = checks.run(cfg, cluster or [])
    document = checks.document(reports)
    if json:
        report.print_json(document)
    else:
        for one in document["clusters"]:
            report.out.print(report.preflight_table(one))
        for line in report.preflight_summary(document):
            report.out.print(line, highlight=False)
    if document["exitCode"]:
        raise Exit(code=document["exitCode"])


@task(help={"cluster": "cluster to install", "dry-run": "render only, contact no cluster",
            "clusters-dir": CLUSTERS_DIR_HELP})
@guard
def install(c, cluster=None, dry_run=False, clusters_dir=None):
    """Install Istio (and the east-west gateway) on one cluster with istioctl."""
    not_yet("install", 7)


@task(help={"main": "cluster that receives the secret", "remote": "cluster it reads",
            "server": "API server URL written into the secret",
            "clusters-dir": CLUSTERS_DIR_HELP})
@guard
def link(c, main=None, remote=None, server=None, clusters_dir=None):
    """Create the remote secret of REMOTE and apply it to MAIN."""
    not_yet("link", 7)


@task(help={"main": "cluster holding the secret", "remote": "cluster whose secret goes",
            "clusters-dir": CLUSTERS_DIR_HELP})
@guard
def unlink(c, main=None, remote=None, clusters_dir=None):
    """Remove REMOTE's remote secret from MAIN."""
    not_yet("unlink", 7)


@task(iterable=["remote"], help={
    "main": "the main (primary) cluster",
    "remote": "a cluster to join to it (repeatable)",
    "dry-run": "contact no cluster: write every certificate and manifest under --out",
    "out": "where --dry-run writes (default: out/)",
    "skip-preflight": "do not run preflight first (says so when used)",
    "clusters-dir": CLUSTERS_DIR_HELP})
@guard
def bootstrap(c, main=None, remote=None, dry_run=False, out="out", skip_preflight=False,
              clusters_dir=None):
    """Join clusters into one mesh: preflight, certs, install, gateways, links (idempotent)."""
    cfg = config.load(_common.clusters_dir(clusters_dir))
    plan = topology.plan(cfg, main or "", remote or [])
    if dry_run:
        _dry_run(cfg, plan, Path(out))
        return
    if skip_preflight:
        report.err.print("warning: --skip-preflight: the clusters were not checked first")
    outcome = flow.run(cfg, plan, skip_preflight=skip_preflight, progress=report.progress)
    if outcome.mutations == 0:
        report.out.print("nothing to do: every cluster already matches the plan")
    else:
        report.out.print(f"done: {len(outcome.changes)} changes, "
                         f"{outcome.mutations} write requests")
    report.out.print(report.status_table(status_mod.collect(cfg, plan.names)))


def _dry_run(cfg: config.Config, plan: topology.Plan, out: Path) -> None:
    result = flow.dry_run(cfg, plan, out)
    document = flow.plan_document(cfg, plan, result)
    report.out.print(report.plan_table(document))
    ca_dir = cfg.mesh.ca.dir
    root = (f"existing root from {ca_dir}" if result.root_source == "existing"
            else f"ephemeral root (no CA in {ca_dir}; run certs.init to keep one)")
    report.out.print(f"dry-run: wrote {len(result.written)} files under {out}/ "
                     f"({', '.join(plan.names)} + {flow.PLAN_FILE}); CA: {root}; "
                     "no cluster was contacted")


@task(help={"json": "print one JSON document", "clusters-dir": CLUSTERS_DIR_HELP})
@guard
def status(c, json=False, clusters_dir=None):
    """One table from the live clusters: roles, networks, Istio version, links, cert days."""
    not_yet("status", 7)


@task(help={"main": "the main cluster", "remote": "a remote cluster",
            "clusters-dir": CLUSTERS_DIR_HELP})
@guard
def verify(c, main=None, remote=None, clusters_dir=None):
    """Check the mesh spans the clusters: static checks, then sample traffic."""
    not_yet("verify", 8)


@task(help={"cluster": "cluster to configure", "namespace": "namespace of the service",
            "service": "service to split", "weights": "e.g. v1=80,v2=20 (must add up to 100)",
            "clusters-dir": CLUSTERS_DIR_HELP})
@guard
def canary(c, cluster=None, namespace=None, service=None, weights=None, clusters_dir=None):
    """Weighted routing between versions: DestinationRule subsets + VirtualService."""
    not_yet("canary", 8)


@task(help={"main": "the main cluster", "remote": "a remote cluster",
            "yes": "really remove everything bootstrap made", "clusters-dir": CLUSTERS_DIR_HELP})
@guard
def teardown(c, main=None, remote=None, yes=False, clusters_dir=None):
    """Undo bootstrap in reverse (secrets, gateways, Istio, cacerts); keeps the local CA."""
    not_yet("teardown", 7)
