"""``verify``: pure pieces first, then both halves on the bootstrapped ``traffic`` sandbox.

What the sandbox shows and what it cannot: the static half runs for real (remote
secrets read and their tokens used against the other API server, ``cacerts`` read and
compared, east-west Service addresses, istiod's Deployment); the samples are really
deployed and become Ready (kwok marks the pods Running/Ready), and the real istiod the
sandbox runs injects their sidecars.  No container runs, so pods/exec has nothing to
run curl in: the request step fails and verify must say that traffic was NOT checked
and exit 1.  The request counting itself is tested from real curl output
(``tests/fixtures/curl``).

Damaging tests (a deleted secret, a foreign root, a gateway without address, a bad
token) restore what they broke in ``finally`` so the module's sandbox stays a mesh.
"""

from __future__ import annotations

import base64
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from meshctl import config, manifests, verify
from meshctl.ca import cacerts, certs
from meshctl.topology import Plan
from meshctl.verify import curl as verify_curl
from tests.factories import assert_one_line_error, meshctl, two_networks
from tests.sandbox_fixtures import SandboxFactory, SandboxHandle
from tests.traffic_sandbox import bootstrapped

NS = "istio-system"

# --- no cluster ------------------------------------------------------------------------


def _result(statuses: list[str], *, checked: bool = False) -> verify.Result:
    checks = tuple(verify.Check("static" if i < 2 else "traffic", f"check {i}", "cluster1", s,
                                f"message {i} <&>", "a hint" if s == verify.FAIL else None)
                   for i, s in enumerate(statuses))
    return verify.Result("cluster1", ("cluster2",), checks,
                         verify.Traffic(checked, None, 10, 0, reason="not checked"))


@pytest.mark.parametrize("statuses", [
    [verify.PASS, verify.PASS, verify.PASS],
    [verify.PASS, verify.FAIL, verify.SKIP],
    [verify.FAIL, verify.FAIL, verify.PASS, verify.FAIL],
], ids=["all-pass", "fail-and-skip", "three-failures"])
def test_junit_parses_with_one_testcase_per_check(tmp_path: Path, statuses: list[str]) -> None:
    path = tmp_path / "verify.xml"
    path.write_text(verify.junit_xml(_result(statuses)))
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert len(cases) == len(statuses) == int(suite.get("tests", "-1"))
    assert int(suite.get("failures", "-1")) == statuses.count(verify.FAIL)
    assert int(suite.get("skipped", "-1")) == statuses.count(verify.SKIP)
    assert [c.find("failure") is not None for c in cases] == [s == verify.FAIL
                                                              for s in statuses]
    failure = next((c.find("failure") for c in cases if c.find("failure") is not None), None)
    if failure is not None:
        assert "<&>" in (failure.get("message") or "") and "a hint" in (failure.text or "")


CURL = Path(__file__).parent / "fixtures" / "curl"  # real curl output: capture.py made it
INSTANCES = {"helloworld-v1-6b9f8c7d5-x2kqp": "cluster1", "helloworld-v2-7d6c9b8f4-m8rtz":
             "cluster2"}
EXPECTED = {"cluster1": "v1", "cluster2": "v2"}


def _tally(name: str, **cut: int) -> verify.Tally:
    text = (CURL / f"{name}.out").read_text()
    if "chars" in cut:
        text = text[:cut["chars"]]
    return verify.count_requests(text, INSTANCES)


def test_curl_answers_from_both_versions_pass() -> None:
    tally = _tally("answers")
    assert tally.sent == 6 and tally.errors == 0
    assert tally.answers == (verify.Answer("v1", "cluster1", 3),
                             verify.Answer("v2", "cluster2", 3))
    status, message = verify.judge_traffic(tally, requests=6, expected=EXPECTED, client="c")
    assert status == verify.PASS, message
    assert "6 of 6 requests sent" in message


