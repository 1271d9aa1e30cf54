"""The sandbox is real: each test here fails if the piece it checks were faked.

- controller-manager: a Deployment becomes Available, EndpointSlices list its pods;
- scheduler: a pod that fits no node stays Pending with FailedScheduling "Insufficient cpu";
- token controller + RBAC: a ServiceAccount token is filled in and refused until bound;
- istioctl: manifest generate, x precheck, install -y with istiod Available;
- lifecycle: "already up", no process left after down or after a failed up.
Plus the sandbox tasks' flag checks, which need no binaries.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client as k8s

from meshctl.errors import ClusterError, UsageError
from meshctl.sandbox import lifecycle as sbx
from meshctl.sandbox import procs as sandbox_procs
from meshctl.sandbox import status as sandbox_status
from tests.sandbox_fixtures import Cluster, SandboxFactory, SandboxHandle

T = TypeVar("T")
VENV_BIN = Path(sys.executable).parent
MESHCTL = VENV_BIN / "meshctl"
KUBECTL = VENV_BIN / "kubectl"


def eventually(check: Callable[[], T | None], *, timeout: float = 60.0, what: str = "") -> T:
    """Poll until ``check`` returns something truthy; ApiExceptions count as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except k8s.ApiException as e:
            last = f"HTTP {e.status} {e.reason}"
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")


def deployment(name: str, replicas: int, cpu: str = "100m") -> k8s.V1Deployment:
    labels = {"app": name}
    container = k8s.V1Container(
        name="app", image="registry.k8s.io/pause:3.10",
        ports=[k8s.V1ContainerPort(container_port=8080)],
        resources=k8s.V1ResourceRequirements(requests={"cpu": cpu, "memory": "64Mi"}))
    return k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1DeploymentSpec(
            replicas=replicas, selector=k8s.V1LabelSelector(match_labels=labels),
            template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels),
                                           spec=k8s.V1PodSpec(containers=[container]))))


def run(argv: list[Any], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 300), check=False, **kw)


# --- the control plane is real ----------------------------------------------------------

@pytest.mark.sandbox
def test_deployment_becomes_available_and_endpointslices_list_its_pods(
        sandbox: SandboxHandle, namespace: str) -> None:
    c = sandbox["cluster1"]
    c.apps().create_namespaced_deployment(namespace, deployment("web", 2))
    c.core().create_namespaced_service(namespace, k8s.V1Service(
        metadata=k8s.V1ObjectMeta(name="web"),
        spec=k8s.V1ServiceSpec(selector={"app": "web"},
                               ports=[k8s.V1ServicePort(port=80, target_port=8080)])))

    def available() -> bool:
        d = c.apps().read_namespaced_deployment_status("web", namespace)
        return any(x.type == "Available" and x.status == "True"
                   for x in d.status.conditions or []) and d.status.available_replicas == 2

    eventually(available, what="Deployment web Available with 2 replicas")
    pods = c.core().list_namespaced_pod(namespace, label_selector="app=web").items
    ips = {p.status.pod_ip for p in pods if p.status.phase == "Running"}
    assert len(pods) == 2 and len(ips) == 2 and all(ips), [p.status for p in pods]
    assert all(p.spec.node_name and p.spec.node_name.startswith("cluster1-node") for p in pods)

    def slice_ips() -> set[str] | None:
        slices = k8s.DiscoveryV1Api(c.kubernetes).list_namespaced_endpoint_slice(
            namespace, label_selector="kubernetes.io/service-name=web").items
        found = {a for s in slices for e in s.endpoints or []
                 if e.conditions and e.conditions.ready for a in e.addresses}
        return found if found == ips else None

    eventually(slice_ips, what="EndpointSlices of Service web listing both pod IPs")


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


@pytest.mark.sandbox
def test_control_planes_collect_garbage_less_often(sandbox: SandboxHandle) -> None:
    """GOGC is the sandbox's trade of memory for CPU (istiod's env comes from its pod)."""
    wanted = sandbox_procs.go_env()["GOGC"]
    for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                      "kwok"):
        pid = int(sandbox_procs.pid_file(sandbox.state_dir, "cluster1", component)
                  .read_text())
        assert _environ(pid).get("GOGC") == wanted, component


