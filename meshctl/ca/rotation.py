"""Rotating the mesh's CA without downtime: intermediates, and the root in three steps.

Why three steps: a workload accepts a peer only if the peer's chain ends at a root in
its own ``root-cert.pem``.  Swapping the root everywhere at once would leave, for a
while, sidecars holding leaves from the old chain next to sidecars trusting only the
new root (and vice versa), across clusters that never switch at the same instant.
So, over every cluster of the mesh, one ``--step`` at a time:

1. make the new root; every ``root-cert.pem`` becomes old + new (intermediates kept),
2. re-issue every intermediate under the new root (``root-cert.pem`` still old + new),
3. drop the old root from every bundle; archive it under ``<ca.dir>/archive/``.

A leaf from the old or the new intermediate of any cluster verifies against every
cluster's bundle through steps 1 and 2; only after step 3 do old-chain leaves stop
verifying, by which time istiod has re-issued them (their TTL is hours).

Each step first reads every cluster's live ``cacerts`` and classifies it
(:func:`stage_of`); it runs only when every cluster is at the previous stage or
already at this one (a re-run after a crash finishes the rest), so the state file is
never trusted alone.  The state file ``<ca.dir>/rotation.json`` (written atomically)
records the two roots' fingerprints and the last step started/completed; the new root
lives in ``<ca.dir>/next-root/`` until step 3 promotes it.  Nothing here deletes a
root: the old one is copied to the archive before the new one takes its place.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from meshctl import files, kube
from meshctl.ca import cacerts, certs, pki
from meshctl.config import CASettings, Config
from meshctl.errors import CheckFailed, ConfigError, UsageError

STATE_FILE = "rotation.json"
NEXT_ROOT = certs.NEXT_ROOT
ARCHIVE = "archive"
STEPS = {
    1: "trust both roots everywhere (root-cert.pem = old + new)",
    2: "re-issue every intermediate under the new root",
    3: "drop the old root from every bundle and archive it",
}
RELOAD_NOTE = ("istiod (Istio >= 1.18) reloads plug-in certificates from cacerts on its own; "
               "workload certificates are re-issued under the new intermediate within their "
               "TTL (24h by default)")

Progress = Callable[[str], None]


# --- state -------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """``rotation.json``: which roots, which step, for which clusters."""

    old_root: str  # SHA-256 fingerprints
    new_root: str
    step: int  # the last step started
    complete: bool  # ... and whether it finished on every cluster
    clusters: tuple[str, ...]
    started: str
    updated: str
    archived: str | None = None  # where step 3 put the old root

    @property
    def done(self) -> int:
        """The last step complete on every cluster (0: none yet)."""
        return self.step if self.complete else self.step - 1

    @property
    def finished(self) -> bool:
        return self.step == 3 and self.complete

    @property
    def next_step(self) -> int | None:
        return None if self.finished else self.done + 1

    def to_json(self) -> dict:
        return {**asdict(self), "clusters": list(self.clusters)}


def state_path(settings: CASettings) -> Path:
    return settings.dir / STATE_FILE


def load_state(settings: CASettings) -> State | None:
    """The rotation state beside the CA, or ``None`` when no rotation was ever started."""
    path = state_path(settings)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        return State(old_root=doc["old_root"], new_root=doc["new_root"], step=int(doc["step"]),
                     complete=bool(doc["complete"]), clusters=tuple(doc["clusters"]),
                     started=doc["started"], updated=doc["updated"],
                     archived=doc.get("archived"))
    except (ValueError, KeyError, TypeError, OSError):
        raise ConfigError(f"{path}: unreadable root rotation state (hint: restore it from "
                          f"{settings.dir / ARCHIVE} or a backup)") from None


def save_state(settings: CASettings, state: State) -> None:
    files.write_atomic(state_path(settings), json.dumps(state.to_json(), indent=2) + "\n",
                       mode=files.PUBLIC)


def in_progress(settings: CASettings) -> State | None:
    """The state of an unfinished root rotation, else ``None``."""
    state = load_state(settings)
    return state if state is not None and not state.finished else None


def refuse_if_rotating(settings: CASettings, what: str) -> None:
    """Intermediates under the old root would undo a half-done root rotation: refuse."""
    state = in_progress(settings)
    if state is not None:
        raise UsageError(f"{what} refused: a root rotation is in progress (step {state.done} of "
                         f"3 done)", hint=f"finish it: certs.rotate --root --step "
                                          f"{state.next_step}")


# --- classifying a cluster -----------------------------------------------------------


def stage_of(bundle: certs.Bundle | None, old_root: str, new_root: str | None) -> int | None:
    """Where a live ``cacerts`` stands in the rotation from ``old_root`` to ``new_root``.

    0: trusts only old, intermediate under old (before step 1);
    1: trusts old + new, intermediate under old; 2: old + new, under new;
    3: trusts only new, under new.  ``None``: none of these (missing, foreign, broken).
    """
    if bundle is None:
        return None
    roots = [pki.fingerprint(r) for r in bundle.roots]
    try:
        signer = pki.fingerprint(bundle.signing_root)
    except ValueError:
        return None
    if roots == [old_root] and signer == old_root:
        return 0
    if new_root is None:
        return None
    if roots == [old_root, new_root]:
        return 1 if signer == old_root else 2
    if roots == [new_root] and signer == new_root:
        return 3
    return None


# --- roots on disk -------------------------------------------------------------------


def next_root_settings(settings: CASettings) -> CASettings:
    """The same settings with ``dir`` at ``next-root/``: the pending root's home."""
    return replace(settings, dir=settings.dir / NEXT_ROOT)


