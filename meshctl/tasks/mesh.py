"""The mesh-wide tasks: preflight, install, link, bootstrap, status, verify, canary, teardown."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from meshctl import envvars, report
from meshctl.errors import CheckFailed, ClusterError, UsageError
from meshctl.tasks import _common

if TYPE_CHECKING:  # the task bodies import what they run: `meshctl --help` stays fast
    from meshctl import config, topology


@_common.mesh_task(iterable=("cluster",), help={
    "cluster": "cluster to check (repeatable)",
    "json": "print one JSON document"})
def preflight(c, cluster=None, json=False, clusters_dir=None):
    """Check that each cluster can take the mesh (resources, permissions, versions)."""
    from invoke.exceptions import Exit

    from meshctl.preflight import runner  # imported here: only this task needs it

    cfg = _common.load(clusters_dir)
    reports = runner.run(cfg, cluster or [])
    document = runner.document(reports)
    if json:
        report.print_json(document)
    else:
        for one in document["clusters"]:
            report.out.print(report.preflight_table(one))
        for line in report.preflight_summary(document):
            report.out.print(line, highlight=False)
    if document["exitCode"]:
        raise Exit(code=document["exitCode"])


@_common.mesh_task(help={
    "cluster": "cluster to install",
    "main": "the main cluster (needed for a role: remote cluster)",
    "dry-run": "print the IstioOperator files, contact no cluster"})
def install(c, cluster=None, main=None, dry_run=False, clusters_dir=None):
    """Install Istio (and the east-west gateway) on one cluster with istioctl."""
    from meshctl import topology
    from meshctl.mesh import bootstrap as flow

    cfg = _common.load(clusters_dir)
    plan = topology.plan_for(cfg, cluster or "", main=main)
    if dry_run:
        for name, text in flow.install_manifests(cfg, plan, cluster).items():
            report.out.print(f"# {name}\n{text}", markup=False, highlight=False)
        return
    address = flow.install_one(cfg, plan, cluster, progress=report.progress)
    report.out.print(f"{cluster}: Istio installed"
                     + (f"; east-west gateway at {address}" if address else ""))


@_common.mesh_task(help={
    "main": "cluster that receives the secret", "remote": "cluster it reads",
    "server": "API server URL written into the secret (default: the remote's "
        "apiServer, else its kubeconfig's server unless loopback)"})
def link(c, main=None, remote=None, server=None, clusters_dir=None):
    """Create the remote secret of REMOTE and apply it to MAIN."""
    from meshctl import topology
    from meshctl.mesh import bootstrap as flow

    cfg = _common.load(clusters_dir)
    topology.select(cfg, main or "", [remote] if remote else [])
    result = flow.link(cfg, target=main, source=remote, server=server)
    report.out.print(f"{main}: remote secret for {remote} {result}")


@_common.mesh_task(help={
    "main": "cluster holding the secret", "remote": "cluster whose secret goes"})
def unlink(c, main=None, remote=None, clusters_dir=None):
    """Remove REMOTE's remote secret from MAIN."""
    from meshctl import topology
    from meshctl.mesh import bootstrap as flow

    cfg = _common.load(clusters_dir)
    topology.select(cfg, main or "", [remote] if remote else [])
    removed = flow.unlink(cfg, target=main, source=remote)
    report.out.print(f"{main}: remote secret for {remote} "
                     + ("removed" if removed else "was not there"))


@_common.mesh_task(iterable=("remote",), help={
    "main": "the main (primary) cluster",
    "remote": "a cluster to join to it (repeatable)",
    "dry-run": "contact no cluster: write every certificate and manifest under --out",
    "out": "where --dry-run writes (default: out/)",
    "skip-preflight": "do not run preflight first (says so when used; the ownership "
        "checks still run)",
    "force": "take over fields another tool manages (named in the output); never adopts "
        "an Istio meshctl did not install"})
def bootstrap(c, main=None, remote=None, dry_run=False, out="out", skip_preflight=False,
              force=False, clusters_dir=None):
    """Join clusters into one mesh: preflight, certs, install, gateways, links (idempotent)."""
    from meshctl import topology
    from meshctl.mesh import bootstrap as flow
    from meshctl.mesh import status as status_mod

    cfg = _common.load(clusters_dir)
    plan = topology.plan(cfg, main or "", remote or [])
    if dry_run:
        _dry_run(cfg, plan, Path(out))
        return
    if skip_preflight:
        report.err.print("warning: --skip-preflight: the clusters were not checked first")
    outcome = flow.run(cfg, plan, skip_preflight=skip_preflight, force=force,
                       progress=report.progress)
    for change in outcome.changes:
        if "took over" in change:  # said, never silent; only --force's when it was given
            why = ("--force: " if force else
                   "another writer had changed meshctl's own object, now put back: ")
            report.err.print(f"warning: {why}{change}", markup=False, highlight=False)
    if outcome.mutations == 0:
        report.out.print("nothing to do: every cluster already matches the plan")
    else:
        report.out.print(f"done: {len(outcome.changes)} changes, "
                         f"{outcome.mutations} write requests")
    report.out.print(report.status_table(status_mod.collect(cfg, plan.names)))


