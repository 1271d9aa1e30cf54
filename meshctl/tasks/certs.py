"""certs.*: the mesh's root CA, per-cluster intermediates, their status and rotation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from invoke.exceptions import Exit

from meshctl import report
from meshctl.errors import UsageError
from meshctl.tasks import _common

if TYPE_CHECKING:  # the task bodies import what they run: `meshctl --help` stays fast
    from meshctl.ca import rotation


@_common.mesh_task(help={
    "force": "replace an existing root (its key and certificate are copied to "
        "ca.dir/backups/root.backup-<time>/ first)"})
def init(c, force=False, clusters_dir=None):
    """Create the mesh's root CA on this machine (ca.dir of mesh.yaml)."""
    from meshctl.ca import certs, pki, rotation

    cfg = _common.load(clusters_dir)
    rotation.refuse_if_rotating(cfg.mesh.ca, "certs.init")
    root, backup = certs.init_root(cfg.mesh.ca, force=force)
    if backup:
        report.err.print(f"backed up the previous root (key and certificate) to {backup}")
    report.out.print(f"root CA created in {cfg.mesh.ca.dir} ({cfg.mesh.ca.key}, "
                     f"{cfg.mesh.ca.root_days} days), SHA-256 {pki.fingerprint(root.cert)}")


@_common.mesh_task(iterable=("cluster",), help={
    "cluster": "cluster to issue for (repeatable; default: every cluster file)",
    "no-apply": "only write the files under ca.dir/<cluster>/, do not push cacerts",
    "force": "replace a cacerts Secret holding another CA (saved to ca.dir/backups/ first)"})
def issue(c, cluster=None, no_apply=False, force=False, clusters_dir=None):
    """Issue a cluster's intermediate CA and push it as istio-system/cacerts."""
    from meshctl import kube
    from meshctl.ca import cacerts, certs, rotation

    cfg = _common.load(clusters_dir)
    names = _common.selected(cfg, cluster)
    rotation.refuse_if_rotating(cfg.mesh.ca, "certs.issue")
    root = certs.load_root(cfg.mesh.ca)
    certs.refuse_to_sign(root, cfg.mesh.ca)
    bundles = {}
    for name, (bundle, created) in certs.ensure_intermediates(root, names, cfg.mesh.ca).items():
        bundles[name] = bundle
        verb = "issued" if created else "kept"
        end = bundle.ca_cert.not_valid_after_utc
        cut = (" (the root's end: rotate the root before then)"
               if end == root.cert.not_valid_after_utc else "")
        report.out.print(f"{name}: {verb} intermediate serial {bundle.ca_cert.serial_number:x}, "
                         f"valid until {end:%Y-%m-%d}{cut}, in "
                         f"{certs.cluster_dir(cfg.mesh.ca, name)}")
    if no_apply:
        return
    clients = {name: kube.client(cfg.clusters[name]) for name in names}
    outcomes = cacerts.apply_all(clients, bundles, mesh_id=cfg.mesh.mesh_id, force=force,
                                 backup_dir=certs.backups_dir(cfg.mesh.ca))
    for name, outcome in outcomes.items():
        report.out.print(f"{name}: {cacerts.WHAT} {outcome}")


@_common.mesh_task(iterable=("cluster",), help={
    "cluster": "cluster to show (repeatable; default: all)",
    "json": "print one JSON document (schema in "
        "meshctl/ca/status.py)"})
def status(c, cluster=None, json=False, clusters_dir=None):
    """Chain, expiry and local-vs-cluster match of every cluster's cacerts; exit 1 on FAIL."""
    from meshctl.ca import status as cert_status

    cfg = _common.load(clusters_dir)
    result = cert_status.collect(cfg, cluster or None)
    if json:
        report.print_json(result.to_json())
    else:
        report.print_certs_status(result)
    if result.failed:
        raise Exit(code=1)


@_common.mesh_task(help={
    "cluster": "cluster whose intermediate to replace (same root)",
    "root": "staged root rotation over all clusters (with --step)",
    "step": "root rotation step: 1 trust old+new, 2 re-issue intermediates, "
        "3 drop the old root",
    "force": "with --root --step 3: drop the old root before ca.workloadCertTTL has "
        "passed since step 2 (workload certificates still under it then fail mTLS)"})
def rotate(c, cluster=None, root=False, step=None, force=False, clusters_dir=None):
    """New intermediate under the same root, or one step of a staged root rotation."""
    from meshctl.ca import cacerts, rotation

    step = int(_common.number("--step", step, default=0))
    cfg = _common.load(clusters_dir)
    if force and not (root and step == 3):
        raise UsageError("--force only goes with --root --step 3 (it skips the wait for "
                         "workload certificates before the old root is dropped)")
    if root:
        if cluster:
            raise UsageError("--root rotates every cluster of the mesh; drop --cluster")
        if step not in rotation.STEPS:
            raise UsageError("--root needs --step 1, 2 or 3 (one step at a time, "
                             "certs.status between)")
        result = rotation.run_step(cfg, step, progress=report.err.print, force=force)
        _print_step(result)
        return
    if step:
        raise UsageError("--step only goes with --root")
    if not cluster:
        raise UsageError("certs.rotate needs --cluster NAME (or --root --step N)")
    cfg.cluster(cluster)
    done = rotation.rotate_intermediate(cfg, cluster)
    report.out.print(f"{done.cluster}: new intermediate serial {done.new_serial} (was "
                     f"{done.old_serial or 'none'}), valid until {done.not_after:%Y-%m-%d}, "
                     f"same root {done.root[:23]}…")
    report.out.print(f"{done.cluster}: {cacerts.WHAT} {done.outcome}")
    report.out.print(rotation.RELOAD_NOTE)


def _print_step(result: rotation.StepResult) -> None:
    from meshctl.ca import rotation

    what = rotation.STEPS[result.step]
    if result.noop:
        report.out.print(f"root rotation step {result.step} ({what}) already done on every "
                         "cluster: nothing changed")
    else:
        report.out.print(f"root rotation step {result.step} done: {what}")
    report.out.print(f"old root {result.old_root}\nnew root {result.new_root}", highlight=False)
    for c in result.clusters:
        report.out.print(f"  {c.cluster}: {c.detail}", highlight=False)
    if result.archived:
        report.out.print(f"old root archived in {result.archived}")
    if result.step3_from is not None:
        report.out.print(f"next, once certs.status is clean and not before "
                         f"{result.step3_from:%Y-%m-%d %H:%M:%S} UTC (workload certificates "
                         f"renew within {result.wait}): certs.rotate --root --step 3")
    elif result.next_step:
        report.out.print(f"next, once certs.status is clean: "
                         f"certs.rotate --root --step {result.next_step}")
    if result.step == 2 and not result.noop:
        report.out.print(rotation.RELOAD_NOTE)
