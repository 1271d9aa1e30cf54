"""bootstrap, link, status and teardown on real control planes with the real istioctl.

What these tests see: objects in real API servers (Secrets, ConfigMaps rendered by
istioctl from our IstioOperator, Deployments made Available by kwok, LoadBalancer
addresses from the sandbox's controller), RBAC decisions for the remote secret's
token, and every request meshctl and istioctl send (through a counting proxy).
What they cannot see: containers, Envoy, traffic between clusters.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from meshctl import config, topology
from tests.api_proxy import ApiProxy, Fault
from tests.factories import meshctl

pytestmark = pytest.mark.sandbox

KUBECTL = str(Path(sys.executable).parent / "kubectl")


@pytest.fixture(scope="module")
def mesh3(sandbox_factory):
    """Three empty clusters, one roomy node each, shared by this module's tests."""
    return sandbox_factory(3, nodes=1, cpu="8", memory="16Gi", label="bootstrap")


# The sandbox's LoadBalancer addresses are loopback (127.0.0.x), and the API server
# refuses loopback addresses in the EndpointSlice that the remote profile writes for
# istiod; a remote-role cluster therefore gets its main's address from eastWestAddress,
# a documentation address (RFC 5737) that nothing dials: no data plane runs here.
MAIN_EAST_WEST = "192.0.2.10"


def clusters_dir(tmp: Path, handle, roles: dict[str, str], networks: dict[str, str],
                 kubeconfigs: dict[str, Path] | None = None) -> Path:
    """A clusters folder over the sandbox's clusters with the roles/networks a test wants."""
    out = tmp / "clusters"
    out.mkdir()
    for c in handle.clusters:
        doc = yaml.safe_load((handle.clusters_dir / f"{c.name}.yaml").read_text())
        doc["role"] = roles.get(c.name, "primary")
        doc["network"] = networks.get(c.name, "network1")
        if kubeconfigs and c.name in kubeconfigs:
            doc["kubeconfig"] = str(kubeconfigs[c.name])
        if c.name == "cluster1" and "remote" in roles.values():
            doc["eastWestAddress"] = MAIN_EAST_WEST
        (out / f"{c.name}.yaml").write_text(yaml.safe_dump(doc))
    mesh = yaml.safe_load((handle.clusters_dir / "mesh.yaml").read_text())
    mesh["ca"]["dir"] = str(tmp / "ca")
    (out / "mesh.yaml").write_text(yaml.safe_dump(mesh))
    return out


def flags(flag: str, values: list[str]) -> list[str]:
    return [part for v in values for part in (flag, v)]


def run(handle, *args: str) -> subprocess.CompletedProcess[str]:
    return meshctl(*args, env=handle.env())


def built_istio_version(handle) -> str:
    """The version the sandbox's istioctl reports: its build's stamp (sandbox.build)."""
    said = subprocess.run([str(handle.bin_dir / "istioctl"), "version", "--remote=false",
                           "-o", "json"], capture_output=True, text=True, timeout=60,
                          check=True)
    return str(json.loads(said.stdout)["clientVersion"]["version"])


def secret_data(core, name: str) -> dict[str, bytes]:
    s = core.read_namespaced_secret(name, "istio-system")
    return {k: base64.b64decode(v) for k, v in (s.data or {}).items()}


def wait_gone(core, namespace: str, timeout: float = 120) -> None:
    from kubernetes.client import ApiException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespace(namespace)
        except ApiException as e:
            if e.status == 404:
                return
            raise
        time.sleep(0.5)
    raise AssertionError(f"namespace {namespace} still there after {timeout}s")


def leftovers(cluster) -> list[str]:
    """Istio's cluster-scoped objects still on ``cluster`` (CRDs, webhooks, cluster roles)."""
    from kubernetes import client as k8s

    ext = k8s.ApiextensionsV1Api(cluster.kubernetes)
    adm = k8s.AdmissionregistrationV1Api(cluster.kubernetes)
    rbac = k8s.RbacAuthorizationV1Api(cluster.kubernetes)
    names = [d.metadata.name for d in ext.list_custom_resource_definition().items]
    names += [w.metadata.name for w in adm.list_mutating_webhook_configuration().items
              + adm.list_validating_webhook_configuration().items]
    names += [r.metadata.name for r in rbac.list_cluster_role().items]
    return [n for n in names if "istio" in n]


def assert_torn_down(handle, names: list[str], timeout: float = 240) -> None:
    """Nothing of the mesh left.  CRDs go through the API server's finalizer, which on a
    loaded 2-core machine was once seen to take over two minutes: allow it that."""
    for c in handle.clusters:
        if c.name not in names:
            continue
        wait_gone(c.core(), "istio-system")
        deadline = time.monotonic() + timeout
        while (left := leftovers(c)) and time.monotonic() < deadline:
            time.sleep(1)
        assert not left, (c.name, left)


