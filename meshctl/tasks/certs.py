"""certs.*: the mesh's root CA and per-cluster intermediates."""

from __future__ import annotations

from invoke import task

from meshctl import certs, config, pki, report
from meshctl.tasks import _common
from meshctl.tasks._common import guard, not_yet

CLUSTERS_DIR_HELP = "folder of cluster files (default: $MESHCTL_CLUSTERS_DIR or ./clusters)"


@task(help={"force": "replace an existing root (the old CA folder is backed up first)",
            "clusters-dir": CLUSTERS_DIR_HELP})
@guard
def init(c, force=False, clusters_dir=None):
    """Create the mesh's root CA on this machine (ca.dir of mesh.yaml)."""
    cfg = config.load(_common.clusters_dir(clusters_dir))
    root, backup = certs.init_root(cfg.mesh.ca, force=force)
    if backup:
        report.err.print(f"backed up the previous CA folder to {backup}")
    report.out.print(f"root CA created in {cfg.mesh.ca.dir} ({cfg.mesh.ca.key}, "
                     f"{cfg.mesh.ca.root_days} days), SHA-256 {pki.fingerprint(root.cert)}")


@task(iterable=["cluster"], help={
    "cluster": "cluster to issue for (repeatable; default: every cluster file)",
    "no-apply": "only write the files under ca.dir/<cluster>/, do not push cacerts",
    "clusters-dir": CLUSTERS_DIR_HELP})
@guard
def issue(c, cluster=None, no_apply=False, clusters_dir=None):
    """Issue a cluster's intermediate CA and push it as istio-system/cacerts."""
    cfg = config.load(_common.clusters_dir(clusters_dir))
    names = cluster or sorted(cfg.clusters)
    for name in names:
        cfg.cluster(name)
    if not no_apply:
        not_yet("certs.issue without --no-apply", 6)
    root = certs.load_root(cfg.mesh.ca)
    for name in names:
        bundle, created = certs.ensure_intermediate(root, name, cfg.mesh.ca)
        verb = "issued" if created else "kept"
        report.out.print(f"{name}: {verb} intermediate serial {bundle.ca_cert.serial_number:x}, "
                         f"valid until {bundle.ca_cert.not_valid_after_utc:%Y-%m-%d}, in "
                         f"{certs.cluster_dir(cfg.mesh.ca, name)}")


@task(iterable=["cluster"], help={"cluster": "cluster to show (repeatable)",
                                  "json": "print one JSON document",
                                  "clusters-dir": CLUSTERS_DIR_HELP})
@guard
def status(c, cluster=None, json=False, clusters_dir=None):
    """Chain, expiry and local-vs-cluster match of every cluster's cacerts."""
    not_yet("certs.status", 6)


@task(help={"cluster": "cluster whose intermediate to replace",
            "root": "staged root rotation over all clusters", "step": "root rotation step 1-3",
            "clusters-dir": CLUSTERS_DIR_HELP})
@guard
def rotate(c, cluster=None, root=False, step=0, clusters_dir=None):
    """New intermediate under the same root, or one step of a staged root rotation."""
    not_yet("certs.rotate", 6)