@pytest.mark.sandbox
def test_pod_larger_than_any_node_stays_pending_with_insufficient_cpu(
        sandbox: SandboxHandle, namespace: str) -> None:
    c = sandbox["cluster1"]
    too_big = str(int(float(c.shape.cpu)) + 1)  # one CPU more than any node has
    c.core().create_namespaced_pod(namespace, k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="huge"),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(
            name="app", image="registry.k8s.io/pause:3.10",
            resources=k8s.V1ResourceRequirements(requests={"cpu": too_big}))])))

    def failed_scheduling() -> str | None:
        events = c.core().list_namespaced_event(
            namespace, field_selector="involvedObject.name=huge").items
        return next((e.message for e in events if e.reason == "FailedScheduling"), None)

    message = eventually(failed_scheduling, what="a FailedScheduling event for pod huge")
    assert "Insufficient cpu" in message, message
    pod = c.core().read_namespaced_pod("huge", namespace)
    assert pod.status.phase == "Pending" and not pod.spec.node_name


def _token_kubeconfig(c: Cluster, token: str, path: Path) -> Path:
    """A kubeconfig that authenticates with the token only (file 0600; never printed)."""
    ca = yaml.safe_load(c.kubeconfig.read_text())["clusters"]
    ca_data = next(x["cluster"]["certificate-authority-data"] for x in ca if x["name"] == c.name)
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "sa",
           "clusters": [{"name": "c", "cluster": {"server": c.api_url,
                                                  "certificate-authority-data": ca_data}}],
           "users": [{"name": "sa", "user": {"token": token}}],
           "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}]}
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.sandbox
def test_service_account_token_is_filled_and_refused_until_bound(
        sandbox: SandboxHandle, namespace: str, tmp_path: Path) -> None:
    import base64

    from kubernetes import config as k8s_config

    c = sandbox["cluster1"]
    core = c.core()
    core.create_namespaced_service_account(namespace, k8s.V1ServiceAccount(
        metadata=k8s.V1ObjectMeta(name="reader")))
    core.create_namespaced_secret(namespace, k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name="reader-token",
                                  annotations={"kubernetes.io/service-account.name": "reader"}),
        type="kubernetes.io/service-account-token"))
    data = eventually(lambda: (core.read_namespaced_secret("reader-token", namespace).data
                               or {}).get("token") and
                      core.read_namespaced_secret("reader-token", namespace).data,
                      what="the token controller to fill Secret reader-token")
    keys = sorted(data)  # only the keys ever reach an assertion message, never the token
    assert {"token", "ca.crt", "namespace"} <= set(keys), keys
    kubeconfig = _token_kubeconfig(c, base64.b64decode(data["token"]).decode(),
                                   tmp_path / "reader.kubeconfig")
    can_i = [KUBECTL, "--kubeconfig", kubeconfig, "auth", "can-i", "list", "pods",
             "-n", namespace]
    sa_api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(kubeconfig)))

    denied = run(can_i, timeout=60)
    assert (denied.returncode, denied.stdout.strip()) == (1, "no"), denied.stderr[-300:]
    with pytest.raises(k8s.ApiException) as refused:
        sa_api.list_namespaced_pod(namespace)
    assert refused.value.status == 403

    rbac = k8s.RbacAuthorizationV1Api(c.kubernetes)
    rbac.create_namespaced_role(namespace, k8s.V1Role(
        metadata=k8s.V1ObjectMeta(name="pod-reader"),
        rules=[k8s.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list", "get"])]))
    rbac.create_namespaced_role_binding(namespace, k8s.V1RoleBinding(
        metadata=k8s.V1ObjectMeta(name="reader-reads-pods"),
        role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role",
                               name="pod-reader"),
        subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name="reader",
                                    namespace=namespace)]))

    eventually(lambda: run(can_i, timeout=60).returncode == 0,
               what="kubectl auth can-i list pods to say yes after the RoleBinding")
    assert sa_api.list_namespaced_pod(namespace).items == []
    other = run([KUBECTL, "--kubeconfig", kubeconfig, "auth", "can-i", "list", "secrets",
                 "-n", namespace], timeout=60)
    assert other.stdout.strip() == "no"


@pytest.mark.sandbox
def test_loadbalancer_service_gets_the_node_address(sandbox: SandboxHandle,
                                                     namespace: str) -> None:
    c = sandbox["cluster2"]
    c.core().create_namespaced_service(namespace, k8s.V1Service(
        metadata=k8s.V1ObjectMeta(name="edge"),
        spec=k8s.V1ServiceSpec(type="LoadBalancer", selector={"app": "edge"},
                               ports=[k8s.V1ServicePort(port=15443)])))

    def ingress_ips() -> list[str] | None:
        lb = c.core().read_namespaced_service_status("edge", namespace).status.load_balancer
        return [i.ip for i in lb.ingress] if lb and lb.ingress else None

    assert eventually(ingress_ips, what="an ingress address on Service edge") == [c.ip]


