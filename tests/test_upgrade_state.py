"""The upgrade's record entry (untrusted input) and the order of its stages, offline."""

from __future__ import annotations

import json

import pytest

from meshctl.errors import CheckFailed
from meshctl.mesh import install, install_record, upgrade_record
from meshctl.mesh.upgrade_record import Upgrade
from meshctl.upgrade import state

UP = Upgrade(from_revision="", to_revision="canary", from_version="1.31-dev.20260423",
             to_version="1.31-dev.20260827", stage="start", done=False)


def rec(up: Upgrade | None) -> dict[str, str]:
    return {} if up is None else {upgrade_record.KEY: up.dump()}


def test_entry_round_trips_and_is_checked_as_untrusted_input() -> None:
    entry = UP.at("move", done=True).with_moved(["b", "a"])
    assert upgrade_record.problem(entry.dump()) is None
    assert upgrade_record.parse(rec(entry)) == entry
    doc = json.loads(entry.dump())
    for bad, why in ((dict(doc, extra=1), "JSON object"), (dict(doc, stage="sideways"), "stage"),
                     (dict(doc, to_revision="Bad_Rev"), "revisions"),
                     (dict(doc, to_revision=""), "revisions"),
                     (dict(doc, from_version="1.31\n"), "version"),
                     (dict(doc, moved=["../etc"]), "namespace"),
                     (dict(doc, done="yes"), "stage")):
        problem = upgrade_record.problem(json.dumps(bad))
        assert problem and why in problem, (bad, problem)
        assert upgrade_record.parse({upgrade_record.KEY: json.dumps(bad)}) is None
    assert upgrade_record.problem("{") == "is not JSON"


def test_install_record_refuses_a_tampered_upgrade_entry_whole() -> None:
    cm = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "meshctl"}},
          "data": {"mesh": "mesh1", "upgrade": json.dumps({"stage": "finish"})}}
    problem = install_record.problem(cm, cluster="c1", mesh_id="mesh1")
    assert problem and "key 'upgrade'" in problem
    cm["data"]["upgrade"] = UP.dump()
    assert install_record.problem(cm, cluster="c1", mesh_id="mesh1") is None


def test_the_new_revisions_operator_must_carry_its_own_name() -> None:
    text = "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata:\n  " \
           "name: {name}\n  namespace: istio-system\nspec:\n  revision: canary\n"
    base = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "meshctl"}}}
    for name, ok in (("meshctl-c1-canary", True), ("meshctl-c1", False),
                     ("meshctl-c2-canary", False)):
        op = text.format(name=name)
        cm = {**base, "data": {"mesh": "mesh1", upgrade_record.TARGET: install.digest(op),
                               install.OPERATOR_PREFIX + upgrade_record.TARGET: op}}
        problem = install_record.problem(cm, cluster="c1", mesh_id="mesh1")
        assert (problem is None) == ok, (name, problem)


def test_mesh_stage_is_the_most_advanced_and_done_only_when_every_cluster_says_so() -> None:
    assert state.mesh_upgrade({"a": {}, "b": {}}) is None
    one = state.mesh_upgrade({"a": rec(UP), "b": {}})
    assert one is not None and one.stage == "start" and not one.done
    both = state.mesh_upgrade({"a": rec(UP.at("start", done=True)),
                               "b": rec(UP.at("move", done=False).with_moved(["x"]))})
    assert both is not None and (both.stage, both.done, both.moved) == ("move", False, ("x",))
    done = state.mesh_upgrade({"a": rec(UP.at("move", done=True)),
                               "b": rec(UP.at("move", done=True))})
    assert done is not None and done.done
    other = Upgrade(**{**UP.__dict__, "to_revision": "blue"})
    with pytest.raises(CheckFailed, match="different upgrades"):
        state.mesh_upgrade({"a": rec(UP), "b": rec(other)})


