"""``canary``: weights parsing (no cluster), then the objects on a real API server.

The sandbox half runs on the bootstrapped ``traffic`` sandbox (tests/traffic_sandbox.py):
Istio's CRDs are installed by the real istioctl, so every DestinationRule and
VirtualService meshctl writes is validated against Istio's CRD schemas by the API
server, and by Istio's own validating webhook: the sandbox runs the real istiod
(meshctl/sandbox/istiod.py), so every object here passed Istio's semantic validation.

That sandbox is multi-primary (cluster1 and cluster2 both run istiod), so every
object is looked for on both clusters: each istiod configures only its own proxies.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from meshctl import config, traffic
from meshctl.errors import UsageError
from tests.factories import assert_one_line_error, cluster_doc, mesh_doc, meshctl, write_folder
from tests.sandbox_fixtures import NamespaceFactory, SandboxFactory, SandboxHandle
from tests.traffic_sandbox import bootstrapped

GROUP, VERSION = "networking.istio.io", "v1"

# --- no cluster ------------------------------------------------------------------------

BAD_WEIGHTS = [
    ("v1=80,v2=30", "add up to 110, not 100"),
    ("v1=-5,v2=105", "v1=-5: the weight must be between 0 and 100"),
    ("v1=abc", "v1=abc: the weight must be an integer percentage"),
    ("v1=50,v1=50", "version v1 is given twice"),
    ("v1=90", "add up to 90, not 100"),
    ("V_1=100", "'V_1' is not a DNS-1123 label"),
    ("v1=80.5,v2=19.5", "must be an integer percentage"),
    ("v1", "'v1' is not VERSION=PERCENT"),
    ("", "--weights is required"),
]


@pytest.mark.parametrize("text,needle", BAD_WEIGHTS, ids=[w or "empty" for w, _ in BAD_WEIGHTS])
def test_bad_weights_are_usage_errors(text: str, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        traffic.parse_weights(text)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text,expected", [
    ("v1=80,v2=20", (("v1", 80), ("v2", 20))),
    (" v1 = 100 ", (("v1", 100),)),
    ("stable=0,canary-2=100", (("stable", 0), ("canary-2", 100))),
], ids=["two", "spaces", "zero-weight"])
def test_good_weights(text: str, expected: tuple) -> None:
    assert traffic.parse_weights(text) == expected


@pytest.fixture
def offline_dir(tmp_path: Path) -> Path:
    return write_folder(tmp_path, [cluster_doc("cluster1")])


@pytest.mark.parametrize("weights,needle", BAD_WEIGHTS[:7], ids=[w for w, _ in BAD_WEIGHTS[:7]])
def test_cli_bad_weights_exit_2_one_line(offline_dir: Path, weights: str, needle: str) -> None:
    """Checked before any cluster is contacted (the context here does not even exist)."""
    result = meshctl("canary", "--cluster", "cluster1", "--namespace", "shop", "--service",
                     "reviews", "--weights", weights, "--clusters-dir", str(offline_dir))
    assert_one_line_error(result, 2, needle)


SERVICE = ["--namespace", "shop", "--service", "reviews"]


@pytest.mark.parametrize("argv,needle", [
    (["--cluster", "nope", *SERVICE, "--weights", "v1=80,v2=20"], "nope"),
    (["--cluster", "cluster1", "--namespace", "Shop", "--service", "reviews",
      "--weights", "v1=80,v2=20"], "'Shop' is not a DNS-1123 label"),
    (["--cluster", "cluster1", *SERVICE, "--promote", "v2", "--weights", "v2=100"],
     "exclude each other"),
    (["--cluster", "cluster1", *SERVICE, "--promote", "V2"], "'V2' is not a DNS-1123 label"),
], ids=["unknown-cluster", "bad-namespace", "promote-and-weights", "bad-promote"])
def test_cli_bad_flags(offline_dir: Path, argv: list[str], needle: str) -> None:
    result = meshctl("canary", *argv, "--clusters-dir", str(offline_dir))
    assert_one_line_error(result, 2, needle)


def test_dry_run_prints_yaml_without_a_cluster(offline_dir: Path) -> None:
    result = meshctl("canary", "--cluster", "cluster1", "--namespace", "shop", "--service",
                     "reviews", "--weights", "v1=80,v2=20", "--dry-run",
                     "--clusters-dir", str(offline_dir))
    assert result.returncode == 0, result.stderr
    dr, vs = list(yaml.safe_load_all(result.stdout))
    host = "reviews.shop.svc.cluster.local"
    assert dr["kind"] == "DestinationRule" and dr["spec"]["host"] == host
    assert [s["labels"] for s in dr["spec"]["subsets"]] == [{"version": "v1"},
                                                           {"version": "v2"}]
    assert vs["spec"]["hosts"] == [host]
    assert [(d["destination"]["subset"], d["weight"]) for d in vs["spec"]["http"][0]["route"]] \
        == [("v1", 80), ("v2", 20)]
    for obj in (dr, vs):
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "meshctl"


def test_host_ignores_the_trust_domain_and_objects_carry_the_mesh(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, [cluster_doc("cluster1")],
                          {"meshID": "shop-mesh", "trustDomain": "corp.example"})
    result = meshctl("canary", "--cluster", "cluster1", "--namespace", "shop", "--service",
                     "reviews", "--weights", "v1=80,v2=20", "--dry-run",
                     "--clusters-dir", str(folder))
    assert result.returncode == 0, result.stderr
    dr, vs = list(yaml.safe_load_all(result.stdout))
    assert dr["spec"]["host"] == "reviews.shop.svc.cluster.local"
    assert vs["spec"]["hosts"] == ["reviews.shop.svc.cluster.local"]
    for obj in (dr, vs):
        assert obj["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "meshctl",
                                             "meshctl.io/mesh": "shop-mesh"}


def test_targets_are_every_primary_of_the_folder(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, [cluster_doc("cluster1"), cluster_doc("cluster2"),
                                     cluster_doc("cluster3", role="remote")])
    assert traffic.targets(config.load(folder)) == ["cluster1", "cluster2"]


def test_promote_keeps_the_other_subsets_sorted(offline_dir: Path) -> None:
    cfg = config.load(offline_dir)
    opts = traffic.options(cfg, cluster="cluster1", namespace="shop", service="reviews",
                           weights=None, promote="v2")
    dr, vs = traffic.objects(opts, keep_subsets=("v2", "v1"))
    assert [s["name"] for s in dr["spec"]["subsets"]] == ["v1", "v2"]
    assert vs["spec"]["http"][0]["route"] == [
        {"destination": {"host": opts.host, "subset": "v2"}, "weight": 100}]


@pytest.mark.parametrize(("extra", "host"), [
    ({"trustDomain": "example.org"}, "reviews.shop.svc.cluster.local"),
    ({"trustDomain": "example.org", "clusterDomain": "corp.internal"},
     "reviews.shop.svc.corp.internal"),
], ids=["trust-domain-is-not-dns", "cluster-domain-set"])
def test_host_is_the_clusters_dns_domain_never_the_trust_domain(
        tmp_path: Path, extra: dict[str, str], host: str) -> None:
    """A VirtualService for reviews.shop.svc.example.org matches no service: the host is
    the clusters' DNS domain (mesh.yaml clusterDomain, cluster.local unless set)."""
    mesh = {**mesh_doc(tmp_path), **extra}
    cfg = config.load(write_folder(tmp_path, [cluster_doc("cluster1")], mesh))
    opts = traffic.options(cfg, cluster="cluster1", namespace="shop", service="reviews",
                           weights="v1=80,v2=20")
    dr, vs = traffic.objects(opts)
    assert opts.host == host == dr["spec"]["host"] == vs["spec"]["hosts"][0]
    assert dr["spec"]["trafficPolicy"] == {"tls": {"mode": "ISTIO_MUTUAL"}}