# --- istioctl -----------------------------------------------------------------------------

MINIMAL_IOP = """\
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  profile: minimal
  values:
    global:
      meshID: mesh1
      network: network1
      multiCluster:
        clusterName: cluster1
"""


# A name of its own: istioctl prunes what the same-named (here: unnamed) install owned.
EASTWEST_IOP = """\
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata:
  name: eastwest
spec:
  profile: empty
  components:
    ingressGateways:
    - name: istio-eastwestgateway
      enabled: true
      label: {istio: eastwestgateway, app: istio-eastwestgateway,
              topology.istio.io/network: network1}
      k8s:
        service:
          ports:
          - {name: status-port, port: 15021, targetPort: 15021}
          - {name: tls, port: 15443, targetPort: 15443}
  values:
    gateways:
      istio-ingressgateway:
        injectionTemplate: gateway
    global:
      network: network1
"""


def _istioctl_manifest_generate(istioctl: Path, iop: Path) -> str:
    result = run([istioctl, "manifest", "generate", "-f", iop], timeout=120)
    assert result.returncode == 0, f"{iop}: {result.stderr[-800:]}"
    kinds = {str((d or {}).get("kind")) for d in yaml.safe_load_all(result.stdout)}
    assert "Deployment" in kinds, f"{iop}: no Deployment rendered, only {sorted(kinds)}"
    return result.stdout


@pytest.mark.sandbox
def test_istioctl_manifest_generate_accepts_a_minimal_istiooperator(
        sandbox_bin: Path, tmp_path: Path) -> None:
    iop = tmp_path / "iop.yaml"
    iop.write_text(MINIMAL_IOP)
    rendered = _istioctl_manifest_generate(sandbox_bin / "istioctl", iop)
    assert "name: istiod" in rendered and "kind: CustomResourceDefinition" in rendered


@pytest.mark.sandbox
def test_istioctl_manifest_generate_accepts_what_bootstrap_dry_run_renders(
        sandbox: SandboxHandle, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rendered = run([MESHCTL, "bootstrap", "--main", "cluster1", "--remote", "cluster2",
                    "--dry-run", "--clusters-dir", sandbox.clusters_dir, "--out", out],
                   cwd=tmp_path, timeout=120)
    assert rendered.returncode == 0, rendered.stderr[-800:]
    operators = [f for f in sorted(out.rglob("*.yaml"))
                 if any((d or {}).get("kind") == "IstioOperator"
                        for d in yaml.safe_load_all(f.read_text()))]
    assert operators, f"no IstioOperator under {out}"
    for iop in operators:
        _istioctl_manifest_generate(sandbox.bin_dir / "istioctl", iop)


@pytest.mark.sandbox
def test_istioctl_precheck_and_install_make_istiod_available(
        sandbox_factory: SandboxFactory, tmp_path: Path) -> None:
    # Its own sandbox: an installed Istio must not leak into other tests' clusters.
    sb = sandbox_factory(1, nodes=2, cpu="8", memory="16Gi", label="istio")
    c = sb["cluster1"]
    istioctl = [sb.bin_dir / "istioctl", "--kubeconfig", c.kubeconfig, "--context", c.context]

    precheck = run([*istioctl, "x", "precheck"], timeout=120)
    assert precheck.returncode == 0, precheck.stdout[-800:] + precheck.stderr[-800:]

    iop = tmp_path / "iop.yaml"
    iop.write_text(MINIMAL_IOP.replace("profile: minimal", "profile: default"))
    install = run([*istioctl, "install", "-y", "-f", iop, "--readiness-timeout", "4m"],
                  timeout=400)
    assert install.returncode == 0, install.stdout[-1200:] + install.stderr[-1200:]

    istiod = c.apps().read_namespaced_deployment_status("istiod", "istio-system")
    assert any(x.type == "Available" and x.status == "True" for x in istiod.status.conditions)
    # The default profile's ingress gateway is a LoadBalancer Service: the sandbox's
    # LoadBalancer loop must have given it the node address, as a cloud would.
    gw = c.core().read_namespaced_service_status("istio-ingressgateway", "istio-system")
    assert [i.ip for i in gw.status.load_balancer.ingress or []] == [c.ip]
    webhooks = k8s.AdmissionregistrationV1Api(c.kubernetes)
    assert webhooks.list_mutating_webhook_configuration(
        label_selector="app=sidecar-injector").items

    # An east-west gateway's pods go through the injector webhook (failurePolicy Fail):
    # the real istiod the sandbox runs must answer it, or this install would time out.
    eastwest = tmp_path / "eastwest.yaml"
    eastwest.write_text(EASTWEST_IOP)
    install = run([*istioctl, "install", "-y", "-f", eastwest, "--readiness-timeout", "3m"],
                  timeout=300)
    assert install.returncode == 0, install.stdout[-1200:] + install.stderr[-1200:]
    ew = c.core().read_namespaced_service_status("istio-eastwestgateway", "istio-system")
    assert [i.ip for i in ew.status.load_balancer.ingress or []] == [c.ip]

    # The real injector (istiod run by the sandbox) adds the sidecar; no container runs.
    core = c.core()
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(
        name="injected", labels={"istio-injection": "enabled"})))
    eventually(lambda: core.read_namespaced_service_account("default", "injected"),
               what="ServiceAccount injected/default")
    pod = core.create_namespaced_pod("injected", k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="app"),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="app", image="x")])))
    assert [ct.name for ct in pod.spec.containers] == ["app", "istio-proxy"]