def test_curl_503_is_an_error_with_envoys_body() -> None:
    tally = _tally("http-503")
    assert tally.sent == 3 and tally.answers == ()
    assert tally.failures == (verify.Failure("HTTP 503: no healthy upstream", 3),)
    status, message = verify.judge_traffic(tally, requests=3, expected=EXPECTED, client="c")
    assert status == verify.FAIL
    assert "3 request(s) got no answer" in message and "no answer from v1@cluster1" in message


def test_curl_connection_refused_keeps_curls_reason() -> None:
    tally = _tally("refused")
    assert tally.sent == 3 and tally.errors == 3 and tally.answers == ()
    [failure] = tally.failures
    assert failure.count == 3
    assert failure.reason.startswith("curl: (7) Failed to connect to 127.0.0.1 port ")


def test_curl_timeouts_group_despite_differing_milliseconds() -> None:
    tally = _tally("timeout")
    assert tally.sent == 2 and tally.errors == 2
    [failure] = tally.failures
    assert failure.count == 2 and failure.reason.startswith("curl: (28) Operation timed out")


def test_curl_mixed_counts_each_request_once() -> None:
    """1 answer in N must never read as "every cluster answered" (the old counting)."""
    tally = _tally("mixed")
    assert tally.sent == 8
    assert tally.answers == (verify.Answer("v1", "cluster1", 2),
                             verify.Answer("v2", "cluster2", 2))
    assert {f.reason: f.count for f in tally.failures} == {
        "HTTP 503: no healthy upstream": 2, "curl: (52) Empty reply from server": 2}
    status, message = verify.judge_traffic(tally, requests=8, expected=EXPECTED, client="c")
    assert status == verify.FAIL and "4 request(s) got no answer" in message


def test_curl_output_cut_short_is_not_an_answer() -> None:
    """Output that stops mid-request (exec ended): that request is an error, the ones
    never started are not counted as sent."""
    full = (CURL / "answers.out").read_text()
    cut = full.index("@@meshctl-http", full.index("@@meshctl-request 3"))
    tally = verify.count_requests(full[:cut], INSTANCES)
    assert tally.sent == 3
    assert sum(a.count for a in tally.answers) == 2
    assert tally.failures == (
        verify.Failure("no result: the output ended during the request", 1),)
    status, message = verify.judge_traffic(tally, requests=6, expected=EXPECTED, client="c")
    assert status == verify.FAIL and "only 3 of 6 requests were attempted" in message


def test_curl_only_one_cluster_answering_fails() -> None:
    tally = _tally("answers")
    one = verify.Tally(tally.sent, tally.answers[:1], ())
    status, message = verify.judge_traffic(one, requests=6, expected=EXPECTED, client="c")
    assert status == verify.FAIL and "no answer from v2@cluster2" in message


def test_curl_script_runs_in_posix_sh(tmp_path: Path) -> None:
    """The script is plain POSIX sh (busybox in the curl image): dash parses it too."""
    import subprocess

    script = verify.curl_script("helloworld.meshctl-verify:5000/hello", 3)
    assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0
    assert "'\\n@@meshctl-http %{http_code}\\n'" in script


@pytest.mark.parametrize("text,code", [
    ('{"metadata":{},"status":"Success"}', 0),
    ('{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":'
     '[{"reason":"ExitCode","message":"7"}]}}', 7),
], ids=["success", "exit-7"])
def test_exec_status_channel(text: str, code: int) -> None:
    assert verify_curl._exit_code(text) == code


@pytest.mark.parametrize("text,needle", [
    ('error sending request: Post "https://127.0.0.11:10250/exec/sample/curl-1/curl?'
     'command=sh&command=-c": dial tcp 127.0.0.11:10250: connect: connection refused',
     "Post https://127.0.0.11:10250/exec/…: dial tcp"),
    ("", "ended without a status"),
], ids=["sandbox-kubelet-refused", "no-status"])
def test_exec_failure_is_one_short_line(text: str, needle: str) -> None:
    with pytest.raises(verify.ExecFailed) as info:
        verify_curl._exit_code(text)
    assert needle in str(info.value) and "command=sh" not in str(info.value)