def check_mesh(tmp: Path, handle, folder: Path, main: str, remotes: list[str]) -> None:
    """Every cluster holds what the plan says, nothing more."""
    cfg = config.load(folder)
    plan = topology.plan(cfg, main, remotes)
    root = tmp / "ca" / "root-cert.pem"
    for cp in plan.clusters:
        c = handle[cp.name]
        core = c.core()
        # cacerts chains to the one local root (openssl and our own check)
        data = secret_data(core, "cacerts")
        (tmp / f"{cp.name}-ca.pem").write_bytes(data["ca-cert.pem"])
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(root),
                                 str(tmp / f"{cp.name}-ca.pem")], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert data["root-cert.pem"] == root.read_bytes()
        # the values istioctl rendered from our IstioOperator
        merged = json.loads(core.read_namespaced_config_map(
            "values", "istio-system").data["merged-values"])
        values = merged["global"]
        assert values["meshID"] == "mesh1"
        assert values["multiCluster"]["clusterName"] == cp.name
        assert values["network"] == cp.network
        assert bool(values.get("externalIstiod")) == cp.expose_istiod
        if cp.control_plane:
            assert values["remotePilotAddress"] == MAIN_EAST_WEST
            assert merged["istiodRemote"]["injectionPath"] == (
                f"/inject/cluster/{cp.name}/net/{cp.network}")
        ns = core.read_namespace("istio-system")
        assert ns.metadata.labels["topology.istio.io/network"] == cp.network
        if cp.control_plane:
            assert (ns.metadata.annotations or {}).get(
                "topology.istio.io/controlPlaneClusters") == main
        # remote secrets exactly where the plan says
        secrets = core.list_namespaced_secret("istio-system",
                                              label_selector="istio/multiCluster=true").items
        holders = {s.metadata.annotations["networking.istio.io/cluster"] for s in secrets}
        assert holders == set(cp.remote_secrets), cp.name
        for s in secrets:
            source = s.metadata.annotations["networking.istio.io/cluster"]
            check_token(tmp, base64.b64decode(s.data[source]), source)
        # east-west gateway where the plan wants one, with an address
        gateways = c.apps().list_namespaced_deployment(
            "istio-system", label_selector="istio=eastwestgateway").items
        assert bool(gateways) == cp.east_west_gateway, cp.name


def check_token(tmp: Path, kubeconfig: bytes, source: str) -> None:
    """The remote secret's kubeconfig reaches its API with a read-only token."""
    path = tmp / f"remote-{source}.kubeconfig"
    path.write_bytes(kubeconfig)
    path.chmod(0o600)
    doc = yaml.safe_load(kubeconfig)
    assert set(doc["users"][0]["user"]) == {"token"}  # no client cert, no exec plugin
    base = [KUBECTL, "--kubeconfig", str(path)]
    version = subprocess.run([*base, "get", "--raw", "/version"], capture_output=True,
                             text=True, timeout=30)
    assert version.returncode == 0 and "gitVersion" in version.stdout, version.stderr
    for verb, resource, allowed in (("list", "services", "yes"),
                                    ("list", "endpointslices.discovery.k8s.io", "yes"),
                                    ("create", "pods", "no"), ("delete", "pods", "no")):
        can = subprocess.run([*base, "auth", "can-i", verb, resource, "-A"],
                             capture_output=True, text=True, timeout=30)
        assert can.stdout.strip() == allowed, (source, verb, resource, can.stdout)
    path.unlink()


TOPOLOGIES = [
    ("two-primaries-one-network", {}, {}, ["cluster2"]),
    ("two-primaries-two-networks", {}, {"cluster2": "network2"}, ["cluster2"]),
    ("primary-remote", {"cluster2": "remote"}, {}, ["cluster2"]),
    ("main-with-two-remotes", {"cluster2": "remote", "cluster3": "remote"},
     {"cluster3": "network3"}, ["cluster2", "cluster3"]),
]


@pytest.mark.parametrize("roles,networks,remotes", [t[1:] for t in TOPOLOGIES],
                         ids=[t[0] for t in TOPOLOGIES])
