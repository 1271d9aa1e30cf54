"""The upgrade's skew rules (meshctl/upgrade/skew.py): pure, table-driven, no cluster.

The versions are what cluster objects carry: releases, and the sandbox's two stamped
master snapshots of one development line (the same minor, told apart by their date).
"""

from __future__ import annotations

import pytest

from meshctl.upgrade import skew

OLD_SNAPSHOT = "1.31-dev.20260423"  # the sandbox's previous Istio build
NEW_SNAPSHOT = "1.31-dev.20260827"  # the sandbox's pinned Istio build


# --- parsing and order ------------------------------------------------------------------

@pytest.mark.parametrize("a,b,order", [
    ("1.30.2", "1.30.1", 1),
    ("v1.30.1", "1.30.1", 0),
    ("1.29.9", "1.30.0", -1),
    ("1.30.0", "2.0.0", -1),
    (OLD_SNAPSHOT, NEW_SNAPSHOT, -1),  # same minor: by the stamped snapshot date
    (NEW_SNAPSHOT, OLD_SNAPSHOT, 1),
    (NEW_SNAPSHOT, NEW_SNAPSHOT, 0),
    (NEW_SNAPSHOT, "1.31.0", -1),  # a dev line's snapshots precede its releases
    ("1.31.0", NEW_SNAPSHOT, 1),
    ("1.31-dev", "1.31.0", -1),
    (NEW_SNAPSHOT, "1.30.5", 1),  # another minor: the minor decides
    ("1.31-dev", NEW_SNAPSHOT, None),  # unstamped: nothing orders them
    ("1.31.0-rc.1", "1.31.0", None),
    ("1.31-alpha.eed52ebb", "1.31-alpha.b01690e6", None),
], ids=lambda v: str(v))
def test_compare_orders_releases_and_dated_snapshots(a: str, b: str, order: int | None) -> None:
    pa, pb = skew.parse(a), skew.parse(b)
    assert pa is not None and pb is not None
    assert skew.compare(pa, pb) == order


@pytest.mark.parametrize("text", ["", "latest", "unknown", "1", "1.31 dev", "1.31\n",
                                  "x1.31.0", "1.31." + "9" * 200, None])
def test_parse_refuses_what_is_no_version(text: str | None) -> None:
    assert skew.parse(text) is None


def test_parse_reads_the_sandbox_stamps() -> None:
    v = skew.parse(NEW_SNAPSHOT)
    assert v == skew.Version(text=NEW_SNAPSHOT, major=1, minor=31, patch=None, dev=True,
                             snapshot="20260827")
    assert skew.parse("v1.30.2") == skew.Version(text="1.30.2", major=1, minor=30, patch=2)


# --- data plane vs control plane ----------------------------------------------------------

@pytest.mark.parametrize("control,proxy,fragments", [
    ("1.30.2", "1.30.2", None),
    ("1.31.0", "1.30.4", None),  # one minor ahead: Istio's supported skew
    ("1.30.2", "1.30.1", None),
    (NEW_SNAPSHOT, OLD_SNAPSHOT, None),  # the later snapshot serves the earlier's proxies
    ("1.31.0", NEW_SNAPSHOT, None),
    ("1.31-dev", NEW_SNAPSHOT, None),  # same minor, not comparable: the minor rule holds
    ("1.30.2", "1.31.0", ("1.31.0", "newer", "1.30.2", "never behind")),
    ("1.30.1", "1.30.2", ("1.30.2", "newer", "1.30.1")),
    (OLD_SNAPSHOT, NEW_SNAPSHOT, (NEW_SNAPSHOT, "newer", OLD_SNAPSHOT)),
    (NEW_SNAPSHOT, "1.31.0", ("1.31.0", "newer", NEW_SNAPSHOT)),
    ("1.31.0", "1.29.3", ("1.31.0", "more than one minor ahead", "1.29.3")),
    ("2.0.0", "1.30.0", ("2.0.0", "more than one minor ahead", "1.30.0")),
    ("1.30.2", "latest", ("'latest'", "not an Istio version")),
], ids=lambda v: str(v))
def test_data_plane_rule(control: str, proxy: str, fragments: tuple[str, ...] | None) -> None:
    problem = skew.data_plane_problem(control=control, proxy=proxy, where="cluster1 canary")
    if fragments is None:
        assert problem is None
        return
    assert problem is not None and problem.startswith("cluster1 canary: ")
    assert "\n" not in problem
    for fragment in fragments:
        assert fragment in problem, problem


