"""What every cluster's CA looks like, read from the clusters: ``certs.status``.

The local files say what meshctl issued; only the cluster says what istiod uses.  So
each cluster's ``istio-system/cacerts`` is read live and checked: intermediate
validity (WARN under :data:`WARN_DAYS` days, FAIL expired or not yet valid), each
root's (WARN under :data:`ROOT_WARN_DAYS` days, unless a rotation is replacing it),
``cert-chain.pem`` up to a local root, key against certificate, same bytes as the
local files.  Then across clusters: a workload trusts a peer only when the peer's
intermediate chains to a root in its own ``root-cert.pem``, so every pair is checked
and a FAIL names the odd one out (the cluster not trusting the local root, or the
minority).  Data here, rendering in :mod:`meshctl.report`.

``--json`` prints :meth:`CertsStatus.to_json`, schema ``meshctl.certs.status/v1``
(keys only added, never renamed, within v1)::

    {
      "schema": "meshctl.certs.status/v1",
      "level": "PASS" | "WARN" | "FAIL",          # worst of everything below
      "localRoots": ["<sha256 fp>", ...],         # current root, + the new one mid-rotation
      "commonRoot": "<sha256 fp>" | null,         # a root every cluster trusts
      "rotation": null | {
        "inProgress": bool, "step": 1-3, "complete": bool, "done": 0-3,
        "next": "certs.rotate --root --step N" | null,
        "oldRoot": "<fp>", "newRoot": "<fp>", "started": "<iso>", "updated": "<iso>",
        "archived": "<path>" | null,
        "step2Finished": "<iso>" | null           # step 3 waits ca.workloadCertTTL from it
      },
      "clusters": [{
        "name": "cluster1",
        "level": "PASS" | "WARN" | "FAIL",
        "present": bool,                           # the Secret exists and parses
        "intermediate": null | {"subject": "O=…,CN=…,L=…", "serial": "<hex>",
                                "notBefore": "<iso>", "notAfter": "<iso>",
                                "daysLeft": float},
        "roots": ["<fp>", ...],                    # root-cert.pem, in order
        "signingRoot": "<fp>" | null,              # the root that issued the intermediate
        "chainVerifies": bool,                     # cert-chain.pem up to a local root
        "matchesLocal": bool,                      # same four files as <ca.dir>/<cluster>/
        "rotationStage": 0-3 | null,               # only while a rotation is in progress
        "checks": [{"level": "…", "message": "…"}]
      }, …],
      "checks": [{"level": "…", "message": "…"}]   # across clusters
    }
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509

from meshctl import kube
from meshctl.ca import cacerts, certs, pki, rotation
from meshctl.config import Config
from meshctl.errors import ClusterError
from meshctl.verdicts import FAIL, PASS, WARN, worst

SCHEMA = "meshctl.certs.status/v1"
WARN_DAYS = 30
# A root rotation is three steps with a wait of a workload certificate's lifetime before
# the last: warn about the root a season ahead, not a month, so there is time for it.
ROOT_WARN_DAYS = 90


@dataclass(frozen=True)
class Check:
    level: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"level": self.level, "message": self.message}


@dataclass(frozen=True)
class Intermediate:
    subject: str
    serial: str
    not_before: datetime
    not_after: datetime
    days_left: float

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "serial": self.serial,
                "notBefore": self.not_before.isoformat(), "notAfter": self.not_after.isoformat(),
                "daysLeft": round(self.days_left, 2)}


@dataclass(frozen=True)
class ClusterCerts:
    """One cluster's live ``cacerts``, judged."""

    name: str
    present: bool
    intermediate: Intermediate | None
    roots: tuple[str, ...]
    signing_root: str | None
    chain_verifies: bool
    matches_local: bool
    rotation_stage: int | None
    checks: tuple[Check, ...]

    @property
    def level(self) -> str:
        return worst(c.level for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "level": self.level, "present": self.present,
                "intermediate": self.intermediate.to_json() if self.intermediate else None,
                "roots": list(self.roots), "signingRoot": self.signing_root,
                "chainVerifies": self.chain_verifies, "matchesLocal": self.matches_local,
                "rotationStage": self.rotation_stage,
                "checks": [c.to_json() for c in self.checks]}