# --- lifecycle ----------------------------------------------------------------------------

@pytest.mark.sandbox
def test_up_twice_is_refused_and_down_leaves_no_process(sandbox_bin: Path,
                                                         tmp_path: Path) -> None:
    state = tmp_path / "sb"
    sb = sbx.up(state, clusters=1, nodes=1, cpu="1", memory="1Gi", binaries=sandbox_bin)
    try:
        pids = [*sb.clusters[0].pids.values(), sb.lb_pid]
        assert len(pids) == 6 and all(sandbox_procs.alive(p, state) for p in pids)
        st = sandbox_status.status(state)
        assert st.up and st.clusters[0].nodes_ready == 1 and st.clusters[0].rss_bytes > 0
        with pytest.raises(UsageError, match="already up"):
            sbx.up(state, clusters=1, nodes=1, binaries=sandbox_bin)
    finally:
        result = sbx.down(state)
    assert result.removed and not state.exists()
    assert not [p for p in pids if sandbox_procs.alive(p)]


@pytest.mark.sandbox
def test_failed_up_names_the_component_and_leaves_no_process(sandbox_bin: Path,
                                                              tmp_path: Path) -> None:
    broken = tmp_path / "bin"
    broken.mkdir()
    for name in ("etcd", "kube-controller-manager", "kube-scheduler", "kwok", "pilot-discovery"):
        (broken / name).symlink_to(sandbox_bin / name)
    fake = broken / "kube-apiserver"
    fake.write_text("#!/bin/sh\necho 'E0000 refusing to start: test' >&2\nexit 1\n")
    fake.chmod(0o755)
    state = tmp_path / "sb"

    with pytest.raises(ClusterError) as failed:
        sbx.up(state, clusters=2, nodes=1, binaries=broken)
    message = str(failed.value)
    assert "kube-apiserver" in message and "refusing to start: test" in message
    assert str(state / "logs") in message
    pids = sandbox_procs.read_pids(state)
    assert not [p for p in pids.values() if sandbox_procs.alive(p)]
    assert sorted(p.name for p in state.iterdir()) == [".meshctl-sandbox", "logs"]
    # What a failed up leaves is stale, not "already up": the next up starts afresh.
    sb = sbx.up(state, clusters=1, nodes=1, cpu="1", memory="1Gi", binaries=sandbox_bin)
    assert sandbox_status.status(state).up and sb.clusters[0].name == "cluster1"
    sbx.down(state)
    assert not state.exists()


# --- tasks: bad flags are one line and exit 2, before anything starts ---------------------