# --- the jump ---------------------------------------------------------------------------

@pytest.mark.parametrize("current,target,fragments", [
    ("1.29.3", "1.31.0", None),  # two minors: the most a revision upgrade may jump
    ("1.30.2", "1.31.0", None),
    ("1.30.1", "1.30.2", None),
    (OLD_SNAPSHOT, NEW_SNAPSHOT, None),  # the sandbox's upgrade: same minor, later date
    (NEW_SNAPSHOT, "1.31.0", None),
    ("1.28.0", "1.31.0", ("1.28.0", "1.31.0", "jumps 3 minors", "upgrade to 1.30 first")),
    ("1.30.0", "2.0.0", ("1.30.0", "2.0.0", "crosses a major version")),
    ("1.31.0", "1.30.2", ("1.30.2", "older than", "1.31.0", "--rollback")),
    (NEW_SNAPSHOT, OLD_SNAPSHOT, (OLD_SNAPSHOT, "older than", NEW_SNAPSHOT)),
    (NEW_SNAPSHOT, NEW_SNAPSHOT, (NEW_SNAPSHOT, "nothing to upgrade")),
    ("1.31-dev", NEW_SNAPSHOT, ("cannot tell", "1.31-dev", NEW_SNAPSHOT)),
    ("1.30.0", "latest", ("'latest'", "not an Istio version")),
], ids=lambda v: str(v))
def test_jump_rule(current: str, target: str, fragments: tuple[str, ...] | None) -> None:
    problem = skew.jump_problem(current=current, target=target)
    if fragments is None:
        assert problem is None
        return
    assert problem is not None and "\n" not in problem
    for fragment in fragments:
        assert fragment in problem, problem


# --- one upgrade at a time ------------------------------------------------------------------

def record(stage: str, done: bool = True) -> skew.UpgradeRecord:
    return skew.UpgradeRecord(from_version=OLD_SNAPSHOT, to_version=NEW_SNAPSHOT,
                              stage=stage, done=done)


@pytest.mark.parametrize("recorded,target,fragments", [
    (None, "1.31.0", None),
    (record("finish"), "1.31.0", None),  # closed upgrades do not block the next
    (record("rollback"), "1.31.0", None),
    (record("start", done=False), NEW_SNAPSHOT, None),  # a re-run of the same upgrade
    (record("move"), NEW_SNAPSHOT, None),
    (record("start"), "1.31.0", (OLD_SNAPSHOT, NEW_SNAPSHOT, "1.31.0", "in progress",
                                 "start done", "--finish", "--rollback")),
    (record("move"), "1.31.0", ("move done", "1.31.0")),
    (record("finish", done=False), "1.31.0", ("finish begun, not done", "re-run --finish")),
    (record("rollback", done=False), "1.31.0", ("re-run --rollback",)),
    (record("upgrading"), "1.31.0", ("'upgrading'", "none of meshctl's")),
], ids=lambda v: str(v))
def test_second_upgrade_rule(recorded: skew.UpgradeRecord | None, target: str,
                             fragments: tuple[str, ...] | None) -> None:
    problem = skew.second_upgrade_problem(recorded, target=target)
    if fragments is None:
        assert problem is None
        return
    assert problem is not None and "\n" not in problem
    for fragment in fragments:
        assert fragment in problem, problem


# --- the mesh as a whole ------------------------------------------------------------------