@dataclass(frozen=True)
class CertsStatus:
    """The mesh's CA as the clusters see it."""

    local_roots: tuple[str, ...]
    common_root: str | None
    rotation: rotation.State | None
    clusters: tuple[ClusterCerts, ...]
    checks: tuple[Check, ...]

    @property
    def level(self) -> str:
        return worst([c.level for c in self.checks] + [c.level for c in self.clusters])

    @property
    def failed(self) -> bool:
        return self.level == FAIL

    def to_json(self) -> dict[str, Any]:
        rot = None
        if self.rotation is not None:
            s = self.rotation
            rot = {"inProgress": not s.finished, "step": s.step, "complete": s.complete,
                   "done": s.done,
                   "next": f"certs.rotate --root --step {s.next_step}" if s.next_step else None,
                   "oldRoot": s.old_root, "newRoot": s.new_root, "started": s.started,
                   "updated": s.updated, "archived": s.archived,
                   "step2Finished": (s.step2_time.isoformat(timespec="seconds")
                                     if s.step2_time else None)}
        return {"schema": SCHEMA, "level": self.level, "localRoots": list(self.local_roots),
                "commonRoot": self.common_root, "rotation": rot,
                "clusters": [c.to_json() for c in self.clusters],
                "checks": [c.to_json() for c in self.checks]}


# --- one cluster ---------------------------------------------------------------------


def _short(fp: str) -> str:
    return fp[:23] + "…"


def judge_cluster(name: str, secret: Mapping[str, Any] | None, *,
                  local_roots: list[x509.Certificate], local_files: Mapping[str, bytes] | None,
                  state: rotation.State | None, now: datetime | None = None) -> ClusterCerts:
    """Pure: the checks on one cluster's Secret (``None``: not there) against local facts."""
    now = now or datetime.now(UTC)
    if secret is None:
        return ClusterCerts(name, False, None, (), None, False, False, None, (Check(
            FAIL, f"no istio-system/cacerts: istiod uses a self-signed CA no other cluster "
                  f"trusts (hint: certs.issue --cluster {name})"),))
    try:
        bundle = cacerts.parse(name, secret)
    except ValueError as e:  # e names the field: "ca-key.pem: the private key is encrypted"
        return ClusterCerts(name, False, None, (), None, False, False, None, (Check(
            FAIL, f"{cacerts.WHAT} is not a usable CA bundle: {e}"),))
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    checks: list[Check] = []
    ca = bundle.ca_cert
    inter = Intermediate(subject=ca.subject.rfc4514_string(), serial=f"{ca.serial_number:x}",
                         not_before=ca.not_valid_before_utc, not_after=ca.not_valid_after_utc,
                         days_left=certs.days_left(ca, now=now))
    problem = certs.validity_problem(ca, now=now)
    if problem:
        checks.append(Check(FAIL, f"intermediate {problem}"))
    elif inter.days_left < WARN_DAYS:
        checks.append(Check(WARN, f"intermediate expires in {inter.days_left:.0f} days "
                                  f"(hint: certs.rotate --cluster {name})"))
    for root in bundle.roots:
        root_problem = certs.validity_problem(root, now=now)
        root_days = certs.days_left(root, now=now)
        if root_problem:
            checks.append(Check(FAIL, f"root {_short(pki.fingerprint(root))} {root_problem}"))
        elif root_days < ROOT_WARN_DAYS and not _dropping(root, state):
            checks.append(Check(WARN, f"root {_short(pki.fingerprint(root))} expires in "
                                      f"{root_days:.0f} days, and every intermediate and "
                                      "workload certificate under it with it (hint: "
                                      "certs.rotate --root --step 1; the staged rotation "
                                      "waits ca.workloadCertTTL before its last step)"))
    if not pki.same_public_key(ca, bundle.ca_key):
        checks.append(Check(FAIL, "ca-key.pem does not belong to ca-cert.pem"))

    try:
        signing = pki.fingerprint(bundle.signing_root)
    except ValueError:
        signing = None
        checks.append(Check(FAIL, "the intermediate is not signed by any root in "
                                  "root-cert.pem"))
    try:
        chain = pki.load_certs(data.get(certs.CERT_CHAIN, b""))
    except ValueError:
        chain = []
    chain_problem = certs.chain_problem_to(chain, local_roots)
    if chain and chain[0] != ca:
        chain_problem = "cert-chain.pem does not start with ca-cert.pem"
    if chain_problem:
        checks.append(Check(FAIL if local_roots else WARN, chain_problem))

    matches = local_files is not None and all(
        data.get(f) == local_files.get(f) for f in certs.CACERTS_FILES)
    if local_files is None:
        checks.append(Check(WARN, "no local copy in ca.dir to compare with"))
    elif not matches:
        local = _bundle_or_none(name, local_files)
        what = cacerts.difference(bundle, local) if local else "local files unreadable"
        checks.append(Check(WARN, f"differs from the local files: {what}"))

    stage = None
    if state is not None and not state.finished:
        stage = rotation.stage_of(bundle, state.old_root, state.new_root)
        if stage is None:
            checks.append(Check(FAIL, "root rotation in progress, but this cluster holds "
                                      "neither the old nor the new root's bundle"))
    elif len(bundle.roots) > 1:
        checks.append(Check(WARN, f"root-cert.pem holds {len(bundle.roots)} roots but no root "
                                  "rotation is in progress"))
    if not checks:
        checks.append(Check(PASS, f"intermediate valid {inter.days_left:.0f} more days, "
                                  "chain verifies to the local root, matches local files"))
    return ClusterCerts(name=name, present=True, intermediate=inter,
                        roots=tuple(pki.fingerprint(r) for r in bundle.roots),
                        signing_root=signing, chain_verifies=chain_problem is None,
                        matches_local=matches, rotation_stage=stage, checks=tuple(checks))