@pytest.mark.parametrize("flags, mentions", [
    (["--clusters", "0"], "--clusters"),
    (["--clusters", "abc"], "--clusters"),
    (["--nodes", "0"], "--nodes"),
    (["--memory", "abc"], "--memory"),
    (["--cpu", "-1"], "--cpu"),
    (["--pods", "many"], "--pods"),
], ids=["clusters-0", "clusters-abc", "nodes-0", "memory-abc", "cpu-negative", "pods-word"])
def test_sandbox_up_refuses_bad_flags(flags: list[str], mentions: str, tmp_path: Path) -> None:
    result = run([MESHCTL, "sandbox.up", *flags], cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and mentions in lines[0], result.stderr
    assert not (tmp_path / ".meshctl").exists()


# --- the kubelet the sandbox plays for istiod: pure parts, no cluster ----------------------

def test_go_env_sets_the_collector_and_the_user_can_override_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHCTL_SANDBOX_GOGC", raising=False)
    assert sandbox_procs.go_env()["GOGC"] == sandbox_procs.GOGC_DEFAULT == "200"
    monkeypatch.setenv("MESHCTL_SANDBOX_GOGC", "100")
    env = sandbox_procs.go_env()
    assert env["GOGC"] == "100" and env["PATH"] == os.environ["PATH"]


def test_volume_writes_are_atomic_swaps_as_kubelet_makes_them(tmp_path: Path) -> None:
    from meshctl.sandbox import pod as sandbox_pod

    state = sandbox_pod.VolumeState()
    target = tmp_path / "etc" / "cacerts"
    assert sandbox_pod.write_volume(target, {"root-cert.pem": b"R1", "ca-cert.pem": b"C1"},
                                    state)
    first = (target / "..data").readlink()
    assert (target / "root-cert.pem").readlink() == Path("..data/root-cert.pem")
    assert not sandbox_pod.write_volume(target, {"root-cert.pem": b"R1", "ca-cert.pem": b"C1"},
                                        state), "same content: no swap"
    assert sandbox_pod.write_volume(target, {"root-cert.pem": b"R2"}, state)
    assert (target / "root-cert.pem").read_bytes() == b"R2"
    assert not (target / "ca-cert.pem").exists(), "a key that went is gone"
    assert (target / "..data").readlink() != first and not (target / first).exists()


def test_container_env_resolves_like_kubelet() -> None:
    from meshctl.sandbox import pod as sandbox_pod

    pod = {"metadata": {"name": "istiod-1", "namespace": "istio-system", "uid": "u",
                        "labels": {"istio.io/rev": "default"}},
           "spec": {"serviceAccountName": "istiod", "nodeName": "n1"}, "status": {}}
    container = {"resources": {"limits": {"memory": "1Gi"}}, "env": [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "REV", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.labels['istio.io/rev']"}}},
        {"name": "GOMAXPROCS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu",
                                                                   "divisor": "1"}}},
        {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory",
                                                               "divisor": "1Mi"}}},
        {"name": "HOST", "value": "$(POD_NAME).$(NOPE)$$"}]}
    node = {"status": {"allocatable": {"cpu": "3500m"}}}
    env = sandbox_pod.container_env(pod, container, node, None)  # type: ignore[arg-type]
    assert env == {"POD_NAME": "istiod-1", "REV": "default", "GOMAXPROCS": "4",
                   "MEM_MI": "1024", "HOST": "istiod-1.$(NOPE)$"}


def test_istiod_args_lose_only_the_flags_the_sandbox_sets() -> None:
    from meshctl.sandbox import istiod as sandbox_istiod

    kept, found = sandbox_istiod.split_args(
        ["discovery", "--monitoringAddr=:15015", "--domain", "cluster.local",
         "--httpAddr", ":8081", "--keepaliveMaxServerConnectionAge", "30m"])
    assert kept == ["discovery", "--domain", "cluster.local",
                    "--keepaliveMaxServerConnectionAge", "30m"]
    assert found == {"--monitoringAddr": ":15015", "--httpAddr": ":8081"}
    assert sandbox_istiod.selects_istiod({"spec": {"selector": {"app": "istiod"}}})
    assert not sandbox_istiod.selects_istiod({"spec": {}})  # remote profile: stand-in


def test_control_plane_half_reads_istiods_debug_json() -> None:
    from meshctl.verify import control_plane as vcp

    clusterz = [{"id": "cluster1", "secretName": "", "syncStatus": "synced"},
                {"id": "cluster2", "secretName": "istio-system/istio-remote-secret-cluster2",
                 "syncStatus": "timeout"}]
    assert vcp.synced_clusters(clusterz) == {"cluster1": "synced", "cluster2": "timeout"}
    host = "helloworld.ns.svc.cluster.local"
    shardz = {host: {"ns": {"Shards": {"Kubernetes/cluster1": [{}, {}],
                                       "Kubernetes/cluster2": [{}]}}}}
    assert vcp.shard_counts(shardz, host, "ns") == {"cluster1": 2, "cluster2": 1}
    assert vcp.shard_counts(shardz, "other", "ns") == {}
    pod = {"spec": {"containers": [{"name": "discovery",
                                    "args": ["discovery", "--monitoringAddr", ":15099"]}]}}
    assert vcp.monitoring_port(pod) == 15099
    assert vcp.monitoring_port({"spec": {"containers": []}}) == 15014
