"""The four stages of an upgrade by revision: start, move, finish, rollback.

Each follows Istio's canary-upgrade order across the whole mesh (see the package's
docstring), writes "begun" to every cluster's record before its first change and "done"
after its last, and is refused (one line, nothing written) when it comes out of order.
What each stage checks before it writes:

- ``start``: no other upgrade open; the jump from the recorded version to the new
  istioctl's is one Istio supports (:mod:`~meshctl.upgrade.skew`); a second istiod fits
  on every primary (:mod:`~meshctl.upgrade.capacity`).
- ``move``: start done.  Waves of one cluster each, istiod's view checked between them.
- ``finish``: every injected namespace moved, and no proxy still connected to the old
  revision on any primary (counted from istiod, :mod:`meshctl.revisions`).
- ``rollback``: before finish, with the istioctl that installed the old revision (the
  gateways were upgraded in place and go back the same way).
"""

from __future__ import annotations

from meshctl import istio, manifests, names, ownership, revisions
from meshctl.errors import CheckFailed, UsageError
from meshctl.mesh import facts, injection, install, install_record, upgrade_record
from meshctl.mesh.upgrade_record import Upgrade
from meshctl.upgrade import capacity, skew, state, steps
from meshctl.upgrade.steps import Run

EASTWEST = install_record.EASTWEST
TARGET = upgrade_record.TARGET


def refuse(problem: str | None, hint: str | None = None) -> None:
    if problem:
        raise CheckFailed(problem, hint=hint)


def eastwest(run: Run, ctl: istio.Istioctl, name: str, revision: str) -> None:
    cp = run.plan.get(name)
    if cp.east_west_gateway:
        steps.ensure_operator(run, ctl, name, EASTWEST,
                              manifests.eastwest_gateway(run.config, cp, revision=revision),
                              install.EASTWEST)


# --- start ---------------------------------------------------------------------------------

def start_problems(run: Run, ctl: istio.Istioctl, to: str) -> Upgrade:
    """Every refusal of ``start``, decided from what was read; the upgrade to record."""
    if not names.dns_label(to, longest=names.REVISION_MAX) or to == revisions.DEFAULT:
        raise UsageError(f"--to {names.shown(to, 60)}: a revision is a DNS label of at most "
                         f"{names.REVISION_MAX} characters, and not 'default'")
    too_long = [n for n in run.plan.names
                if len(ownership.control_plane_operator(n, to)) > 63]
    if too_long:
        raise UsageError(f"--to {to}: the IstioOperator name meshctl-<cluster>-{to} is over "
                         f"63 characters for {', '.join(too_long)}",
                         hint="choose a shorter revision")
    up = run.upgrade
    refuse(state.order_problem(state.START, up, to=to))
    if state.is_open(up):
        assert up is not None
        if up.to_version != ctl.version:
            raise CheckFailed(f"the upgrade in progress is to Istio {up.to_version}; --istioctl "
                              f"is {ctl.version} ({ctl.path})",
                              hint="re-run start with the istioctl it began with")
        return up
    old = steps.serving(run)
    if to == old:  # 'default' was refused above
        raise UsageError(f"--to {to}: the mesh already runs revision {to}")
    versions = {rec.get(install.REC_VERSION, "") for rec in run.records.values()}
    if len(versions) != 1 or not next(iter(versions)):
        raise CheckFailed(f"the clusters' records name different Istio versions "
                          f"({', '.join(sorted(versions))})")
    current = versions.pop()
    refuse(skew.jump_problem(current=current, target=ctl.version),
            hint="upgrade to a version the skew rules allow")
    live = _live_versions(run)
    for cluster, found in sorted(live.items()):
        for rev, version in sorted(found.items()):
            if version and version != current:
                raise CheckFailed(f"{cluster}: revision {rev} runs Istio {version}, the install "
                                  f"record says {current}: something else changed it",
                                  hint="bring it back to what meshctl installed first")
    return Upgrade(from_revision=old, to_revision=to, from_version=current,
                   to_version=ctl.version, stage=state.START, done=False)


