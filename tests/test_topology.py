"""The plan for each topology: who holds which secret, who gets gateways, who exposes istiod."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from meshctl import config, topology
from tests.factories import cluster_doc, write_folder


@dataclass
class Case:
    id: str
    clusters: list[dict]
    remotes: tuple[str, ...]
    model: str
    multi_network: bool
    links: set[tuple[str, str]]  # (holder, whose secret)
    east_west: set[str]
    expose_services: set[str]
    expose_istiod: set[str]


CASES = [
    Case("multi-primary-one-network",
         [cluster_doc("c1"), cluster_doc("c2")], ("c2",),
         topology.MULTI_PRIMARY, False, {("c1", "c2"), ("c2", "c1")}, set(), set(), set()),
    Case("multi-primary-two-networks",
         [cluster_doc("c1"), cluster_doc("c2", network="n2")], ("c2",),
         topology.MULTI_PRIMARY, True, {("c1", "c2"), ("c2", "c1")}, {"c1", "c2"},
         {"c1", "c2"}, set()),
    Case("primary-remote-one-network",
         [cluster_doc("c1"), cluster_doc("c2", role="remote")], ("c2",),
         topology.PRIMARY_REMOTE, False, {("c1", "c2")}, {"c1"}, set(), {"c1"}),
    Case("primary-remote-two-networks",
         [cluster_doc("c1"), cluster_doc("c2", role="remote", network="n2")], ("c2",),
         topology.PRIMARY_REMOTE, True, {("c1", "c2")}, {"c1", "c2"}, {"c1", "c2"}, {"c1"}),
    Case("main-with-two-remotes",
         [cluster_doc("c1"), cluster_doc("c2", role="remote"), cluster_doc("c3", role="remote")],
         ("c2", "c3"), topology.PRIMARY_REMOTE, False, {("c1", "c2"), ("c1", "c3")}, {"c1"},
         set(), {"c1"}),
    Case("three-primaries",
         [cluster_doc("c1"), cluster_doc("c2"), cluster_doc("c3")], ("c2", "c3"),
         topology.MULTI_PRIMARY, False,
         {(a, b) for a in ("c1", "c2", "c3") for b in ("c1", "c2", "c3") if a != b},
         set(), set(), set()),
    Case("primary-plus-remote-mixed",
         [cluster_doc("c1"), cluster_doc("c2"), cluster_doc("c3", role="remote", network="n3")],
         ("c2", "c3"), topology.MIXED, True,
         {("c1", "c2"), ("c1", "c3"), ("c2", "c1"), ("c2", "c3")}, {"c1", "c2", "c3"},
         {"c1", "c2", "c3"}, {"c1"}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan(tmp_path: Path, case: Case) -> None:
    cfg = config.load(write_folder(tmp_path, case.clusters))
    plan = topology.plan(cfg, "c1", case.remotes)
    assert plan.model == case.model
    assert plan.multi_network is case.multi_network
    assert {(link.target, link.source) for link in plan.links} == case.links
    assert {c.name for c in plan.clusters if c.east_west_gateway} == case.east_west
    assert {c.name for c in plan.clusters if c.expose_services} == case.expose_services
    assert {c.name for c in plan.clusters if c.expose_istiod} == case.expose_istiod
    for c in plan.clusters:
        assert set(c.remote_secrets) == {s for t, s in case.links if t == c.name}
        assert c.control_plane == (None if c.istio_role == "primary" else "c1")
    assert plan.names[0] == "c1" and plan.get("c1").role == "main"


def test_plan_is_json_ready(tmp_path: Path) -> None:
    import json

    cfg = config.load(write_folder(tmp_path, [cluster_doc("c1"), cluster_doc("c2")]))
    doc = json.loads(json.dumps(topology.plan(cfg, "c1", ["c2"]).to_dict()))
    assert doc["main"] == "c1" and doc["links"][0] == {"target": "c1", "source": "c2"}
