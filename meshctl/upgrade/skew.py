"""Version skew during an upgrade: what Istio supports, as pure rules in plain words.

Istio's policy (istio.io's supported-releases and canary-upgrade pages): a control plane
may be one minor ahead of the proxies it serves, never behind them, and a revision
upgrade may jump at most two minors.  meshctl adds two rules of its own: one upgrade at
a time (the install record's stage says whether one is open), and control planes of
different versions only during an upgrade, and then only its two versions.  Each rule
returns the reason for a refusal, naming both versions, or None; nothing here reads a
cluster, so a refusal is decided before anything is written.

Versions are the strings cluster objects carry: istiod's ``operator.istio.io/version``
label or image tag, a proxy's image tag.  The minor comes from
:func:`meshctl.versions.major_minor`, and the minor rules are all Istio states.  Within
one minor:

- releases compare by patch (``1.30.1`` < ``1.30.2``);
- development snapshots have no release number: both of the sandbox's Istio builds are
  master snapshots of the 1.31 line and report 1.31, so each build is stamped with its
  snapshot date, and dated snapshots compare by that date
  (``1.31-dev.20260423`` < ``1.31-dev.20260827``), since two snapshots of one line are
  not compatible in general (an older istiod cannot serve a newer snapshot's chart);
- every ``-dev`` snapshot of a line precedes that line's releases (``1.31-dev.…`` <
  ``1.31.0``);
- anything else of one minor (an unstamped ``1.31-dev``, ``1.31.0-rc.1``,
  ``1.31-alpha.<sha>``) is not comparable: the skew rules accept it, as Istio's policy
  is by minor, and an upgrade between such versions is refused because it cannot be
  told to go forward.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshctl import versions
from meshctl.errors import one_line
from meshctl.mesh import upgrade_record

STAGES = upgrade_record.STAGES
CLOSING = ("finish", "rollback")  # once done, no upgrade is in progress
MAX_JUMP = 2  # minors per revision upgrade
MAX_PROXY_LAG = 1  # minors a control plane may be ahead of its proxies

_SHAPE = re.compile(r"v?\d+\.\d+[0-9A-Za-z.+_~-]{0,120}")
_RELEASE = re.compile(r"v?\d+\.\d+\.(\d+)")
_DEV = re.compile(r"v?\d+\.\d+-dev(?:\.(\d{8}))?")


@dataclass(frozen=True)
class Version:
    """One Istio version string, with what orders it inside its minor."""

    text: str  # as the object carries it, without a leading "v"
    major: int
    minor: int
    patch: int | None = None  # a release's patch number
    dev: bool = False  # a development snapshot (``-dev``) of its line
    snapshot: str = ""  # the snapshot's stamped date, YYYYMMDD ('' unstamped)

    @property
    def line(self) -> str:
        return f"{self.major}.{self.minor}"


def parse(text: str | None) -> Version | None:
    """The version ``text`` names, or None when it is not an Istio version's shape."""
    if not isinstance(text, str) or not _SHAPE.fullmatch(text):
        return None
    major_minor = versions.major_minor(text)
    if major_minor is None:
        return None
    release, dev = _RELEASE.fullmatch(text), _DEV.fullmatch(text)
    return Version(text=text.removeprefix("v"), major=major_minor[0], minor=major_minor[1],
                   patch=int(release.group(1)) if release else None, dev=dev is not None,
                   snapshot=(dev.group(1) or "") if dev else "")


def _sign(a: object, b: object) -> int:
    return (a > b) - (a < b)  # type: ignore[operator]


def compare(a: Version, b: Version) -> int | None:
    """-1, 0 or 1 as ``a`` is older than, the same as or newer than ``b``; None when
    they share a minor and nothing orders them (see the module docstring)."""
    if (a.major, a.minor) != (b.major, b.minor):
        return _sign((a.major, a.minor), (b.major, b.minor))
    if a.text == b.text:
        return 0
    if a.patch is not None and b.patch is not None:
        return _sign(a.patch, b.patch)
    if a.dev and b.patch is not None:
        return -1
    if a.patch is not None and b.dev:
        return 1
    if a.snapshot and b.snapshot:
        return _sign(a.snapshot, b.snapshot)
    return None