def test_sample_manifests_v1_and_curl_on_main_v2_on_remote(tmp_path: Path) -> None:
    from meshctl import topology

    cfg = config.load(two_networks(tmp_path))
    plan: Plan = topology.plan(cfg, "cluster1", ["cluster2"])
    objs = verify.sample_manifests(cfg, plan)
    names = {c: [f"{o['kind']}/{o['metadata']['name']}" for o in docs]
             for c, docs in objs.items()}
    assert names == {
        "cluster1": ["Namespace/meshctl-verify", "Service/helloworld",
                     "Deployment/helloworld-v1", "ServiceAccount/curl", "Deployment/curl"],
        "cluster2": ["Namespace/meshctl-verify", "Service/helloworld",
                     "Deployment/helloworld-v2"]}
    for docs in objs.values():  # every object is meshctl's, of this mesh
        for o in docs:
            assert o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "meshctl"
            assert o["metadata"]["labels"]["meshctl.io/mesh"] == "mesh1"
            if o["kind"] != "Namespace":
                assert o["metadata"]["namespace"] == "meshctl-verify"
    ns = objs["cluster1"][0]
    assert ns["metadata"]["labels"]["istio-injection"] == "enabled"
    rev = manifests.render("sample-namespace.yaml.j2", namespace="other", revision="1-31",
                           mesh_id="m")
    assert yaml.safe_load(rev)["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "meshctl", "meshctl.io/mesh": "m",
        "istio.io/rev": "1-31"}
    assert verify.target("other") == "helloworld.other:5000/hello"


# --- on the sandbox ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh(sandbox_factory: SandboxFactory) -> SandboxHandle:
    return bootstrapped(sandbox_factory)


def _verify(mesh: SandboxHandle, tmp_path: Path, *extra: str) -> tuple[Any, dict, Path]:
    junit = tmp_path / "verify.xml"
    result = meshctl("verify", "--main", "cluster1", "--remote", "cluster2", "--json",
                     "--junit", str(junit), "--requests", "3", "--timeout", "90", *extra,
                     "--clusters-dir", str(mesh.clusters_dir), env=mesh.env())
    assert "Traceback" not in result.stderr, result.stderr
    return result, json.loads(result.stdout), junit


def _by_name(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in doc["checks"]}


def _secret(mesh: SandboxHandle, cluster: int, name: str) -> k8s.V1Secret:
    return mesh[cluster].core().read_namespaced_secret(name, NS)


def _restore_secret(mesh: SandboxHandle, cluster: int, saved: k8s.V1Secret) -> None:
    """Put a saved Secret back as it was (data, labels, annotations)."""
    core = mesh[cluster].core()
    body = k8s.V1Secret(metadata=k8s.V1ObjectMeta(
        name=saved.metadata.name, namespace=NS, labels=saved.metadata.labels,
        annotations=saved.metadata.annotations), data=saved.data, type=saved.type)
    try:
        current = core.read_namespaced_secret(saved.metadata.name, NS)
        body.metadata.resource_version = current.metadata.resource_version
        core.replace_namespaced_secret(saved.metadata.name, NS, body)
    except k8s.ApiException as e:
        assert e.status == 404
        core.create_namespaced_secret(NS, body)


def _tokens(mesh: SandboxHandle) -> list[str]:
    out = []
    for i, source in ((0, "cluster2"), (1, "cluster1")):
        secret = _secret(mesh, i, f"istio-remote-secret-{source}")
        kubeconfig = yaml.safe_load(base64.b64decode(secret.data[source]))
        out.append(kubeconfig["users"][0]["user"]["token"])
    return out


