"""``upgrade``: Istio upgraded across the mesh by revision, one stage per run."""

from __future__ import annotations

from meshctl import report
from meshctl.errors import UsageError
from meshctl.tasks import _common

STAGE_FLAGS = ("--to", "--move", "--finish", "--rollback")


@_common.mesh_task(iterable=("remote",), help={
    "main": "the main cluster, as for bootstrap",
    "remote": "a remote cluster (repeatable), as for bootstrap",
    "to": "start: install this new revision beside the old one (with --istioctl)",
    "istioctl": "the istioctl to run: the new one for --to and --finish, the one that "
                "installed the old revision for --rollback (default $MESHCTL_ISTIOCTL, "
                "then PATH)",
    "move": "relabel injected namespaces to the new revision and restart them, in waves",
    "cluster": "--move: only this cluster's namespaces",
    "namespace": "--move: only this namespace",
    "finish": "move the default tag, then remove the old revision (remotes first)",
    "rollback": "before --finish: namespaces back to the old revision, the new one removed",
    "dry-run": "say what the stage would do; write nothing"})
def upgrade(c, main=None, remote=None, to=None, istioctl=None, move=False, cluster=None,
            namespace=None, finish=False, rollback=False, dry_run=False, clusters_dir=None):
    """Upgrade Istio across the mesh by revision: --to R, then --move, then --finish."""
    from meshctl import istio, topology
    from meshctl.upgrade import closing, stages, state, steps

    chosen = [f for f, on in zip(STAGE_FLAGS, (to is not None, move, finish, rollback),
                                 strict=True) if on]
    if len(chosen) != 1:
        raise UsageError(f"give exactly one of {', '.join(STAGE_FLAGS)}"
                         + (f" (got {' and '.join(chosen)})" if chosen else ""),
                         hint="invoke upgrade --help")
    if (cluster or namespace) and not move:
        raise UsageError("--cluster and --namespace go with --move")
    if to is not None and not istioctl:
        raise UsageError("--to needs --istioctl PATH: the istioctl of the new Istio")
    if rollback and not istioctl:
        raise UsageError("--rollback needs --istioctl PATH: the istioctl that installed the "
                         "old revision (the gateways move back with it)")
    cfg = _common.load(clusters_dir)
    plan = topology.plan(cfg, main or "", remote or [])
    ctl = istio.find(flag=istioctl) if (to is not None or finish or rollback) else None
    run = steps.open_mesh(cfg, plan, dry_run=dry_run, progress=report.progress)
    if to is not None:
        up = stages.start(run, ctl, str(to))
    elif move:
        up = stages.move(run, cluster=cluster, namespace=namespace)
    elif finish:
        up = closing.finish(run, ctl)
    else:
        up = closing.rollback(run, ctl)
    say = {"markup": False, "highlight": False, "soft_wrap": True}
    for line in run.done:
        report.out.print(line, **say)
    if not run.done:
        report.out.print("nothing to do: the stage was already complete", **say)
    stage = f"{up.stage} {'done' if up.done else 'not complete'}"
    if dry_run:
        report.out.print(f"dry run, nothing written: upgrade {up.from_revision or 'default'}"
                         f" -> {up.to_revision}: {up.stage}", **say)
        return
    report.out.print(f"upgrade {up.from_revision or 'default'} -> {up.to_revision}: "
                     f"{stage}; next: {state.next_step(up)}", **say)
    if up.stage == state.FINISH and up.done and not dry_run:
        report.out.print(f"the mesh now runs revision {up.to_revision}: set istio.revision: "
                         f"{up.to_revision} in mesh.yaml before the next bootstrap", **say)
