"""Rotating the mesh's CA without downtime: intermediates, and the root in three steps.

Why three steps: a workload accepts a peer only if the peer's chain ends at a root in
its own ``root-cert.pem``.  Swapping the root everywhere at once would leave, for a
while, sidecars holding leaves from the old chain next to sidecars trusting only the
new root (and vice versa), across clusters that never switch at the same instant.
So, over every cluster of the mesh, one ``--step`` at a time:

1. make the new root; every ``root-cert.pem`` becomes old + new (intermediates kept),
2. re-issue every intermediate under the new root (``root-cert.pem`` still old + new),
3. drop the old root from every bundle; keep it in ``<ca.dir>/backups/root.backup-<time>/``;
   refused until ``ca.workloadCertTTL`` has passed since step 2 finished
   (:mod:`meshctl.ca.rotation_wait`).

A leaf from the old or the new intermediate of any cluster verifies against every
cluster's bundle through steps 1 and 2; only after step 3 do old-chain leaves stop
verifying, by which time istiod has re-issued them (their TTL is hours).

Each step first reads every cluster's live ``cacerts`` and classifies it
(:func:`stage_of`); it runs only when every cluster is at the previous stage or
already at this one (a re-run after a crash finishes the rest), so the state file is
never trusted alone.  This module is the part that talks to clusters; what a rotation
keeps on disk (``rotation.json``, the roots' whereabouts, the stage of a bundle) is
:mod:`meshctl.ca.rotation_state`, re-exported here for callers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from meshctl import kube
from meshctl.ca import cacerts, certs, pki, rotation_wait
from meshctl.ca.rotation_state import (
    NEXT_ROOT,
    STATE_FILE,
    State,
    backup_state,
    in_progress,
    load_roots,
    load_state,
    next_root_settings,
    promote,
    refuse_if_rotating,
    save_state,
    stage_of,
    state_path,
    trusted_roots,
)
from meshctl.config import CASettings, Config
from meshctl.errors import CheckFailed, UsageError

__all__ = [  # the rotation's public face, its state half included
    "NEXT_ROOT", "RELOAD_NOTE", "STATE_FILE", "STEPS", "ClusterResult",
    "IntermediateRotation", "State", "StepResult", "in_progress", "load_roots", "load_state",
    "next_root_settings", "refuse_if_rotating", "rotate_intermediate", "run_step",
    "save_state", "stage_of", "state_path", "trusted_roots",
]

STEPS = {
    1: "trust both roots everywhere (root-cert.pem = old + new)",
    2: "re-issue every intermediate under the new root",
    3: "drop the old root from every bundle and archive it",
}
RELOAD_NOTE = ("istiod (Istio >= 1.18) reloads plug-in certificates from cacerts on its own; "
               "workload certificates are re-issued under the new intermediate within their "
               "TTL (24h by default; ca.workloadCertTTL in mesh.yaml)")

Progress = Callable[[str], None]


# --- running a step ------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterResult:
    cluster: str
    changed: bool
    detail: str


@dataclass(frozen=True)
class StepResult:
    """What one ``certs.rotate --root --step N`` did."""

    step: int
    noop: bool
    old_root: str
    new_root: str
    clusters: tuple[ClusterResult, ...]
    archived: str | None = None
    step3_from: datetime | None = None  # after step 2: when step 3 may drop the old root
    wait: str | None = None  # ... and why then ("24h00m (ca.workloadCertTTL)")

    @property
    def next_step(self) -> int | None:
        return self.step + 1 if self.step < 3 else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _local(settings: CASettings, cluster: str) -> certs.Bundle:
    bundle = certs.load_bundle(certs.cluster_dir(settings, cluster), cluster)
    if bundle is None:
        raise CheckFailed(f"{cluster}: no local intermediate in "
                          f"{certs.cluster_dir(settings, cluster)}",
                          hint=f"certs.issue --cluster {cluster}")
    return bundle


def _live(clients: Mapping[str, kube.Kube]) -> dict[str, certs.Bundle | None]:
    """Every cluster's live bundle (``None``: no Secret); one that is there but cannot
    be read (an encrypted ``ca-key.pem``, a truncated certificate) stops the step
    before any write, naming every such cluster and the field."""
    secrets = {name: k.get(cacerts.PATH, what=f"read {cacerts.WHAT}")
               for name, k in clients.items()}
    problems = [why for name, secret in secrets.items()
                if secret is not None and (why := cacerts.problem(name, secret))]
    if problems:
        raise CheckFailed("; ".join(problems) + "; nothing was changed",
                          hint="certs.status shows every cluster's cacerts; certs.issue "
                               "--cluster NAME --force replaces one after saving it")
    return {name: cacerts.from_secret(name, secret) if secret else None
            for name, secret in secrets.items()}


def _stage_name(stage: int | None) -> str:
    return "unknown CA" if stage is None else f"stage {stage}"


def _require_stages(step: int, live: Mapping[str, certs.Bundle | None], old: str,
                    new: str | None) -> dict[str, int]:
    """Every cluster at ``step - 1`` or ``step``, else refuse naming the cluster."""
    stages = {name: stage_of(b, old, new) for name, b in live.items()}
    for name, stage in stages.items():
        if stage not in (step - 1, step):
            if live[name] is None:
                raise CheckFailed(f"{name}: no istio-system/cacerts Secret; root rotation "
                                  f"step {step} needs every cluster at step {step - 1}",
                                  hint=f"certs.issue --cluster {name}")
            raise CheckFailed(f"{name}: its cacerts is at {_stage_name(stage)}, but step "
                              f"{step} needs every cluster at step {step - 1} or {step}",
                              hint="certs.status shows what each cluster holds")
    return stages  # type: ignore[return-value]


def _bundles_for(step: int, settings: CASettings, names: list[str],
                 live: Mapping[str, certs.Bundle | None], old: certs.RootCA,
                 new: certs.RootCA) -> dict[str, certs.Bundle]:
    """The bundle each of ``names`` gets in ``step``, built from its local files (which
    must match what it runs, so that local and live stay one).

    All are built, and checked, before the first is written; step 2's new keys are
    generated in parallel (:func:`pki.generate_keys`).
    """
    local = {name: _local(settings, name) for name in names}
    running = {name: live[name] for name in names}
    if step == 2:
        # issued by an interrupted run, not pushed yet: reuse it
        reuse = {name for name in names if local[name].ca_cert != running[name].ca_cert
                 and certs.issued_by(local[name].ca_cert, new.cert)}
        fresh = [name for name in names if name not in reuse]
        keys = dict(zip(fresh, pki.generate_keys(settings.key, len(fresh)), strict=True))
        return {name: local[name] if name in reuse else certs.make_intermediate(
            new, name, settings, roots=(old.cert, new.cert), key=keys[name]) for name in names}
    roots = (old.cert, new.cert) if step == 1 else (new.cert,)
    out = {}
    for name in names:
        mine, theirs = local[name].ca_cert, running[name].ca_cert
        if mine != theirs:
            raise CheckFailed(f"{name}: the local intermediate (serial {mine.serial_number:x}"
                              f") is not the one in the cluster (serial "
                              f"{theirs.serial_number:x})",
                              hint="certs.status; restore the local files from "
                                   "<ca.dir>/backups/")
        out[name] = certs.Bundle(cluster=name, ca_cert=mine, ca_key=local[name].ca_key,
                                 roots=roots)
    return out


def _order(state: State | None, step: int) -> None:
    """Refuse (exit 2) a step that is not the next one or the last one done."""
    if step not in STEPS:
        raise UsageError(f"--step must be 1, 2 or 3, not {step}")
    if state is None or state.finished:
        if step == 1 or (state is not None and step == 3):
            return
        raise UsageError(f"root rotation step {step} refused: no root rotation in progress",
                         hint="start with certs.rotate --root --step 1")
    if step > state.done + 1:
        raise UsageError(f"root rotation step {step} refused: step {state.done + 1} is not "
                         "done yet", hint=f"run certs.rotate --root --step {state.done + 1}")
    if step < state.done:
        raise UsageError(f"root rotation step {step} refused: the rotation is past it (step "
                         f"{state.done} done)",
                         hint=f"run certs.rotate --root --step {state.done + 1}")


def run_step(config: Config, step: int, *, clients: Mapping[str, kube.Kube] | None = None,
             progress: Progress | None = None, force: bool = False) -> StepResult:
    """Run root rotation step ``step`` (1-3) over every cluster of ``config``.

    Facts first: reads every cluster's ``cacerts`` before changing any.  Raises
    :class:`UsageError` (exit 2) out of order, :class:`CheckFailed` (exit 1) when a
    cluster is not where the step needs it, and for step 3 while workload certificates
    under the old root may still be in use (:mod:`meshctl.ca.rotation_wait`; ``force``
    goes ahead after saying the risk through ``progress``).  Re-running a completed
    step changes nothing and returns ``noop=True``.
    """
    say = progress or (lambda _m: None)
    settings = config.mesh.ca
    state = load_state(settings)
    _order(state, step)
    names = tuple(sorted(config.clusters))
    if clients is None:
        clients = {n: kube.client(config.clusters[n]) for n in names}
    if state is not None and not state.finished and set(state.clusters) != set(names):
        raise UsageError(f"the mesh's clusters changed since the root rotation started "
                         f"({', '.join(state.clusters)} then, {', '.join(names)} now)",
                         hint="restore the cluster files until the rotation is finished")
    live = _live(clients)

    if step == 1 and (state is None or state.finished):
        state = _start(settings, names, live, say)
    elif step == 3 and state is not None and state.finished:
        _require_stages(3, live, state.old_root, state.new_root)
        stages = {n: stage_of(b, state.old_root, state.new_root) for n, b in live.items()}
        if any(s != 3 for s in stages.values()):
            raise CheckFailed("root rotation finished, but " + ", ".join(
                f"{n} is at {_stage_name(s)}" for n, s in stages.items() if s != 3))
        return _result(state, 3, noop=True, config=config, clients=clients,
                       clusters=tuple(ClusterResult(n, False, "already done") for n in names))
    assert state is not None
    stages = _require_stages(step, live, state.old_root, state.new_root)
    old, new = load_roots(settings, state)
    if all(s == step for s in stages.values()) and state.step == step and state.complete:
        return _result(state, step, noop=True, clusters=tuple(
            ClusterResult(n, False, "already done") for n in names), config=config,
            clients=clients)
    if step == 3 and state.step == 2:  # not begun yet: the old root is still trusted
        rotation_wait.check(state, rotation_wait.wait_for(settings, clients), force=force,
                            warn=say)
    state = replace(state, step=step, complete=False, updated=_now())
    save_state(settings, state)

    bundles = _bundles_for(step, settings, [n for n in names if stages[n] != step], live,
                           old, new)
    results = []
    for name in names:
        if name not in bundles:
            results.append(ClusterResult(name, False, "already done"))
            continue
        bundle = bundles[name]
        certs.replace_bundle(settings, bundle)
        outcome = cacerts.apply(clients[name], bundle, mesh_id=config.mesh.mesh_id, force=True,
                                backup_dir=certs.backups_dir(settings))
        say(f"{name}: step {step}: {outcome}")
        results.append(ClusterResult(name, True, _describe(step, bundle, outcome)))

    archived = None
    if step == 3:
        archived = promote(settings, state, old, new)
    state = replace(state, complete=True, updated=_now(), archived=archived or state.archived,
                    step2_finished=_now() if step == 2 else state.step2_finished)
    save_state(settings, state)
    return _result(state, step, noop=False, clusters=tuple(results), config=config,
                   clients=clients)


def _result(state: State, step: int, *, noop: bool, clusters: tuple[ClusterResult, ...],
            config: Config, clients: Mapping[str, kube.Kube]) -> StepResult:
    """What the step did; after step 2, also when step 3 may follow and why then."""
    step3_from = wait = None
    if step == 2:
        waiting = rotation_wait.wait_for(config.mesh.ca, clients)
        step3_from, wait = rotation_wait.step3_from(state, waiting), waiting.describe()
    return StepResult(step=step, noop=noop, old_root=state.old_root, new_root=state.new_root,
                      clusters=clusters, archived=state.archived, step3_from=step3_from,
                      wait=wait)


def _start(settings: CASettings, names: tuple[str, ...],
           live: Mapping[str, certs.Bundle | None], say: Progress) -> State:
    """Step 1 of a new rotation: check every cluster runs the current root, make the new one."""
    current = certs.load_root(settings)
    old_fp = pki.fingerprint(current.cert)
    _require_stages(1, live, old_fp, None)  # stage 0 only: no new root exists yet
    for name in names:
        local = _local(settings, name)
        bundle = live[name]
        assert bundle is not None
        if local.ca_cert != bundle.ca_cert:
            raise CheckFailed(f"{name}: the cluster's intermediate (serial "
                              f"{bundle.ca_cert.serial_number:x}) is not the local one (serial "
                              f"{local.ca_cert.serial_number:x})",
                              hint=f"certs.issue --cluster {name} --force, then rotate")
    backup_state(settings)  # a finished rotation's record: kept in the backups
    new = certs.make_root(settings)
    certs.write_root(next_root_settings(settings), new)
    say(f"new root {pki.fingerprint(new.cert)} in {settings.dir / NEXT_ROOT}")
    state = State(old_root=old_fp, new_root=pki.fingerprint(new.cert), step=1, complete=False,
                  clusters=names, started=_now(), updated=_now())
    save_state(settings, state)
    return state


def _describe(step: int, bundle: certs.Bundle, outcome: str) -> str:
    roots = " + ".join(pki.fingerprint(r)[:11] + "…" for r in bundle.roots)
    if step == 2:
        return (f"new intermediate serial {bundle.ca_cert.serial_number:x} under the new root; "
                f"root-cert.pem {roots}; {outcome}")
    return f"root-cert.pem {roots}; {outcome}"


# --- intermediate rotation -----------------------------------------------------------


@dataclass(frozen=True)
class IntermediateRotation:
    """What ``certs.rotate --cluster X`` did."""

    cluster: str
    old_serial: str | None
    new_serial: str
    not_after: datetime
    root: str
    outcome: str  # cacerts.apply's answer, naming the backup of the previous Secret


def rotate_intermediate(config: Config, cluster: str, *,
                        client: kube.Kube | None = None) -> IntermediateRotation:
    """A new intermediate for ``cluster`` under the same root, written locally and pushed.

    The previous local files go to ``<ca.dir>/backups/``, the previous Secret too
    (``cacerts.apply(force=True)``).  Refused mid root rotation, and when the cluster
    runs an intermediate of another root (that is ``certs.issue --force``'s job).
    """
    settings = config.mesh.ca
    refuse_if_rotating(settings, "certs.rotate --cluster")
    root = certs.load_root(settings)
    certs.refuse_to_sign(root, settings)  # as certs.issue: never under an expired root
    k = client or kube.client(config.cluster(cluster))
    live = _live({cluster: k})[cluster]
    if live is not None and certs.chain_problem_to([live.ca_cert], [root.cert]) is not None:
        raise CheckFailed(f"{cluster}: its cacerts is not under the local root "
                          f"{pki.fingerprint(root.cert)[:23]}…",
                          hint=f"certs.status; certs.issue --cluster {cluster} --force")
    local = certs.load_bundle(certs.cluster_dir(settings, cluster), cluster)
    before = live or local
    bundle = certs.make_intermediate(root, cluster, settings)
    certs.replace_bundle(settings, bundle)
    outcome = cacerts.apply(k, bundle, mesh_id=config.mesh.mesh_id, force=True,
                            backup_dir=certs.backups_dir(settings))
    return IntermediateRotation(
        cluster=cluster, old_serial=f"{before.ca_cert.serial_number:x}" if before else None,
        new_serial=f"{bundle.ca_cert.serial_number:x}",
        not_after=bundle.ca_cert.not_valid_after_utc, root=pki.fingerprint(root.cert),
        outcome=outcome)