@pytest.mark.parametrize("stage,up,to,allowed,says", [
    ("start", None, "canary", True, ""),
    ("start", UP, "canary", True, ""),  # a re-run of an interrupted start converges
    ("start", UP, "blue", False, "not a second upgrade"),
    ("start", UP.at("finish", done=True), "blue", True, ""),
    ("start", UP.at("rollback", done=True), "blue", True, ""),
    ("move", None, None, False, "no upgrade is in progress"),
    ("move", UP, None, False, "re-run 'upgrade --to canary"),
    ("move", UP.at("start", done=True), None, True, ""),
    ("move", UP.at("move", done=False), None, True, ""),
    ("move", UP.at("finish", done=False), None, False, "re-run 'upgrade --finish'"),
    ("finish", UP.at("start", done=True), None, False, "run 'upgrade --move' first"),
    ("finish", UP.at("move", done=True), None, True, ""),
    ("finish", UP.at("finish", done=False), None, True, ""),
    ("finish", UP.at("rollback", done=False), None, False, "re-run 'upgrade --rollback'"),
    ("finish", UP.at("finish", done=True), None, False, "nothing to finish"),
    ("rollback", UP.at("move", done=False), None, True, ""),
    ("rollback", UP.at("start", done=True), None, True, ""),
    ("rollback", UP.at("finish", done=False), None, False, "re-run 'upgrade --finish'"),
    ("rollback", UP.at("rollback", done=True), None, False, "nothing to rollback"),
])
def test_stages_come_in_order_and_a_refusal_names_the_next(stage, up, to, allowed,
                                                            says) -> None:
    problem = state.order_problem(stage, up, to=to, all_moved=False)
    assert (problem is None) == allowed, problem
    if says:
        assert says in problem


def test_next_step_is_a_command() -> None:
    assert state.next_step(None).startswith("upgrade --to")
    assert state.next_step(UP.at("start", done=True)) == "upgrade --move"
    assert "--finish" in state.next_step(UP.at("move", done=True))
    assert "re-run" in state.next_step(UP.at("finish", done=False))


def test_bootstrap_is_refused_during_an_upgrade_and_after_one_until_mesh_yaml_follows() -> None:
    from meshctl import istio

    ctl = istio.Istioctl(path=__import__("pathlib").Path("/x/istioctl"),
                         version="1.31-dev.20260827")
    op = ("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata:\n"
          "  name: meshctl-c1-canary\nspec:\n  revision: canary\n")
    during = {upgrade_record.KEY: UP.dump(), install.REC_VERSION: "1.31-dev.20260423"}
    assert "in progress" in install.version_problem(during, ctl, "")
    after = {upgrade_record.KEY: UP.at("finish", done=True).dump(),
             install.REC_VERSION: "1.31-dev.20260827",
             install.OPERATOR_PREFIX + install_record.CONTROL_PLANE: op}
    assert "set istio.revision: canary" in install.version_problem(after, ctl, "")
    assert install.version_problem(after, ctl, "canary") is None


def test_a_revision_tag_set_by_finish_counts_as_meshctls_only_beside_its_injector() -> None:
    """After ``upgrade --finish`` the default tag carries no owning resource (``istioctl
    tag set`` made it); preflight's ownership check accepts it when it points at a
    revision whose injector meshctl's operator installed, and nothing else."""
    from meshctl.config import Cluster
    from meshctl.preflight import facts as pfacts
    from meshctl.preflight import ownership as pown
    from meshctl.preflight.found import Found, IstioFound

    def hook(name: str, revision: str, owner: str = "") -> Found:
        return Found(kind="MutatingWebhookConfiguration", namespace="", name=name,
                     revision=revision, owner=owner)

    cluster = Cluster(name="c1", context="c1", network="n1", role="primary",
                      source=__import__("pathlib").Path("c1.yaml"))
    fp = pfacts.Footprint(istiod=True, ingress_gateway=True, east_west_gateway=True,
                          istio_gateways=False, link_source=True)
    ours = hook("istio-sidecar-injector-canary", "canary", "meshctl-c1-canary")
    tag = hook("istio-revision-tag-default", "canary")
    stray = hook("istio-revision-tag-default", "blue")
    other = hook("istio-sidecar-injector-blue", "blue")
    found = IstioFound(webhooks=[ours, tag], record=True)
    f = pfacts.Facts(cluster=cluster, footprint=fp, istio_found=found)
    assert pown.mine(f, tag) and pown.mine(f, ours)
    assert not pown.mine(f, stray) and not pown.mine(f, other)
    f.istio_found = IstioFound(webhooks=[ours, tag], record=False)
    assert not pown.mine(f, tag)


def test_status_says_a_mixed_version_mesh_is_expected_during_an_upgrade() -> None:
    from meshctl import report

    up = UP.at("move", done=False).with_moved(["shop"])
    doc = {**up.__dict__, "moved": list(up.moved)}
    line = report._upgrade_note("cluster1", doc)
    assert "upgrade in progress" in line and "1.31-dev.20260423" in line and \
        "1.31-dev.20260827" in line and "accepted during an upgrade" in line and "shop" in line
    done = report._upgrade_note("cluster1", {**doc, "stage": "finish", "done": True})
    assert "last upgrade" in done and "in progress" not in done
