"""``canary``: weights parsing (no cluster), then the objects on a real API server.

The sandbox half runs on the bootstrapped ``traffic`` sandbox (tests/traffic_sandbox.py):
Istio's CRDs are installed by the real istioctl, so every DestinationRule and
VirtualService meshctl writes is validated against Istio's CRD schemas by the API
server.  Istio's own validating webhook is answered by the sandbox's stand-in, which
admits everything unchanged: Istio's semantic validation does not run here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from meshctl import config, traffic
from meshctl.errors import UsageError
from tests.factories import assert_one_line_error, cluster_doc, meshctl, write_folder
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


def test_promote_keeps_the_other_subsets_sorted(offline_dir: Path) -> None:
    cfg = config.load(offline_dir)
    opts = traffic.options(cfg, cluster="cluster1", namespace="shop", service="reviews",
                           weights=None, promote="v2")
    dr, vs = traffic.objects(opts, keep_subsets=("v2", "v1"))
    assert [s["name"] for s in dr["spec"]["subsets"]] == ["v1", "v2"]
    assert vs["spec"]["http"][0]["route"] == [
        {"destination": {"host": opts.host, "subset": "v2"}, "weight": 100}]


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


def _get(mesh: SandboxHandle, ns: str, plural: str, name: str = "reviews") -> dict:
    api = k8s.CustomObjectsApi(mesh[0].kubernetes)
    return api.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)


def _route(vs: dict) -> list[tuple[str, int]]:
    return [(d["destination"]["subset"], d["weight"]) for d in vs["spec"]["http"][0]["route"]]


def test_weights_create_then_update_in_place(mesh: SandboxHandle, shop: str) -> None:
    first = _canary(mesh, shop, "--weights", "v1=80,v2=20")
    assert first.returncode == 0, first.stderr
    assert "VirtualService" in first.stdout and "created" in first.stdout
    # v2 has no pod yet: a WARN naming it, not a failure
    assert "WARN" in first.stderr and "version=v2" in first.stderr
    assert "version=v1" not in first.stderr
    vs, dr = _get(mesh, shop, "virtualservices"), _get(mesh, shop, "destinationrules")
    assert _route(vs) == [("v1", 80), ("v2", 20)]
    assert vs["spec"]["hosts"] == [f"reviews.{shop}.svc.cluster.local"]
    assert [s["name"] for s in dr["spec"]["subsets"]] == ["v1", "v2"]

    again = _canary(mesh, shop, "--weights", "v1=80,v2=20", "--json")
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["writes"] == 0 and {o["action"] for o in doc["objects"]} == {"unchanged"}
    assert _get(mesh, shop, "virtualservices")["metadata"]["resourceVersion"] == \
        vs["metadata"]["resourceVersion"]

    update = _canary(mesh, shop, "--weights", "v1=50,v2=50")
    assert update.returncode == 0, update.stderr
    after = _get(mesh, shop, "virtualservices")
    assert _route(after) == [("v1", 50), ("v2", 50)]
    assert after["metadata"]["uid"] == vs["metadata"]["uid"]  # in place, not re-created
    assert _get(mesh, shop, "destinationrules")["metadata"]["resourceVersion"] == \
        dr["metadata"]["resourceVersion"]  # same subsets: DestinationRule untouched

    promoted = _canary(mesh, shop, "--promote", "v2")
    assert promoted.returncode == 0, promoted.stderr
    assert "routes 100% to v2" in promoted.stdout
    final = _get(mesh, shop, "virtualservices")
    assert _route(final) == [("v2", 100)] and final["metadata"]["uid"] == vs["metadata"]["uid"]
    assert [s["name"] for s in _get(mesh, shop, "destinationrules")["spec"]["subsets"]] == \
        ["v1", "v2"]  # v1 stays a subset, so rolling back is one command


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
    with pytest.raises(k8s.ApiException):  # facts first: nothing was written at all
        _get(mesh, shop, "destinationrules")

    forced = _canary(mesh, shop, "--weights", "v1=80,v2=20", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "VirtualService" in forced.stdout and "replaced" in forced.stdout
    taken = _get(mesh, shop, "virtualservices")
    assert taken["metadata"]["uid"] == created["metadata"]["uid"]
    assert taken["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "meshctl"
    assert "gateways" not in taken["spec"]  # their spec replaced, not merged
    assert _route(taken) == [("v1", 80), ("v2", 20)]


def test_missing_service_exit_1_naming_it(mesh: SandboxHandle, shop: str) -> None:
    result = meshctl("canary", "--cluster", "cluster1", "--namespace", shop, "--service",
                     "ratings", "--weights", "v1=80,v2=20",
                     "--clusters-dir", str(mesh.clusters_dir), env=mesh.env())
    assert_one_line_error(result, 1, f"Service {shop}/ratings not found")