def _dropping(root: x509.Certificate, state: rotation.State | None) -> bool:
    """True for the old root of a rotation in progress: its end is being dealt with."""
    return (state is not None and not state.finished
            and pki.fingerprint(root) == state.old_root)


def _bundle_or_none(name: str, data: Mapping[str, bytes]) -> certs.Bundle | None:
    try:
        return certs.bundle_from_files(name, dict(data))
    except ValueError:
        return None


# --- across clusters -----------------------------------------------------------------


def cross_checks(clusters: Iterable[ClusterCerts],
                 local_roots: tuple[str, ...]) -> tuple[str | None, list[Check]]:
    """A root every cluster trusts, and who does not trust whose intermediate."""
    present = [c for c in clusters if c.present]
    if len(present) < 1:
        return None, []
    common = set(present[0].roots).intersection(*(set(c.roots) for c in present[1:]))
    # the reference root: a local one if anyone trusts it, else the most trusted
    counts = Counter(fp for c in present for fp in c.roots)
    reference = next((fp for fp in local_roots if counts[fp]), None) or (
        counts.most_common(1)[0][0] if counts else None)
    checks = []
    if not common:
        odd = [c.name for c in present if reference not in c.roots]
        checks.append(Check(FAIL, f"no root common to all clusters: {', '.join(odd)} "
                                  f"{'does' if len(odd) == 1 else 'do'} not trust root "
                                  f"{_short(reference or '?')}"))
    common_root = next((fp for fp in local_roots if fp in common), None) or (
        sorted(common)[0] if common else None)
    for a in present:
        for b in present:
            if a is not b and a.signing_root and a.signing_root not in b.roots:
                checks.append(Check(FAIL, f"{b.name} does not trust {a.name}'s intermediate "
                                          f"(issued by root {_short(a.signing_root)}): "
                                          f"cross-cluster mTLS from {a.name} fails"))
    if not checks and len(present) > 1:
        checks.append(Check(PASS, f"all {len(present)} clusters trust root "
                                  f"{_short(common_root or '?')} and each other's "
                                  "intermediates"))
    return common_root, checks


def collect(config: Config, names: Iterable[str] | None = None, *,
            clients: Mapping[str, kube.Kube] | None = None,
            now: datetime | None = None) -> CertsStatus:
    """Read every named cluster's ``cacerts`` (default: all) and judge them.

    A cluster that cannot be read is a FAIL row naming why; the others are still
    read and judged (one unreachable cluster must not hide the rest).
    """
    settings = config.mesh.ca
    chosen = sorted(names or config.clusters)
    for name in chosen:
        config.cluster(name)
    roots = rotation.trusted_roots(settings)
    local_fps = tuple(pki.fingerprint(r) for r in roots)
    state = rotation.load_state(settings)
    clusters = []
    for name in chosen:
        try:
            k = (clients[name] if clients and name in clients
                 else kube.client(config.clusters[name],
                                  deadline=min(15.0, kube.DEFAULT_DEADLINE)))
            secret = k.get(cacerts.PATH, what=f"read {cacerts.WHAT}")
        except ClusterError as e:
            clusters.append(ClusterCerts(name, False, None, (), None, False, False, None,
                                         (Check(FAIL, f"cannot read cacerts: {e}"),)))
            continue
        directory = certs.cluster_dir(settings, name)
        local = ({f: (directory / f).read_bytes() for f in certs.CACERTS_FILES
                  if (directory / f).exists()} if (directory / certs.CA_CERT).exists() else None)
        clusters.append(judge_cluster(name, secret, local_roots=roots, local_files=local,
                                      state=state, now=now))
    common, checks = cross_checks(clusters, local_fps)
    if state is not None and not state.finished:
        when = ""
        if state.step == 2 and state.step2_time is not None:
            start = state.step2_time + timedelta(seconds=settings.workload_cert_ttl)
            when = f", not before {start:%Y-%m-%d %H:%M:%S} UTC (ca.workloadCertTTL)"
        checks.append(Check(PASS, f"root rotation in progress: step {state.done} of 3 done; "
                                  f"next: certs.rotate --root --step {state.next_step}{when}"))
    return CertsStatus(local_roots=local_fps, common_root=common, rotation=state,
                       clusters=tuple(clusters), checks=tuple(checks))