def _find_root(settings: CASettings, fingerprint: str) -> certs.RootCA | None:
    places = [settings, next_root_settings(settings)]
    archive = settings.dir / ARCHIVE
    if archive.is_dir():
        places += [replace(settings, dir=d) for d in sorted(archive.iterdir()) if d.is_dir()]
    for place in places:
        cert_path, key_path = certs.root_paths(place)
        if cert_path.exists() and key_path.exists():
            root = certs.load_root(place)
            if pki.fingerprint(root.cert) == fingerprint:
                return root
    return None


def load_roots(settings: CASettings, state: State) -> tuple[certs.RootCA, certs.RootCA]:
    """The old and the new root of ``state``, wherever a crash may have left them."""
    old, new = _find_root(settings, state.old_root), _find_root(settings, state.new_root)
    if old is None or new is None:
        missing = "old" if old is None else "new"
        raise ConfigError(f"{settings.dir}: the {missing} root of the rotation in "
                          f"{STATE_FILE} is not in the CA folder, {NEXT_ROOT}/ or {ARCHIVE}/")
    return old, new


def trusted_roots(settings: CASettings) -> list[x509.Certificate]:
    """Every root the local CA stands behind now: the current one and, mid-rotation, the new."""
    out = []
    if certs.root_exists(settings):
        out.append(certs.load_root(settings).cert)
    state = in_progress(settings)
    if state is not None:
        found = _find_root(settings, state.new_root)
        if found is not None and all(found.cert != r for r in out):
            out.append(found.cert)
    return out


def _archive_old_root(settings: CASettings, old: certs.RootCA) -> Path:
    """Copy the old root (key first, 0600) to ``archive/root-<time>-<fp>/``."""
    target = settings.dir / ARCHIVE / (f"root-{files.timestamp()}-"
                                       f"{pki.fingerprint(old.cert).replace(':', '')[:16]}")
    certs.write_root(replace(settings, dir=target), old)
    return target


def _promote(settings: CASettings, state: State, old: certs.RootCA,
             new: certs.RootCA) -> str:
    """Step 3's local half: archive the old root, make the new one the CA's root.

    Idempotent, so a crash anywhere in it is finished by a re-run.
    """
    archived = state.archived
    if archived is None or not Path(archived).is_dir():
        archived = str(_archive_old_root(settings, old))
    current, _ = certs.root_paths(settings)
    if not current.exists() or pki.fingerprint(certs.load_root(settings).cert) != state.new_root:
        certs.write_root(settings, new)
    pending = next_root_settings(settings)
    if pending.dir.is_dir() and certs.load_root(settings).cert == new.cert:
        shutil.rmtree(pending.dir)  # only a duplicate of the root now in place
    return archived


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
    return {name: cacerts.read(k) for name, k in clients.items()}


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