def _minors_ahead(a: Version, b: Version) -> int | None:
    """How many minors ``a`` is ahead of ``b`` (None across major versions)."""
    return a.minor - b.minor if a.major == b.major else None


def _shown(text: object) -> str:
    return one_line(repr(text), 80)


def data_plane_problem(*, control: str, proxy: str, where: str = "") -> str | None:
    """Why proxies of version ``proxy`` must not be served by a control plane of version
    ``control`` (``where``, e.g. "cluster1 istiod-canary", starts the sentence)."""
    lead = f"{where}: " if where else ""
    c, p = parse(control), parse(proxy)
    if c is None or p is None:
        bad = control if c is None else proxy
        return f"{lead}{_shown(bad)} is not an Istio version, so its skew cannot be checked"
    if compare(p, c) == 1:
        return (f"{lead}proxies of Istio {p.text} are newer than their control plane "
                f"(Istio {c.text}): a control plane may be ahead of its proxies, never "
                "behind them")
    ahead = _minors_ahead(c, p)
    if ahead is None or ahead > MAX_PROXY_LAG:
        return (f"{lead}the control plane (Istio {c.text}) is more than one minor ahead of "
                f"its proxies (Istio {p.text}): Istio supports proxies at most one minor "
                "behind their control plane")
    return None


def jump_problem(*, current: str, target: str) -> str | None:
    """Why the mesh, at ``current``, must not be upgraded to ``target``."""
    c, t = parse(current), parse(target)
    if c is None or t is None:
        bad = current if c is None else target
        return f"{_shown(bad)} is not an Istio version, so the upgrade cannot be checked"
    order = compare(t, c)
    if order == 0:
        return f"the mesh already runs Istio {c.text}: there is nothing to upgrade to"
    if order == -1:
        return (f"Istio {t.text} is older than the installed Istio {c.text}: an upgrade "
                "only goes forward (before finish, --rollback returns to the old revision)")
    if order is None:
        return (f"cannot tell whether Istio {t.text} is newer than the installed Istio "
                f"{c.text}: both are {c.line}, and neither is a release or a dated "
                "snapshot of it")
    ahead = _minors_ahead(t, c)
    if ahead is None:
        return (f"Istio {c.text} to {t.text} crosses a major version: a revision upgrade "
                "moves at most two minors within one")
    if ahead > MAX_JUMP:
        return (f"Istio {c.text} to {t.text} jumps {ahead} minors: a revision upgrade may "
                f"jump at most {MAX_JUMP} (upgrade to {c.major}.{c.minor + MAX_JUMP} first)")
    return None


@dataclass(frozen=True)
class UpgradeRecord:
    """The upgrade as the install record keeps it: from and to, and its latest stage."""

    from_version: str
    to_version: str
    stage: str  # one of STAGES
    done: bool = True  # False: the stage began and did not finish (a crash, Ctrl-C)

    @property
    def open(self) -> bool:
        """True while the upgrade is in progress: until finish or rollback is done."""
        return not (self.stage in CLOSING and self.done)

    def __str__(self) -> str:
        state = "done" if self.done else "begun, not done"
        return (f"the upgrade from Istio {one_line(self.from_version, 80)} to "
                f"{one_line(self.to_version, 80)} ({one_line(self.stage, 20)} {state})")


def _same(a: str, b: str) -> bool:
    pa, pb = parse(a), parse(b)
    return compare(pa, pb) == 0 if pa and pb else a == b