def _dry_run(cfg: config.Config, plan: topology.Plan, out: Path) -> None:
    from meshctl.mesh import bootstrap as flow
    from meshctl.mesh import dry_run as dry_run_mod

    result = flow.dry_run(cfg, plan, out)
    document = flow.plan_document(cfg, plan, result)
    report.out.print(report.plan_table(document))
    ca_dir = cfg.mesh.ca.dir
    if result.root_source == "existing":
        issued = [n for n, d in result.intermediates.items() if d["status"] == "to be issued"]
        root = (f"existing root from {ca_dir}, nothing signed with it, no key copied out"
                + (f"; intermediates to be issued described in {out}/<cluster>/"
                   f"{dry_run_mod.INTERMEDIATE_FILE} ({', '.join(issued)})"
                   if issued else ""))
    else:
        root = (f"EPHEMERAL root (no CA in {ca_dir}; its files are marked so and are not "
                "what bootstrap applies; run certs.init to keep a root)")
    report.out.print(f"dry-run: wrote {len(result.written)} files under {out}/ "
                     f"({', '.join(plan.names)} + {flow.PLAN_FILE}); CA: {root}; "
                     "no cluster was contacted", markup=False, highlight=False)
    for path in result.removed:
        report.err.print(f"removed {path} (written by an earlier dry-run, not by this one)",
                         markup=False, highlight=False)
    for path in result.stray_keys:
        report.err.print(f"warning: {path}: a CA key this dry-run did not write (dry-runs "
                         "before this version left intermediates signed by the real root "
                         "there, with their keys); delete it unless it is yours",
                         markup=False, highlight=False)


@_common.mesh_task(iterable=("cluster",), help={
    "cluster": "cluster to show (repeatable; default: all)",
    "json": "print one JSON document"})
def status(c, cluster=None, json=False, clusters_dir=None):
    """One table from the live clusters: roles, networks, Istio revisions, links, cert days.

    Per cluster: each Istio revision with its version, readiness and connected proxies,
    where the default tag points, and the injected namespaces per revision.
    """
    from meshctl.mesh import status as status_mod

    cfg = _common.load(clusters_dir)
    names = _common.selected(cfg, cluster)
    rows = status_mod.collect(cfg, names)
    if json:
        report.print_json({"schema": "meshctl.status/v1",
                           "clusters": [r.to_dict() for r in rows]})
    else:
        report.out.print(report.status_table(rows))
        for line in report.status_notes(rows):
            report.out.print(line, highlight=False, markup=False)
    unreadable = [r for r in rows if not r.reachable]
    if unreadable:  # the table has every row; the exit code says not all could be read
        raise ClusterError("; ".join(r.error or f"{r.name}: unreachable" for r in unreadable))


@_common.mesh_task(iterable=("remote",), help={
    "main": "the main cluster", "remote": "a remote cluster (repeatable)",
    "json": "print one JSON document (schema meshctl.verify/v1)",
    "junit": "also write a JUnit XML report to this file (one testcase per check)",
    "keep": "leave the sample apps in their namespace (default: remove them)",
    "namespace": "namespace for the sample apps, one verify owns or creates (default "
        "meshctl-verify); an existing one that is not verify's for this mesh ID is "
        "refused",
    "requests": "how many requests the curl client sends (default: enough that a healthy "
        "mesh misses a cluster by bad luck in under 0.1 % of runs; the rate is printed)",
    "timeout": "seconds to wait for the sample apps to become ready (default 180)",
    "probe": "what carries the traffic half: auto (default, or $MESHCTL_VERIFY_PROBE): "
        "the sandbox's real workloads on sandbox clusters, sidecar pods elsewhere; "
        "pods: helloworld and curl with sidecars; workloads: the sandbox's, or exit 2"})