def _bundle_for(step: int, settings: CASettings, name: str, live: certs.Bundle,
                old: certs.RootCA, new: certs.RootCA) -> certs.Bundle:
    """The bundle a cluster gets in ``step``: built from its local files (which must
    match what it runs) so that local and live stay one."""
    local = _local(settings, name)
    if step == 2:
        if local.ca_cert != live.ca_cert and certs.issued_by(local.ca_cert, new.cert):
            return local  # issued by an interrupted run, not pushed yet: reuse it
        return certs.make_intermediate(new, name, settings, roots=(old.cert, new.cert))
    if local.ca_cert != live.ca_cert:
        raise CheckFailed(f"{name}: the local intermediate (serial {local.ca_cert.serial_number:x}"
                          f") is not the one in the cluster (serial "
                          f"{live.ca_cert.serial_number:x})",
                          hint="certs.status; restore the local files from <ca.dir>/backups/")
    roots = (old.cert, new.cert) if step == 1 else (new.cert,)
    return certs.Bundle(cluster=name, ca_cert=local.ca_cert, ca_key=local.ca_key, roots=roots)


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
             progress: Progress | None = None) -> StepResult:
    """Run root rotation step ``step`` (1-3) over every cluster of ``config``.

    Facts first: reads every cluster's ``cacerts`` before changing any.  Raises
    :class:`UsageError` (exit 2) out of order, :class:`CheckFailed` (exit 1) when a
    cluster is not where the step needs it.  Re-running a completed step changes
    nothing and returns ``noop=True``.
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
        return StepResult(step=3, noop=True, old_root=state.old_root, new_root=state.new_root,
                          clusters=tuple(ClusterResult(n, False, "already done") for n in names),
                          archived=state.archived)
    assert state is not None
    stages = _require_stages(step, live, state.old_root, state.new_root)
    old, new = load_roots(settings, state)
    if all(s == step for s in stages.values()) and state.step == step and state.complete:
        return StepResult(step=step, noop=True, old_root=state.old_root,
                          new_root=state.new_root, archived=state.archived,
                          clusters=tuple(ClusterResult(n, False, "already done") for n in names))
    state = replace(state, step=step, complete=False, updated=_now())
    save_state(settings, state)

    results = []
    for name in names:
        bundle_live = live[name]
        assert bundle_live is not None
        if stages[name] == step:
            results.append(ClusterResult(name, False, "already done"))
            continue
        bundle = _bundle_for(step, settings, name, bundle_live, old, new)
        certs.replace_bundle(settings, bundle)
        outcome = cacerts.apply(clients[name], bundle, force=True,
                                backup_dir=certs.backups_dir(settings))
        say(f"{name}: step {step}: {outcome}")
        results.append(ClusterResult(name, True, _describe(step, bundle, outcome)))

    archived = None
    if step == 3:
        archived = _promote(settings, state, old, new)
    state = replace(state, complete=True, updated=_now(), archived=archived or state.archived)
    save_state(settings, state)
    return StepResult(step=step, noop=False, old_root=state.old_root, new_root=state.new_root,
                      clusters=tuple(results), archived=state.archived)


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
    previous = state_path(settings)
    if previous.exists():  # a finished rotation's record: keep it with the archive
        files.write_atomic(settings.dir / ARCHIVE / f"rotation-{files.timestamp()}.json",
                           previous.read_bytes())
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
    k = client or kube.client(config.cluster(cluster))
    live = cacerts.read(k)
    if live is not None and certs.chain_problem_to([live.ca_cert], [root.cert]) is not None:
        raise CheckFailed(f"{cluster}: its cacerts is not under the local root "
                          f"{pki.fingerprint(root.cert)[:23]}…",
                          hint=f"certs.status; certs.issue --cluster {cluster} --force")
    local = certs.load_bundle(certs.cluster_dir(settings, cluster), cluster)
    before = live or local
    bundle = certs.make_intermediate(root, cluster, settings)
    certs.replace_bundle(settings, bundle)
    outcome = cacerts.apply(k, bundle, force=True, backup_dir=certs.backups_dir(settings))
    return IntermediateRotation(
        cluster=cluster, old_serial=f"{before.ca_cert.serial_number:x}" if before else None,
        new_serial=f"{bundle.ca_cert.serial_number:x}",
        not_after=bundle.ca_cert.not_valid_after_utc, root=pki.fingerprint(root.cert),
        outcome=outcome)