def _live_versions(run: Run) -> dict[str, dict[str, str | None]]:
    return facts.each(run.primaries(),
                      lambda n: revisions.versions_by_revision(run.clients[n]))


def start(run: Run, ctl: istio.Istioctl, to: str) -> Upgrade:
    """The new revision beside the old on every primary, the remote profile on every
    remote, the gateways in place; done when each new istiod sees every linked cluster."""
    up = start_problems(run, ctl, to)
    if not state.is_open(run.upgrade):
        capacity.check(run, up)
    if not run.dry_run:
        steps.mark(run, up, state.START, done=False)

    def primary(name: str) -> None:
        text = steps.control_plane_text(run, name, up.to_revision)
        steps.ensure_operator(run, ctl, name, TARGET, text, istio.istiod_name(up.to_revision))
        eastwest(run, ctl, name, up.to_revision)
        steps.expose(run, name, serving_revision=up.from_revision, also=(up.to_revision,))

    facts.each(run.primaries(), primary)
    facts.each(run.remotes(), lambda n: steps.ensure_operator(
        run, ctl, n, TARGET, steps.control_plane_text(run, n, up.to_revision), None))
    if not run.dry_run:
        problems = steps.synced_problems(run, up.to_revision)
        if problems:
            raise CheckFailed(f"{problems[0]}" + (f" (and {len(problems) - 1} more)"
                                                  if len(problems) > 1 else ""),
                              hint="re-run the same start once it is fixed: it resumes")
        steps.mark(run, up, state.START, done=True)
    return up.at(state.START, done=True)


# --- move ----------------------------------------------------------------------------------

def planned(run: Run) -> dict[str, tuple[str, ...]]:
    """Each cluster's injected namespaces, from its cluster file."""
    return {c.name: run.config.clusters[c.name].inject_namespaces for c in run.plan.clusters}


def all_moved(run: Run) -> bool:
    for name, wanted in planned(run).items():
        own = upgrade_record.parse(run.records[name])
        if own is None or set(wanted) - set(own.moved):
            return False
    return True


def move(run: Run, *, cluster: str | None = None, namespace: str | None = None) -> Upgrade:
    """Relabel injected namespaces to the new revision and restart their workloads, one
    cluster (a wave) at a time, each wave followed by istiod's view of every cluster."""
    up = run.upgrade
    refuse(state.order_problem(state.MOVE, up))
    assert up is not None
    waves = planned(run)
    if cluster is not None and cluster not in waves:
        raise UsageError(f"--cluster {names.shown(cluster, 60)} is not in this mesh "
                         f"({', '.join(waves)})")
    if namespace is not None and not any(namespace in ns for ns in waves.values()):
        raise UsageError(f"--namespace {names.shown(namespace, 60)} is in no cluster's "
                         "injectNamespaces")
    if not run.dry_run:
        steps.mark(run, up, state.MOVE, done=False)
    for name, wanted in waves.items():
        if cluster is not None and name != cluster:
            continue
        own = upgrade_record.parse(run.records[name]) or up
        todo = [ns for ns in wanted if (namespace is None or ns == namespace)
                and ns not in own.moved]
        for ns in todo:
            k = run.clients[name]
            if run.dry_run:
                run.say(name, f"label namespace {ns} for revision {up.to_revision}")
            else:
                for line in injection.relabel(k, [ns], up.to_revision, run.plan.mesh_id):
                    run.say(name, line)
            for item in steps.restart(run, name, ns):
                run.say(name, f"restart {item}")
            own = own.with_moved([ns])
            steps.put(run, name, {upgrade_record.KEY: own.dump()})
        if todo and not run.dry_run:
            _between_waves(run, up)
    done = all_moved(run)
    if not run.dry_run:
        steps.mark(run, up, state.MOVE, done=done)
    return up.at(state.MOVE, done=done)


def _between_waves(run: Run, up: Upgrade) -> None:
    for revision in (up.from_revision, up.to_revision):
        problems = steps.synced_problems(run, revision)
        if problems:
            raise CheckFailed(f"after the wave: {problems[0]}",
                              hint="fix it, then re-run the same move: moved namespaces "
                                   "are recorded and not moved twice")