def _sample_gone(mesh: SandboxHandle) -> bool:
    for cl in mesh.clusters:
        try:
            ns = cl.core().read_namespace(verify.DEFAULT_NAMESPACE)
        except k8s.ApiException as e:
            assert e.status == 404
            continue
        if ns.status.phase != "Terminating":
            return False
    return True


@pytest.mark.sandbox
def test_static_passes_traffic_not_checked_exit_1(mesh: SandboxHandle, tmp_path: Path) -> None:
    """After a real bootstrap: every static check passes; the samples deploy and become
    Ready; exec is impossible, so verify says traffic was NOT checked and exits 1."""
    result, doc, junit = _verify(mesh, tmp_path)
    assert result.returncode == 1, result.stderr
    checks = _by_name(doc)
    static = [c for c in doc["checks"] if c["group"] == "static"]
    assert len(static) == 9  # 2 links, 2 cacerts + common root, 2 east-west, 2 istiod
    assert all(c["status"] == "PASS" for c in static), static
    assert doc["staticPassed"] is True and doc["passed"] is False
    assert "reaches https://" in checks["remote secret cluster2 on cluster1"]["message"]
    assert "istio-reader-service-account" in checks["remote secret cluster1 on cluster2"][
        "message"]

    assert checks["deploy samples"]["status"] == "PASS"
    assert checks["samples ready"]["status"] == "PASS"
    # the sandbox runs the real istiod, whose injector adds the sidecar to every pod
    assert checks["sidecars injected"]["status"] == "PASS"
    requests = checks["requests"]
    assert requests["status"] == "FAIL"
    assert "traffic was NOT checked" in requests["message"]
    assert "pods/exec" in requests["message"]
    traffic = doc["traffic"]
    assert traffic["checked"] is False and traffic["sent"] == 0 and traffic["answers"] == []
    assert doc["trafficChecked"] is False

    # JUnit: one testcase per check, the failures where the checks failed
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [c["name"] for c in doc["checks"]]
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == {"requests"}
    assert int(suite.get("failures", "0")) == 1

    for token in _tokens(mesh):
        assert token not in result.stdout and token not in result.stderr
        assert token not in junit.read_text()
    # default: what verify deployed is removed (namespace deleted, maybe still terminating)
    assert doc["kept"] is False and doc["cleanup"]
    assert _sample_gone(mesh)


@pytest.mark.sandbox
def test_human_output_says_traffic_not_checked(mesh: SandboxHandle) -> None:
    result = meshctl("verify", "--main", "cluster1", "--remote", "cluster2", "--requests", "2",
                     "--keep", "--clusters-dir", str(mesh.clusters_dir), env=mesh.env())
    try:
        assert result.returncode == 1, result.stderr
        assert "traffic was NOT checked" in result.stdout
        assert "answers from" not in result.stdout  # no traffic reported that was not seen
        assert "--keep: the sample apps stay" in result.stdout
        for i, deps in ((0, {"helloworld-v1", "curl"}), (1, {"helloworld-v2"})):
            found = {d.metadata.name for d in mesh[i].apps().list_namespaced_deployment(
                verify.DEFAULT_NAMESPACE).items}
            assert found == deps
            for pod in mesh[i].core().list_namespaced_pod(verify.DEFAULT_NAMESPACE).items:
                assert pod.status.phase == "Running"
    finally:
        again = meshctl("verify", "--main", "cluster1", "--remote", "cluster2", "--requests",
                        "1", "--json", "--clusters-dir", str(mesh.clusters_dir),
                        env=mesh.env())
        assert json.loads(again.stdout)["cleanup"], again.stderr
    assert _sample_gone(mesh)


@pytest.fixture
def no_secret(mesh: SandboxHandle) -> Iterator[None]:
    saved = _secret(mesh, 0, "istio-remote-secret-cluster2")
    mesh[0].core().delete_namespaced_secret("istio-remote-secret-cluster2", NS)
    yield
    _restore_secret(mesh, 0, saved)