def plane(cluster: str, revision: str, version: str,
          proxies: dict[str, int] | None = None) -> skew.ControlPlane:
    return skew.ControlPlane(cluster=cluster, revision=revision, version=version,
                             proxies=proxies or {})


OLD_PROXIES = {OLD_SNAPSHOT: 4}
NEW_PROXIES = {NEW_SNAPSHOT: 2}


def test_mixed_mesh_during_an_upgrade_is_accepted_and_described() -> None:
    planes = [plane("cluster1", "default", OLD_SNAPSHOT, OLD_PROXIES),
              plane("cluster1", "canary", NEW_SNAPSHOT, NEW_PROXIES),
              plane("cluster2", "default", OLD_SNAPSHOT),
              plane("cluster2", "canary", NEW_SNAPSHOT)]
    seen = skew.mesh_versions(planes, upgrade=record("move"))
    assert seen.problems == ()
    assert seen.mixed and seen.versions == (OLD_SNAPSHOT, NEW_SNAPSHOT)  # oldest first
    assert seen.lines[0] == (f"mixed versions during the upgrade from Istio {OLD_SNAPSHOT} "
                             f"to {NEW_SNAPSHOT} (move done): accepted")
    assert seen.lines[1:] == (f"cluster1 default: Istio {OLD_SNAPSHOT}; proxies "
                              f"{OLD_SNAPSHOT} ×4",
                              f"cluster1 canary: Istio {NEW_SNAPSHOT}; proxies "
                              f"{NEW_SNAPSHOT} ×2",
                              f"cluster2 default: Istio {OLD_SNAPSHOT}; no proxies",
                              f"cluster2 canary: Istio {NEW_SNAPSHOT}; no proxies")


@pytest.mark.parametrize("planes,upgrade,fragments", [
    # outside an upgrade, two versions are not accepted
    ([plane("cluster1", "default", OLD_SNAPSHOT), plane("cluster2", "default", NEW_SNAPSHOT)],
     None, ("2 Istio versions", OLD_SNAPSHOT, NEW_SNAPSHOT, "no upgrade in progress")),
    ([plane("cluster1", "default", OLD_SNAPSHOT), plane("cluster2", "default", NEW_SNAPSHOT)],
     record("finish"), ("no upgrade in progress",)),
    # during one, a third version is neither side of it
    ([plane("cluster1", "default", OLD_SNAPSHOT), plane("cluster2", "canary", "1.30.4")],
     record("start"), ("cluster2 canary runs Istio 1.30.4", "neither side")),
    # new proxies left on the old control plane: the data plane is newer
    ([plane("cluster1", "default", OLD_SNAPSHOT, NEW_PROXIES),
      plane("cluster1", "canary", NEW_SNAPSHOT)],
     record("move"), ("cluster1 default (2 proxies)", NEW_SNAPSHOT, "newer", OLD_SNAPSHOT)),
    ([plane("cluster1", "default", "latest")], None, ("'latest'", "not an Istio version")),
], ids=["two-versions-no-upgrade", "two-versions-after-finish", "third-version",
        "newer-proxies-on-old-revision", "unreadable-version"])
def test_mesh_versions_refusals(planes: list[skew.ControlPlane],
                                upgrade: skew.UpgradeRecord | None,
                                fragments: tuple[str, ...]) -> None:
    seen = skew.mesh_versions(planes, upgrade=upgrade)
    assert seen.problems, seen
    text = " | ".join(seen.problems)
    for fragment in fragments:
        assert fragment in text, text


def test_one_version_outside_an_upgrade_is_accepted() -> None:
    seen = skew.mesh_versions([plane("cluster1", "default", NEW_SNAPSHOT, NEW_PROXIES),
                               plane("cluster2", "default", NEW_SNAPSHOT)], upgrade=None)
    assert seen.problems == () and not seen.mixed
    assert seen.lines[0] == f"one version: Istio {NEW_SNAPSHOT}"