def test_topology_bootstrap_then_teardown(tmp_path: Path, mesh3, roles, networks,
                                          remotes) -> None:
    folder = clusters_dir(tmp_path, mesh3, roles, networks)
    args = ["--main", "cluster1", *flags("--remote", remotes),
            "--clusters-dir", str(folder)]
    result = run(mesh3, "bootstrap", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "BEGIN" not in result.stdout + result.stderr
    check_mesh(tmp_path, mesh3, folder, "cluster1", remotes)

    status = run(mesh3, "status", "--json", "--clusters-dir", str(folder),
                 *flags("--cluster", ["cluster1", *remotes]))
    assert status.returncode == 0, status.stderr
    rows = {r["name"]: r for r in json.loads(status.stdout)["clusters"]}
    assert rows["cluster1"]["istio_version"] == built_istio_version(mesh3)
    assert rows["cluster1"]["cert_days_left"] > 700
    assert [r["revision"] for r in rows["cluster1"]["revisions"]] == ["default"]
    assert rows["cluster1"]["revisions"][0]["deployment"] == "istiod"
    for name in remotes:
        if roles.get(name) != "remote":
            continue
        # no istiod there: its revisions are its injector webhooks, its proxies the main's
        revs = rows[name]["revisions"]
        assert [r["revision"] for r in revs] == ["default"], revs
        assert revs[0]["deployment"] is None and revs[0]["proxies"] is None
        assert "primary's istiod" in revs[0]["proxies_error"]
        assert rows[name]["istio_version"] == built_istio_version(mesh3)

    down = run(mesh3, "teardown", *args, "--yes")
    assert down.returncode == 0, down.stderr[-3000:]
    assert_torn_down(mesh3, ["cluster1", *remotes])
    assert (tmp_path / "ca" / "root-key.pem").exists(), "teardown keeps the local CA"


def test_teardown_without_yes(tmp_path: Path, mesh3) -> None:
    folder = clusters_dir(tmp_path, mesh3, {}, {})
    result = run(mesh3, "teardown", "--main", "cluster1", "--remote", "cluster2",
                 "--clusters-dir", str(folder))
    assert result.returncode == 2 and "--yes" in result.stderr


def counting_proxies(tmp: Path, clusters) -> tuple[dict[str, ApiProxy], dict[str, Path]]:
    """A counting proxy in front of each cluster's API, and a kubeconfig through it."""
    proxies, kubeconfigs = {}, {}
    for c in clusters:
        p = c.kubeconfig.parent / c.name / "pki"
        proxy = ApiProxy(upstream=c.api_url, ca_file=p / "ca.crt", cert_file=p / "admin.crt",
                         key_file=p / "admin.key")
        proxy.start(tmp / f"proxy-{c.name}")
        proxies[c.name] = proxy
        kubeconfigs[c.name] = proxy.kubeconfig(tmp / f"{c.name}.kubeconfig", c.context)
    return proxies, kubeconfigs


@pytest.fixture
def proxied(tmp_path: Path, mesh3) -> Iterator[tuple[Path, dict[str, ApiProxy]]]:
    """cluster1 and cluster2 reached through counting proxies (meshctl and istioctl)."""
    proxies, kubeconfigs = counting_proxies(tmp_path, mesh3.clusters[:2])
    folder = clusters_dir(tmp_path, mesh3, {}, {"cluster2": "network2"}, kubeconfigs)
    yield folder, proxies
    run(mesh3, "teardown", "--main", "cluster1", "--remote", "cluster2", "--yes",
        "--clusters-dir", str(folder))
    for proxy in proxies.values():
        proxy.stop()
    assert_torn_down(mesh3, ["cluster1", "cluster2"])


def bootstrap_args(folder: Path) -> list[str]:
    return ["bootstrap", "--main", "cluster1", "--remote", "cluster2",
            "--clusters-dir", str(folder)]


def test_rerun_makes_no_mutating_request(mesh3, proxied) -> None:
    folder, proxies = proxied
    first = run(mesh3, *bootstrap_args(folder))
    assert first.returncode == 0, first.stderr[-3000:]
    assert all(p.mutations() for p in proxies.values()), "the first run must write"
    for p in proxies.values():
        p.reset()
    again = run(mesh3, *bootstrap_args(folder))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do" in again.stdout
    for name, p in proxies.items():
        assert p.mutations() == [], (name, p.mutations())
        assert p.requests, "the re-run did read the cluster"


def test_transient_faults_converge(mesh3, proxied) -> None:
    """429 with Retry-After, 503 and a dropped connection: same end state as a clean run."""
    folder, proxies = proxied
    p1, p2 = proxies["cluster1"], proxies["cluster2"]
    p1.faults += [Fault("PATCH", r"/namespaces/istio-system/secrets/cacerts$", 429,
                        retry_after="1"),
                  Fault("GET", r"/namespaces/istio-system/secrets/cacerts$", 503, times=2),
                  Fault("GET", r"/api/v1/namespaces/istio-system$", 0)]
    p2.faults += [Fault("GET", r"/namespaces/istio-system/configmaps/meshctl-install$", 500),
                  Fault("GET", r"/namespaces/istio-system/services/istio-eastwestgateway$",
                        503)]
    result = run(mesh3, *bootstrap_args(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(f.fired for f in p1.faults), [(f.path, f.fired) for f in p1.faults]
    # the throttled apply reached the server after its retry
    assert p1.count("PATCH", r"/namespaces/istio-system/secrets/cacerts(\?|$)") >= 1
    check_mesh(folder.parent, mesh3, folder, "cluster1", ["cluster2"])
    for p in proxies.values():
        p.reset()
        p.faults.clear()
    again = run(mesh3, *bootstrap_args(folder))
    assert "nothing to do" in again.stdout, again.stderr[-2000:]


def test_forbidden_fails_at_once(mesh3, proxied) -> None:
    folder, proxies = proxied
    fault = Fault("PATCH", r"/namespaces/istio-system/secrets/cacerts$", 403, times=100)
    proxies["cluster1"].faults.append(fault)
    result = run(mesh3, *bootstrap_args(folder), "--skip-preflight")
    assert result.returncode == 3, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cluster1" in lines[0] and "Secret istio-system/cacerts" in lines[0]
    assert "Forbidden" in lines[0] or "403" in lines[0]
    assert fault.fired == 1, "a 403 is not retried"
    assert "--skip-preflight" in result.stderr


def test_sigkill_after_cacerts_then_rerun_converges(tmp_path: Path, mesh3) -> None:
    folder = clusters_dir(tmp_path, mesh3, {}, {"cluster2": "network2"})
    core = mesh3["cluster1"].core()
    from kubernetes.client import ApiException

    exe = str(Path(sys.executable).parent / "meshctl")
    proc = subprocess.Popen([exe, *bootstrap_args(folder)], env=mesh3.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                core.read_namespaced_secret("cacerts", "istio-system")
                break
            except ApiException:
                time.sleep(0.05)
        else:
            raise AssertionError("cacerts never appeared")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    root_before = (tmp_path / "ca" / "root-cert.pem").read_bytes()
    result = run(mesh3, *bootstrap_args(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ca" / "root-cert.pem").read_bytes() == root_before
    check_mesh(tmp_path, mesh3, folder, "cluster1", ["cluster2"])
    down = run(mesh3, "teardown", "--main", "cluster1", "--remote", "cluster2", "--yes",
               "--clusters-dir", str(folder))
    assert down.returncode == 0, down.stderr[-2000:]
    assert_torn_down(mesh3, ["cluster1", "cluster2"])


def test_link_refuses_loopback_without_api_server(tmp_path: Path, mesh3) -> None:
    folder = clusters_dir(tmp_path, mesh3, {}, {})
    doc = yaml.safe_load((folder / "cluster2.yaml").read_text())
    del doc["apiServer"]
    (folder / "cluster2.yaml").write_text(yaml.safe_dump(doc))
    result = run(mesh3, "link", "--main", "cluster1", "--remote", "cluster2",
                 "--clusters-dir", str(folder))
    assert result.returncode == 2
    assert "loopback" in result.stderr and "apiServer" in result.stderr
    from kubernetes.client import ApiException

    with pytest.raises(ApiException) as e:
        mesh3["cluster1"].core().read_namespaced_secret("istio-remote-secret-cluster2",
                                                        "istio-system")
    assert e.value.status == 404


def test_rerun_on_snug_clusters_passes_preflight(tmp_path: Path, sandbox_factory) -> None:
    """Istio already running is not demanded twice: a re-run on clusters with room for
    exactly one mesh passes preflight and does nothing."""
    snug = sandbox_factory(2, nodes=1, cpu="2", memory="4Gi", label="snug")
    folder = clusters_dir(tmp_path, snug, {}, {"cluster2": "network2"})
    args = ["bootstrap", "--main", "cluster1", "--remote", "cluster2",
            "--clusters-dir", str(folder)]
    first = run(snug, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run(snug, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do" in again.stdout
    check = run(snug, "preflight", "--json", "--cluster", "cluster1", "--cluster", "cluster2",
                "--clusters-dir", str(folder))
    doc = json.loads(check.stdout)
    resources = [r for c in doc["clusters"] for r in c["results"] if r["check"] == "resources"]
    assert [r["status"] for r in resources] == ["PASS", "PASS"], resources
    assert all(r["numbers"]["demandCpuMilli"] == 0 for r in resources), resources