def second_upgrade_problem(recorded: UpgradeRecord | None, *, target: str) -> str | None:
    """Why an upgrade to ``target`` must not start, given the recorded upgrade.

    Re-running toward the recorded target is not a second upgrade (a re-run converges;
    whether its stage comes in order is the stage's own check).  A stage the record
    should not hold is refused: the record is read from the cluster, like any input.
    """
    if recorded is None:
        return None
    if recorded.stage not in STAGES:
        return (f"the install record holds upgrade stage {_shown(recorded.stage)}, which "
                f"is none of meshctl's ({', '.join(STAGES)})")
    if not recorded.open or _same(recorded.to_version, target):
        return None
    if not recorded.done:
        next_step = f"re-run --{recorded.stage} to complete it"
    else:
        next_step = "finish it (--finish) or roll it back (--rollback)"
    return (f"{recorded} is in progress: {next_step} before an upgrade to Istio "
            f"{one_line(target, 80)}")


@dataclass(frozen=True)
class ControlPlane:
    """One istiod revision on one cluster, and the proxies it serves by version."""

    cluster: str
    revision: str  # "default" for the unrevisioned install
    version: str
    proxies: Mapping[str, int] = field(default_factory=dict)  # proxy version -> count


@dataclass(frozen=True)
class MeshVersions:
    """Which Istio versions the mesh runs, whether that is accepted, in words."""

    versions: tuple[str, ...]  # control planes' versions, oldest first
    problems: tuple[str, ...]  # empty: accepted
    lines: tuple[str, ...]  # a heading, then one line per control plane

    @property
    def mixed(self) -> bool:
        return len(self.versions) > 1


def _order_key(text: str) -> tuple[int, int, int, int, str, str]:
    v = parse(text)
    if v is None:
        return (-1, -1, -1, -1, "", text)
    return (v.major, v.minor, 1 if v.patch is not None else 0, v.patch or 0, v.snapshot,
            v.text)


def mesh_versions(planes: Sequence[ControlPlane], *,
                  upgrade: UpgradeRecord | None) -> MeshVersions:
    """The versions every control plane and its proxies run, judged as a whole.

    Every control plane's proxies follow :func:`data_plane_problem`.  Control planes of
    different versions are accepted only while ``upgrade`` is open, and then only at its
    two versions: that mixed mesh is the heading's subject.  Outside an upgrade one
    version is expected.
    """
    problems: list[str] = []
    found = [one_line(v, 80) for v in sorted({p.version for p in planes}, key=_order_key)]
    for plane in planes:
        where = f"{plane.cluster} {plane.revision}"
        if parse(plane.version) is None:
            problems.append(f"{where}: {_shown(plane.version)} is not an Istio version")
            continue
        for proxy, count in sorted(plane.proxies.items()):
            problem = data_plane_problem(control=plane.version, proxy=proxy,
                                         where=f"{where} ({count} proxies)")
            if problem:
                problems.append(problem)
    if upgrade is not None and upgrade.open:
        sides = (upgrade.from_version, upgrade.to_version)
        problems += [f"{p.cluster} {p.revision} runs Istio {one_line(p.version, 80)}, "
                     f"neither side of {upgrade}" for p in planes
                     if not any(_same(p.version, side) for side in sides)]
        heading = (f"mixed versions during {upgrade}: accepted" if len(found) > 1
                   else f"one version ({', '.join(found)}) during {upgrade}")
    elif len(found) > 1:
        problems.append(f"the control planes run {len(found)} Istio versions "
                        f"({', '.join(found)}) with no upgrade in "
                        "progress: outside an upgrade the mesh runs one version")
        heading = "mixed versions with no upgrade in progress"
    else:
        heading = f"one version: Istio {found[0]}" if found else "no control plane"
    lines = [heading]
    for plane in planes:
        proxies = ", ".join(f"{v} ×{n}" for v, n in sorted(plane.proxies.items()))
        lines.append(f"{plane.cluster} {plane.revision}: Istio {one_line(plane.version, 80)}"
                     + (f"; proxies {proxies}" if proxies else "; no proxies"))
    return MeshVersions(versions=tuple(found), problems=tuple(problems), lines=tuple(lines))