@pytest.mark.sandbox
def test_deleted_remote_secret_fails_naming_it(mesh: SandboxHandle, tmp_path: Path,
                                               no_secret: None) -> None:
    result, doc, _ = _verify(mesh, tmp_path)
    assert result.returncode == 1
    failed = [c for c in doc["checks"] if c["status"] == "FAIL" and c["group"] == "static"]
    assert [c["name"] for c in failed] == ["remote secret cluster2 on cluster1"]
    assert "istio-remote-secret-cluster2 not found" in failed[0]["message"]
    assert "bootstrap --main cluster1 --remote cluster2" in failed[0]["hint"]
    # static half failed: no sample was deployed, and the report says so
    assert _by_name(doc)["requests"]["status"] == "SKIP"
    assert "traffic was NOT checked" in doc["traffic"]["reason"]
    assert _sample_gone(mesh)


@pytest.fixture
def bad_token(mesh: SandboxHandle) -> Iterator[None]:
    saved = _secret(mesh, 1, "istio-remote-secret-cluster1")
    kubeconfig = yaml.safe_load(base64.b64decode(saved.data["cluster1"]))
    kubeconfig["users"][0]["user"]["token"] = "not-a-valid-token"
    patched = base64.b64encode(yaml.safe_dump(kubeconfig).encode()).decode()
    mesh[1].core().patch_namespaced_secret("istio-remote-secret-cluster1", NS,
                                           {"data": {"cluster1": patched}})
    yield
    _restore_secret(mesh, 1, saved)


@pytest.mark.sandbox
def test_rejected_token_fails(mesh: SandboxHandle, tmp_path: Path, bad_token: None) -> None:
    result, doc, _ = _verify(mesh, tmp_path)
    assert result.returncode == 1
    check = _by_name(doc)["remote secret cluster1 on cluster2"]
    assert check["status"] == "FAIL"
    assert "rejects the secret's token" in check["message"]
    assert "not-a-valid-token" not in result.stdout + result.stderr


@pytest.fixture
def foreign_root(mesh: SandboxHandle) -> Iterator[None]:
    """cluster2's cacerts replaced by an intermediate under a root nobody else trusts."""
    saved = _secret(mesh, 1, "cacerts")
    settings = config.load(mesh.clusters_dir).mesh.ca
    other = certs.make_intermediate(certs.make_root(settings), "cluster2", settings)
    body = yaml.safe_load(cacerts.manifest(other, "mesh1"))
    core = mesh[1].core()
    body["metadata"]["resourceVersion"] = saved.metadata.resource_version
    core.replace_namespaced_secret("cacerts", NS, body)
    yield
    _restore_secret(mesh, 1, saved)


@pytest.mark.sandbox
def test_other_root_fails_naming_the_cluster(mesh: SandboxHandle, tmp_path: Path,
                                             foreign_root: None) -> None:
    result, doc, _ = _verify(mesh, tmp_path)
    assert result.returncode == 1
    failed = [c for c in doc["checks"] if c["status"] == "FAIL"]
    assert [c["name"] for c in failed] == ["cacerts share one root"]
    assert "cluster2" in failed[0]["message"]
    assert "no root common to all clusters" in failed[0]["message"]
    # the Secret really is another CA (not a parse failure): it reads as a bundle
    assert cacerts.from_secret("cluster2", _secret(mesh, 1, "cacerts").to_dict()) is not None


@pytest.fixture
def gateway_without_address(mesh: SandboxHandle) -> Iterator[None]:
    """A NodePort gateway: the sandbox's LoadBalancer loop leaves it alone, no address."""
    core = mesh[1].core()
    core.patch_namespaced_service("istio-eastwestgateway", NS, {"spec": {"type": "NodePort"}})
    yield
    core.patch_namespaced_service("istio-eastwestgateway", NS,
                                  {"spec": {"type": "LoadBalancer"}})
    deadline = time.monotonic() + 60
    while not (core.read_namespaced_service("istio-eastwestgateway", NS)
               .status.load_balancer.ingress):
        assert time.monotonic() < deadline, "the LoadBalancer address never came back"
        time.sleep(0.5)