# --- on the sandbox ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh(sandbox_factory: SandboxFactory) -> SandboxHandle:
    return bootstrapped(sandbox_factory)


@pytest.fixture
def shop(mesh: SandboxHandle, namespace_factory: NamespaceFactory) -> str:
    """A namespace with Service ``reviews`` (selector app=reviews) and one v1 pod."""
    ns = namespace_factory(mesh)
    core = mesh[0].core()
    core.create_namespaced_service(ns, k8s.V1Service(
        metadata=k8s.V1ObjectMeta(name="reviews"),
        spec=k8s.V1ServiceSpec(selector={"app": "reviews"},
                               ports=[k8s.V1ServicePort(port=9080, name="http")])))
    core.create_namespaced_pod(ns, k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="reviews-v1", labels={"app": "reviews",
                                                             "version": "v1"}),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="reviews", image="reviews:v1")])))
    return ns


def _canary(mesh: SandboxHandle, ns: str, *args: str):
    return meshctl("canary", "--cluster", "cluster1", "--namespace", ns, "--service",
                   "reviews", *args, "--clusters-dir", str(mesh.clusters_dir), env=mesh.env())


def _get(mesh: SandboxHandle, ns: str, plural: str, name: str = "reviews", *,
         on: int = 0) -> dict:
    api = k8s.CustomObjectsApi(mesh[on].kubernetes)
    return api.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)


