"""The stages that close an upgrade: ``finish`` (keep the new revision) and ``rollback``
(keep the old one).  Both remove one revision: remote-role clusters first (they read
the primaries' istiod), then primaries, and only what meshctl's own operator for that
revision installed.

Gateways were upgraded in place by ``start`` (Istio's documented way for gateways): the
east-west gateway's operator, and the ingress gateway, which belongs to whichever
control-plane operator istioctl installed last.  So ``finish`` leaves them on the new
revision, and ``rollback`` first reinstalls the old control plane and gateway with the
istioctl that installed them (they move back in place) and only then removes the new
revision: removing it first would delete the gateways it now owns.
"""

from __future__ import annotations

from meshctl import istio, revisions
from meshctl.errors import CheckFailed
from meshctl.mesh import facts, injection, install, install_record, upgrade_record
from meshctl.mesh.upgrade_record import Upgrade
from meshctl.upgrade import skew, state, steps
from meshctl.upgrade.stages import all_moved, eastwest, refuse
from meshctl.upgrade.steps import Run

TARGET = upgrade_record.TARGET
CONTROL_PLANE = install_record.CONTROL_PLANE
OP = install.OPERATOR_PREFIX


def old_proxies(run: Run, up: Upgrade) -> dict[str, int]:
    """Proxies still connected to the old revision, per primary (from istiod itself)."""
    old = up.from_revision or revisions.DEFAULT
    return facts.each(run.primaries(),
                      lambda n: revisions.connected_proxies(run.clients[n], old))


def _move_tag(run: Run, ctl: istio.Istioctl, name: str, up: Upgrade,
              *, again: bool = False) -> bool:
    """Point the ``default`` tag at the new revision, where it points at the old one.

    The tag owns ``istio-injection=enabled``, validation and leader election; a tag
    that points elsewhere (another team's) or none is left alone and said so.  With
    ``again`` (after the old revision is gone) a tag that went with it is set anew: on
    a remote-role cluster istioctl renders the default tag from the remote profile's
    operator, so uninstalling that operator removes the tag (istio/istio#54743 is the
    same gap from the other side).  Returns True when the tag was (re)set.
    """
    k = run.clients[name]
    now = revisions.default_revision(k)
    if now == up.to_revision:
        return False
    if not again and now != (up.from_revision or revisions.DEFAULT):
        run.progress(name, f"default tag points at {now or 'nothing'}, not the old revision: "
                           "left alone")
        return False
    if again and now is not None:
        return False
    run.say(name, f"istioctl tag set default --revision {up.to_revision} --overwrite")
    if not run.dry_run:
        istio.run(ctl, run.config.clusters[name],
                  ["tag", "set", "default", "--revision", up.to_revision, "--overwrite", "-y"],
                  what="istioctl tag set default")
    return True


def finish(run: Run, ctl: istio.Istioctl) -> Upgrade:
    """Move the default tag, then remove the old revision, remotes first."""
    up = run.upgrade
    refuse(state.order_problem(state.FINISH, up, all_moved=all_moved(run)))
    assert up is not None
    if ctl.version != up.to_version:
        raise CheckFailed(f"--istioctl is Istio {ctl.version}; the upgrade is to "
                          f"{up.to_version}", hint="finish with the new istioctl")
    if up.stage != state.FINISH:
        still = {n: c for n, c in old_proxies(run, up).items() if c}
        if still:
            shown = ", ".join(f"{n}: {c}" for n, c in sorted(still.items()))
            raise CheckFailed(f"proxies still connect to revision "
                              f"{up.from_revision or revisions.DEFAULT} ({shown})",
                              hint="restart them (upgrade --move, or kubectl rollout "
                                   "restart), then finish")
    if not run.dry_run:
        steps.mark(run, up, state.FINISH, done=False)
    moved = facts.each(run.plan.names, lambda n: _move_tag(run, ctl, n, up))
    facts.each(run.primaries(), lambda n: steps.expose(run, n, serving_revision=up.to_revision))
    for group in (run.remotes(), run.primaries()):  # remotes first; each group at once
        facts.each(group, lambda n: steps.remove_revision(run, ctl, n, up.from_revision))
    if not run.dry_run:  # a tag that went with the old operator is set again at once
        facts.each([n for n, did in moved.items() if did or up.stage == state.FINISH],
                   lambda n: _move_tag(run, ctl, n, up, again=True))
    if not run.dry_run:
        facts.each(run.plan.names, lambda n: _adopt_target(run, n, up))
    return up.at(state.FINISH, done=True)


