"""Rendered manifests parse and carry the values each topology needs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jinja2
import pytest
import yaml

from meshctl import config, manifests, topology
from tests.factories import cluster_doc, mesh_doc, write_folder


def render_all(tmp_path: Path, clusters: list[dict], remotes: list[str],
               mesh: dict | None = None) -> dict[str, dict[str, list[dict]]]:
    cfg = config.load(write_folder(tmp_path, clusters, mesh))
    plan = topology.plan(cfg, clusters[0]["name"], remotes)
    return {c.name: {f: list(yaml.safe_load_all(text))
                     for f, text in manifests.for_cluster(cfg, plan, c).items()}
            for c in plan.clusters}


def test_multi_primary_multi_network(tmp_path: Path) -> None:
    docs = render_all(tmp_path, [cluster_doc("c1"), cluster_doc("c2", network="n2")], ["c2"])
    for name, network in (("c1", "network1"), ("c2", "n2")):
        iop = docs[name]["istio-operator.yaml"][0]
        g = iop["spec"]["values"]["global"]
        assert g == {"meshID": "mesh1", "multiCluster": {"clusterName": name},
                     "network": network,
                     # the sidecar requests preflight plans for (mesh.yaml istio.sidecar)
                     "proxy": {"resources": {"requests": {"cpu": "100m",
                                                          "memory": "128Mi"}}}}
        # a running istiod takes a two-root bundle only with multi-root on (root rotation)
        assert iop["spec"]["values"]["pilot"]["env"] == {"ISTIO_MULTIROOT_MESH": "true"}
        assert iop["spec"]["meshConfig"]["defaultConfig"]["proxyMetadata"] == {
            "ISTIO_MULTIROOT_MESH": "true"}
        assert "profile" not in iop["spec"]
        ns = docs[name]["namespace.yaml"][0]
        assert ns["metadata"]["labels"]["topology.istio.io/network"] == network
        ew = docs[name]["eastwest-gateway.yaml"][0]
        gw = ew["spec"]["components"]["ingressGateways"][0]
        assert gw["name"] == "istio-eastwestgateway"
        assert gw["label"]["istio"] == "eastwestgateway"
        assert [p["port"] for p in gw["k8s"]["service"]["ports"]] == [15021, 15443, 15012, 15017]
        assert {"name": "ISTIO_META_REQUESTED_NETWORK_VIEW", "value": network} in gw["k8s"]["env"]
        expose = docs[name]["expose-services.yaml"][0]
        server = expose["spec"]["servers"][0]
        assert server["port"]["number"] == 15443 and server["tls"]["mode"] == "AUTO_PASSTHROUGH"
        assert server["hosts"] == ["*.local"]
        assert "expose-istiod.yaml" not in docs[name]


def test_primary_remote(tmp_path: Path) -> None:
    docs = render_all(tmp_path, [cluster_doc("c1"), cluster_doc("c2", role="remote")], ["c2"])
    main = docs["c1"]["istio-operator.yaml"][0]["spec"]
    assert main["values"]["global"]["externalIstiod"] is True
    remote = docs["c2"]["istio-operator.yaml"][0]["spec"]
    assert remote["profile"] == "remote"
    assert "pilot" not in remote["values"]  # no istiod of its own
    assert remote["values"]["global"]["remotePilotAddress"] == topology.east_west_placeholder("c1")
    assert remote["values"]["istiodRemote"]["injectionPath"] == "/inject/cluster/c2/net/network1"
    gateway, vs = docs["c1"]["expose-istiod.yaml"]
    assert gateway["kind"] == "Gateway" and vs["kind"] == "VirtualService"
    assert {s["port"]["number"] for s in gateway["spec"]["servers"]} == {15012, 15017}
    routes = {r["match"][0]["port"]: r["route"][0]["destination"] for r in vs["spec"]["tls"]}
    assert routes[15012]["host"] == "istiod.istio-system.svc.cluster.local"
    assert routes[15017]["port"]["number"] == 443
    ns = docs["c2"]["namespace.yaml"][0]
    assert ns["metadata"]["annotations"]["topology.istio.io/controlPlaneClusters"] == "c1"
    assert "eastwest-gateway.yaml" in docs["c1"] and "eastwest-gateway.yaml" not in docs["c2"]


def test_revision_and_extra_values(tmp_path: Path) -> None:
    mesh = {**mesh_doc(tmp_path), "istio": {"revision": "canary", "values": {
        "pilot": {"replicaCount": 2}, "global": {"logging": {"level": "debug"}}}}}
    docs = render_all(tmp_path, [cluster_doc("c1"), cluster_doc("c2", role="remote")], ["c2"],
                      mesh)
    spec = docs["c1"]["istio-operator.yaml"][0]["spec"]
    assert spec["revision"] == "canary"
    assert spec["values"]["pilot"] == {"replicaCount": 2,
                                       "env": {"ISTIO_MULTIROOT_MESH": "true"}}
    assert spec["values"]["global"]["meshID"] == "mesh1"  # merged, not replaced
    assert spec["values"]["global"]["logging"] == {"level": "debug"}
    vs = docs["c1"]["expose-istiod.yaml"][1]
    assert vs["spec"]["tls"][0]["route"][0]["destination"]["host"].startswith("istiod-canary.")


def test_odd_values_cannot_break_yaml(tmp_path: Path) -> None:
    """tojson quotes every value.  config now refuses such a meshID (it is no label
    value), so the odd value goes in past it: the templates must not rely on that."""
    cfg = config.load(write_folder(tmp_path, [cluster_doc("c1"), cluster_doc("c2")]))
    cfg = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, mesh_id='m: "x"\n- y'))
    plan = topology.plan(cfg, "c1", ["c2"])
    text = manifests.for_cluster(cfg, plan, plan.clusters[0])["istio-operator.yaml"]
    g = yaml.safe_load(text)["spec"]["values"]["global"]
    assert g["meshID"] == 'm: "x"\n- y'


def test_strict_undefined() -> None:
    with pytest.raises(jinja2.UndefinedError):
        manifests.render("namespace.yaml.j2", network="n1")