def _both(mesh: SandboxHandle, ns: str, plural: str) -> list[dict]:
    """The object on each primary (cluster1, cluster2)."""
    return [_get(mesh, ns, plural, on=i) for i in range(len(mesh.clusters))]


def _route(vs: dict) -> list[tuple[str, int]]:
    return [(d["destination"]["subset"], d["weight"]) for d in vs["spec"]["http"][0]["route"]]


@pytest.mark.sandbox
def test_weights_create_then_update_in_place(mesh: SandboxHandle, shop: str) -> None:
    first = _canary(mesh, shop, "--weights", "v1=80,v2=20")
    assert first.returncode == 0, first.stderr
    assert "VirtualService" in first.stdout and "created" in first.stdout
    # v2 has no pod yet: a WARN naming it, not a failure
    assert "WARN" in first.stderr and "version=v2" in first.stderr
    assert "version=v1" not in first.stderr
    # both primaries got both objects (the Service and its pod are on cluster1 only)
    assert "cluster1: VirtualService" in first.stdout
    assert "cluster2: VirtualService" in first.stdout
    vss, drs = _both(mesh, shop, "virtualservices"), _both(mesh, shop, "destinationrules")
    for vs, dr in zip(vss, drs, strict=True):
        assert _route(vs) == [("v1", 80), ("v2", 20)]
        assert vs["spec"]["hosts"] == [f"reviews.{shop}.svc.cluster.local"]
        assert [s["name"] for s in dr["spec"]["subsets"]] == ["v1", "v2"]
        for obj in (vs, dr):
            assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "meshctl"
            assert obj["metadata"]["labels"]["meshctl.io/mesh"] == "mesh1"

    again = _canary(mesh, shop, "--weights", "v1=80,v2=20", "--json")
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["writes"] == 0 and {o["action"] for o in doc["objects"]} == {"unchanged"}
    assert doc["clusters"] == ["cluster1", "cluster2"]
    assert sorted({o["cluster"] for o in doc["objects"]}) == ["cluster1", "cluster2"]
    assert [v["metadata"]["resourceVersion"] for v in _both(mesh, shop, "virtualservices")] \
        == [v["metadata"]["resourceVersion"] for v in vss]

    update = _canary(mesh, shop, "--weights", "v1=50,v2=50")
    assert update.returncode == 0, update.stderr
    for vs, dr, after, dr_after in zip(vss, drs, _both(mesh, shop, "virtualservices"),
                                       _both(mesh, shop, "destinationrules"), strict=True):
        assert _route(after) == [("v1", 50), ("v2", 50)]
        assert after["metadata"]["uid"] == vs["metadata"]["uid"]  # in place, not re-created
        # same subsets: DestinationRule untouched
        assert dr_after["metadata"]["resourceVersion"] == dr["metadata"]["resourceVersion"]

    promoted = _canary(mesh, shop, "--promote", "v2")
    assert promoted.returncode == 0, promoted.stderr
    assert "routes 100% to v2" in promoted.stdout
    for vs, final, dr in zip(vss, _both(mesh, shop, "virtualservices"),
                             _both(mesh, shop, "destinationrules"), strict=True):
        assert _route(final) == [("v2", 100)]
        assert final["metadata"]["uid"] == vs["metadata"]["uid"]
        # v1 stays a subset, so rolling back is one command
        assert [s["name"] for s in dr["spec"]["subsets"]] == ["v1", "v2"]


@pytest.mark.sandbox
def test_api_server_enforces_istio_crd_schema(mesh: SandboxHandle, shop: str) -> None:
    """What makes the previous test's acceptance meaningful: a bad weight type is a 422."""
    api = k8s.CustomObjectsApi(mesh[0].kubernetes)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualService",
            "metadata": {"name": "bad"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [
                {"destination": {"host": "reviews"}, "weight": "eighty"}]}]}}
    with pytest.raises(k8s.ApiException) as info:
        api.create_namespaced_custom_object(GROUP, VERSION, shop, "virtualservices", body)
    assert info.value.status == 422