def verify(c, main=None, remote=None, json=False, junit=None, keep=False, namespace=None,
           requests=None, timeout=None, probe=None, clusters_dir=None):
    """Check the mesh spans the clusters: static checks, then sample traffic."""
    from meshctl import files, topology
    from meshctl import verify as verifier

    count = None if requests is None else int(_common.number("--requests", requests,
                                                             default=0, minimum=1))
    if count is not None and count > verifier.sizing.MAX_REQUESTS:
        raise UsageError(f"--requests {requests}: at most {verifier.sizing.MAX_REQUESTS}")
    wait = _common.number("--timeout", timeout, default=180, minimum=1, whole=False)
    ns = _common.dns_label("--namespace", namespace, default=verifier.DEFAULT_NAMESPACE)
    cfg = _common.load(clusters_dir)
    plan = topology.plan(cfg, main or "", remote or [])
    if junit:
        files.check_writable(Path(junit))  # before any cluster is touched
    kind = probe or envvars.choice("MESHCTL_VERIFY_PROBE", PROBES, default="auto")
    if kind not in PROBES:
        raise UsageError(f"--probe {kind!r}: expected one of {', '.join(PROBES)}")
    # the sandbox's own workloads where they can run; None: helloworld and curl pods
    # (auto: not across networks, where the sandbox has no east-west gateway to carry them)
    one_network = len({cfg.clusters[n].network for n in plan.names}) == 1
    chosen = (None if kind == "pods" else _common.probe_for(cfg, needed_by="--probe workloads")
              if kind == "workloads" else _common.sandbox_probe(cfg) if one_network else None)
    result = verifier.run(cfg, plan, requests=count, keep=keep, namespace=ns, timeout=wait,
                          progress=report.progress, probe=chosen)
    if junit:
        files.write_atomic(Path(junit), verifier.junit_xml(result))
    if json:
        report.print_json(result.to_json())
    else:
        report.out.print(report.verify_table(result))
        for line in result.notes() + report.verify_summary(result):
            report.out.print(line, highlight=False)
    if not result.passed:
        failed = sum(1 for check in result.checks if check.status == "FAIL")
        raise CheckFailed(f"verify: {failed} check(s) failed")


PROBES = ("auto", "pods", "workloads")


@_common.mesh_task(help={
    "cluster": "a cluster of the mesh: the objects go to every primary cluster of "
        "its clusters folder (each istiod configures its own proxies)",
    "namespace": "namespace of the service",
    "service": "service to split", "weights": "e.g. v1=80,v2=20 (must add up to 100)",
    "promote": "route 100% to this version (instead of --weights)",
    "force": "take over a VirtualService/DestinationRule meshctl does not manage "
        "(their extra spec fields are removed)",
    "dry-run": "print the YAML, contact no cluster",
    "observe": "then send N calls from --cluster's cluster through a probe and compare "
        "the split with the weights (exact binomial bounds; exit 1 outside them)",
    "json": "print one JSON document (schema meshctl.canary/v1)"})
def canary(c, cluster=None, namespace=None, service=None, weights=None, promote=None,
           force=False, dry_run=False, observe=None, json=False, clusters_dir=None):
    """Weighted routing between versions: DestinationRule subsets + VirtualService.

    Written to every primary of the mesh, host ``<service>.<namespace>.svc.<clusterDomain>``;
    every primary is checked (Service, namespace, who owns what is there) before the
    first write.
    """
    from meshctl import traffic  # imported here: only this task needs it

    cfg = _common.load(clusters_dir)
    opts = traffic.options(cfg, cluster=cluster, namespace=namespace, service=service,
                           weights=weights, promote=promote, force=force)
    count = _common.observe_count(observe)
    if dry_run:
        report.out.print(traffic.to_yaml(traffic.objects(opts)), markup=False,
                         highlight=False, end="")
        return
    probe = _common.probe_for(cfg, needed_by="--observe") if count else None
    result = traffic.apply(cfg, opts)
    seen = None
    if probe is not None:
        try:
            seen = traffic.observe(opts, probe, count)
        finally:
            probe.close()
    if json:
        report.print_json({**result.to_json(), **({"observed": seen.to_json()} if seen else {})})
    else:
        report.print_canary(result)
        if seen:
            report.print_observation(seen)
    if seen and not seen.judgement.ok:
        raise CheckFailed(f"canary: the observed split of {seen.judgement.sent} calls does "
                          "not match the weights" + (f" ({seen.judgement.failed} failed)"
                                                     if seen.judgement.failed else ""))


@_common.mesh_task(iterable=("remote",), help={
    "main": "the main cluster",
    "remote": "a remote cluster (repeatable)",
    "yes": "really remove everything bootstrap made"})
def teardown(c, main=None, remote=None, yes=False, clusters_dir=None):
    """Undo bootstrap in reverse (secrets, gateways, Istio, cacerts); keeps the local CA."""
    from meshctl import topology
    from meshctl.mesh import bootstrap as flow

    cfg = _common.load(clusters_dir)
    plan = topology.plan(cfg, main or "", remote or [])
    if not yes:
        raise UsageError(f"teardown removes Istio, gateways, remote secrets and cacerts from "
                         f"{', '.join(plan.names)}; re-run with --yes to do it")
    reports = flow.teardown(cfg, plan, progress=report.progress)
    removed = 0
    for name, done in reports.items():
        for line in done.removed:
            report.out.print(f"{name}: removed {line}", markup=False, highlight=False)
        for line in done.restored:
            report.out.print(f"{name}: restored {line}", markup=False, highlight=False)
        for line in done.kept:
            report.out.print(f"{name}: kept {line}", markup=False, highlight=False)
        removed += len(done.removed)
    report.out.print("nothing to remove" if not removed else
                     f"teardown done; the local CA in {cfg.mesh.ca.dir} is kept")


