"""What a root rotation leaves on the operator's disk, and how to read it back.

Split from :mod:`meshctl.ca.rotation` along the line between local facts and cluster
work: this module never talks to a cluster.  It owns the state file
``<ca.dir>/rotation.json``, where each root lives while a rotation runs (``ca.dir``,
``next-root/``, ``backups/root.backup-<time>/``), which stage a ``cacerts`` bundle is
at, and step 3's local half (promote the new root, keep the old one in the backups).
``certs.status``, ``certs.issue`` and ``certs.init`` need exactly these answers (is a
rotation running? which roots are trusted? which stage is this cluster at?) without
any of the step machinery, and a crash anywhere in a step must be recoverable from
these files alone, so they are kept, and read, in one place.

The state file is written atomically and is never trusted alone: every step also
classifies each cluster's live bundle (:func:`stage_of`).  Nothing here deletes a
root: the old one is copied to the backups before the new one takes its place.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from meshctl import files
from meshctl.ca import backups, certs, pki
from meshctl.config import CASettings
from meshctl.errors import ConfigError, UsageError

STATE_FILE = "rotation.json"
NEXT_ROOT = certs.NEXT_ROOT
# Where meshctl before the one backup layout put old roots and finished rotations'
# records; still searched for a rotation's roots, never written.
LEGACY_ARCHIVE = "archive"


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
    archived: str | None = None  # where step 3 kept the old root
    # when step 2 was complete on every cluster (ISO 8601): step 3 waits a workload
    # certificate's lifetime from here (meshctl.ca.rotation_wait)
    step2_finished: str | None = None

    @property
    def step2_time(self) -> datetime | None:
        """When step 2 finished on every cluster; a state file from before this field
        was kept says it through ``updated`` (written as step 2 completed)."""
        if self.step2_finished:
            return _time(self.step2_finished)
        if self.step == 2 and self.complete:
            return _time(self.updated)
        return None

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


def _time(text: str) -> datetime:
    """An ISO 8601 time from ``rotation.json`` (UTC when it names no zone)."""
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def state_path(settings: CASettings) -> Path:
    return settings.dir / STATE_FILE


def load_state(settings: CASettings) -> State | None:
    """The rotation state beside the CA, or ``None`` when no rotation was ever started."""
    path = state_path(settings)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        state = State(old_root=doc["old_root"], new_root=doc["new_root"],
                      step=int(doc["step"]), complete=bool(doc["complete"]),
                      clusters=tuple(doc["clusters"]), started=doc["started"],
                      updated=doc["updated"], archived=doc.get("archived"),
                      step2_finished=doc.get("step2_finished"))
        if state.step2_finished is not None:
            _time(state.step2_finished)  # a time that does not parse: unreadable state
        return state
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        raise ConfigError(f"{path}: unreadable root rotation state (hint: restore it from "
                          f"a backup; finished rotations' records are in "
                          f"{backups.backups_dir(settings)}/{backups.ROTATION}"
                          f"{backups.SUFFIX}*/)") from None


def save_state(settings: CASettings, state: State) -> None:
    files.write_atomic(state_path(settings), json.dumps(state.to_json(), indent=2) + "\n",
                       mode=files.PUBLIC)


def backup_state(settings: CASettings) -> Path | None:
    """Keep a finished rotation's ``rotation.json`` in the backups before a new one
    starts; ``None`` when there is none."""
    if not state_path(settings).exists():
        return None
    return backups.backup_files(settings, backups.ROTATION, settings.dir, only=(STATE_FILE,))


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


def _kept_roots(settings: CASettings) -> list[CASettings]:
    """Root backups, newest first, then the legacy archive's folders."""
    places = list(reversed(backups.root_backups(settings)))
    legacy = settings.dir / LEGACY_ARCHIVE
    if legacy.is_dir():
        places += sorted(d for d in legacy.iterdir() if d.is_dir())
    return [replace(settings, dir=d) for d in places]


def find_root(settings: CASettings, fingerprint: str) -> certs.RootCA | None:
    """The root with ``fingerprint``: the CA's own, the pending one, or a kept one.

    A kept root is matched by its certificate before its key is read: backups hold
    every root ``certs.init --force`` replaced, broken ones included, and only the one
    asked for has to load.
    """
    for place in (settings, next_root_settings(settings)):
        cert_path, key_path = certs.root_paths(place)
        if cert_path.exists() and key_path.exists():
            root = certs.load_root(place)
            if pki.fingerprint(root.cert) == fingerprint:
                return root
    for place in _kept_roots(settings):
        cert_path, key_path = certs.root_paths(place)
        try:
            cert = pki.load_certs(cert_path.read_bytes())[0]
        except (ValueError, IndexError, OSError):
            continue
        if pki.fingerprint(cert) == fingerprint and key_path.exists():
            return certs.load_root(place)
    return None


def load_roots(settings: CASettings, state: State) -> tuple[certs.RootCA, certs.RootCA]:
    """The old and the new root of ``state``, wherever a crash may have left them."""
    old, new = find_root(settings, state.old_root), find_root(settings, state.new_root)
    if old is None or new is None:
        missing = "old" if old is None else "new"
        raise ConfigError(f"{settings.dir}: the {missing} root of the rotation in "
                          f"{STATE_FILE} is not in the CA folder, {NEXT_ROOT}/ or "
                          f"{backups.BACKUPS}/")
    return old, new


def trusted_roots(settings: CASettings) -> list[x509.Certificate]:
    """Every root the local CA stands behind now: the current one and, mid-rotation, the new."""
    out = []
    if certs.root_exists(settings):
        out.append(certs.load_root(settings).cert)
    state = in_progress(settings)
    if state is not None:
        found = find_root(settings, state.new_root)
        if found is not None and all(found.cert != r for r in out):
            out.append(found.cert)
    return out


def promote(settings: CASettings, state: State, old: certs.RootCA,
            new: certs.RootCA) -> str:
    """Step 3's local half: keep the old root in the backups, make the new one the
    CA's root; returns where the old one is kept.

    Idempotent, so a crash anywhere in it is finished by a re-run.  The old root is
    backed up from memory, not copied from disk: after a crash between the two writes
    the disk already holds the new one.
    """
    archived = state.archived
    if archived is None or not Path(archived).is_dir():
        archived = str(certs.backup_root(settings, old))
    current, _ = certs.root_paths(settings)
    if not current.exists() or pki.fingerprint(certs.load_root(settings).cert) != state.new_root:
        certs.write_root(settings, new)
    pending = next_root_settings(settings)
    if pending.dir.is_dir() and certs.load_root(settings).cert == new.cert:
        shutil.rmtree(pending.dir)  # only a duplicate of the root now in place
    return archived