@pytest.mark.sandbox
def test_unmanaged_virtual_service_refused_unless_force(mesh: SandboxHandle, shop: str) -> None:
    api = k8s.CustomObjectsApi(mesh[0].kubernetes)
    theirs = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualService",
              "metadata": {"name": "reviews"},
              "spec": {"hosts": ["reviews"], "gateways": ["mesh"],
                       "http": [{"route": [{"destination": {"host": "reviews"}}]}]}}
    created = api.create_namespaced_custom_object(GROUP, VERSION, shop, "virtualservices",
                                                  theirs)
    refused = _canary(mesh, shop, "--weights", "v1=80,v2=20")
    assert_one_line_error(refused, 1, f"VirtualService {shop}/reviews", "not managed by meshctl",
                          "--force")
    untouched = _get(mesh, shop, "virtualservices")
    assert untouched["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    for on in (0, 1):  # facts first: nothing was written at all, on either primary
        with pytest.raises(k8s.ApiException):
            _get(mesh, shop, "destinationrules", on=on)
    with pytest.raises(k8s.ApiException):
        _get(mesh, shop, "virtualservices", on=1)

    forced = _canary(mesh, shop, "--weights", "v1=80,v2=20", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "VirtualService" in forced.stdout and "replaced" in forced.stdout
    taken = _get(mesh, shop, "virtualservices")
    assert taken["metadata"]["uid"] == created["metadata"]["uid"]
    assert taken["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "meshctl"
    assert "gateways" not in taken["spec"]  # their spec replaced, not merged
    assert _route(taken) == [("v1", 80), ("v2", 20)]
    assert _route(_get(mesh, shop, "virtualservices", on=1)) == [("v1", 80), ("v2", 20)]

    again = _canary(mesh, shop, "--weights", "v1=60,v2=40", "--json")  # ours now: no --force
    assert again.returncode == 0, again.stderr
    assert _route(_get(mesh, shop, "virtualservices")) == [("v1", 60), ("v2", 40)]


@pytest.mark.sandbox
def test_foreign_object_on_the_second_primary_stops_every_write(mesh: SandboxHandle,
                                                                shop: str) -> None:
    """Facts first across the mesh: their DestinationRule on cluster2 means nothing is
    written on cluster1 either."""
    api = k8s.CustomObjectsApi(mesh[1].kubernetes)
    theirs = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DestinationRule",
              "metadata": {"name": "reviews", "labels": {"team": "shop"}},
              "spec": {"host": "reviews"}}
    created = api.create_namespaced_custom_object(GROUP, VERSION, shop, "destinationrules",
                                                  theirs)
    refused = _canary(mesh, shop, "--weights", "v1=80,v2=20")
    assert_one_line_error(refused, 1, f"cluster2: DestinationRule {shop}/reviews",
                          "not managed by meshctl")
    for plural in ("virtualservices", "destinationrules"):
        with pytest.raises(k8s.ApiException):
            _get(mesh, shop, plural, on=0)
    assert _get(mesh, shop, "destinationrules", on=1)["metadata"]["resourceVersion"] == \
        created["metadata"]["resourceVersion"]


@pytest.mark.sandbox
def test_namespace_missing_on_a_primary_is_refused_before_any_write(
        mesh: SandboxHandle, shop: str) -> None:
    mesh[1].core().delete_namespace(shop)
    deadline = time.monotonic() + 60
    while any(n.metadata.name == shop for n in mesh[1].core().list_namespace().items):
        assert time.monotonic() < deadline, "namespace not deleted"
        time.sleep(0.5)
    refused = _canary(mesh, shop, "--weights", "v1=80,v2=20")
    assert_one_line_error(refused, 1, f"cluster2: namespace {shop} does not exist")
    with pytest.raises(k8s.ApiException):
        _get(mesh, shop, "virtualservices", on=0)


@pytest.mark.sandbox
def test_missing_service_exit_1_naming_it(mesh: SandboxHandle, shop: str) -> None:
    result = meshctl("canary", "--cluster", "cluster1", "--namespace", shop, "--service",
                     "ratings", "--weights", "v1=80,v2=20",
                     "--clusters-dir", str(mesh.clusters_dir), env=mesh.env())
    assert_one_line_error(result, 1, f"Service {shop}/ratings not found")