def _adopt_target(run: Run, name: str, up: Upgrade) -> None:
    """The new revision becomes the record's control plane; the upgrade is closed."""
    rec = run.records[name]
    updates: dict[str, str | None] = {}
    if TARGET in rec:
        updates = {CONTROL_PLANE: rec[TARGET], OP + CONTROL_PLANE: rec[OP + TARGET],
                   TARGET: None, OP + TARGET: None}
    own = upgrade_record.parse(rec) or up
    updates |= {install.REC_VERSION: up.to_version,
                upgrade_record.KEY: own.at(state.FINISH, done=True).dump()}
    steps.put(run, name, updates)


def _no_newer_proxies_left(run: Run, up: Upgrade) -> None:
    """Before the new revision goes: no proxy may still use it.  Its proxies run the new
    version; once their istiod is gone they would reconnect to the old one, a data
    plane newer than its control plane, which Istio does not support."""
    still = {n: c for n, c in facts.each(run.primaries(), lambda n: revisions.connected_proxies(
        run.clients[n], up.to_revision)).items() if c}
    if still:
        shown = ", ".join(f"{n}: {c}" for n, c in sorted(still.items()))
        why = skew.data_plane_problem(control=up.from_version, proxy=up.to_version)
        raise CheckFailed(f"proxies still connect to revision {up.to_revision} ({shown})"
                          + (f": {why}" if why else ""),
                          hint="restart them (kubectl rollout restart) and re-run --rollback")


def rollback(run: Run, old_ctl: istio.Istioctl) -> Upgrade:
    """Namespaces back to the old revision, gateways and control plane reinstalled with
    the old istioctl, then the new revision removed (remotes first)."""
    up = run.upgrade
    refuse(state.order_problem(state.ROLLBACK, up))
    assert up is not None
    if old_ctl.version != up.from_version:
        raise CheckFailed(f"--istioctl is Istio {old_ctl.version}; rolling back needs the "
                          f"istioctl that installed {up.from_version}",
                          hint="the gateways move back in place with it")
    if not run.dry_run:
        steps.mark(run, up, state.ROLLBACK, done=False)
    for name in run.plan.names:
        own = upgrade_record.parse(run.records[name]) or up
        for ns in own.moved:
            if run.dry_run:
                run.say(name, f"label namespace {ns} for revision "
                              f"{up.from_revision or revisions.DEFAULT}")
            else:
                for line in injection.relabel(run.clients[name], [ns], up.from_revision,
                                              run.plan.mesh_id):
                    run.say(name, line)
            for item in steps.restart(run, name, ns):
                run.say(name, f"restart {item}")
            own = own.without_moved([ns])
            steps.put(run, name, {upgrade_record.KEY: own.dump()})

    def back(name: str) -> None:
        cp = run.plan.get(name)
        text = steps.control_plane_text(run, name, up.from_revision)
        deployment = istio.istiod_name(up.from_revision) if cp.istio_role == "primary" \
            else None
        run.records[name].pop(CONTROL_PLANE, None)  # force the reinstall: gateways move back
        steps.ensure_operator(run, old_ctl, name, CONTROL_PLANE, text, deployment)
        eastwest(run, old_ctl, name, up.from_revision)
        steps.expose(run, name, serving_revision=up.from_revision)

    facts.each(run.primaries(), back)
    facts.each(run.remotes(), back)
    if not run.dry_run:
        _no_newer_proxies_left(run, up)
    for group in (run.remotes(), run.primaries()):
        facts.each(group, lambda n: steps.remove_revision(run, old_ctl, n, up.to_revision))
    if not run.dry_run:
        for name in run.plan.names:
            own = upgrade_record.parse(run.records[name]) or up
            steps.put(run, name, {TARGET: None, OP + TARGET: None,
                                  upgrade_record.KEY: own.at(state.ROLLBACK, done=True).dump()})
    return up.at(state.ROLLBACK, done=True)