@pytest.mark.sandbox
def test_gateway_without_address_fails(mesh: SandboxHandle, tmp_path: Path,
                                       gateway_without_address: None) -> None:
    result, doc, junit = _verify(mesh, tmp_path)
    assert result.returncode == 1
    failed = [c for c in doc["checks"] if c["status"] == "FAIL"]
    assert [c["name"] for c in failed] == ["east-west gateway on cluster2"]
    assert "has no address" in failed[0]["message"]
    assert "eastWestAddress" in failed[0]["hint"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert int(suite.get("failures", "0")) == 1 and int(suite.get("skipped", "0")) == 1


# --- issue 11 item 5: verify's own namespace ---------------------------------------------


@pytest.fixture
def user_sample(mesh: SandboxHandle) -> Iterator[dict[str, tuple[str, str]]]:
    """A user's ``sample`` namespace (no meshctl label) with a Deployment, on cluster1."""
    core, apps = mesh[0].core(), mesh[0].apps()
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(
        name="sample", labels={"team": "payments"})))
    dep = apps.create_namespaced_deployment("sample", {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "user-app", "labels": {"app": "user-app"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "user-app"}},
                 "template": {"metadata": {"labels": {"app": "user-app"}},
                              "spec": {"containers": [{"name": "app", "image": "busybox"}]}}}})
    del dep
    _wait(lambda: (lambda d: d.status.observed_generation == d.metadata.generation
                   and d.status.available_replicas == 1)(
        apps.read_namespaced_deployment("user-app", "sample")), "user-app Available")
    yield _user_state(mesh)
    core.delete_namespace("sample")
    _wait(lambda: not [n for n in core.list_namespace().items if n.metadata.name == "sample"],
          "namespace sample gone")


def _wait(done: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _user_state(mesh: SandboxHandle) -> dict[str, tuple[str, str]]:
    ns = mesh[0].core().read_namespace("sample")
    deps = mesh[0].apps().list_namespaced_deployment("sample").items
    state = {"Namespace/sample": (ns.metadata.uid, ns.metadata.resource_version)}
    state.update({f"Deployment/{d.metadata.name}": (d.metadata.uid,
                                                     d.metadata.resource_version)
                  for d in deps})
    return state


@pytest.mark.sandbox
def test_users_sample_namespace_comes_through_verify_untouched(
        mesh: SandboxHandle, tmp_path: Path, user_sample: dict[str, tuple[str, str]]) -> None:
    before = _user_state(mesh)
    result, doc, _ = _verify(mesh, tmp_path)
    assert result.returncode == 1  # traffic cannot be checked in the sandbox
    assert doc["namespace"] == verify.DEFAULT_NAMESPACE
    assert _by_name(doc)["deploy samples"]["status"] == "PASS"
    assert _user_state(mesh) == before
    assert list(before) == ["Namespace/sample", "Deployment/user-app"]
    assert _sample_gone(mesh)


@pytest.mark.sandbox
def test_a_namespace_meshctl_does_not_own_is_refused(
        mesh: SandboxHandle, user_sample: dict[str, tuple[str, str]]) -> None:
    before = _user_state(mesh)
    result = meshctl("verify", "--main", "cluster1", "--remote", "cluster2", "--namespace",
                     "sample", "--clusters-dir", str(mesh.clusters_dir), env=mesh.env())
    assert_one_line_error(result, 1, "cluster1: Namespace sample exists and was not made by "
                                     "meshctl", "--namespace")
    assert _user_state(mesh) == before
    with pytest.raises(k8s.ApiException) as info:  # nothing was written on cluster2 either
        mesh[1].core().read_namespace("sample")
    assert info.value.status == 404
