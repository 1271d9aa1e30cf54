"""``verify``: pure pieces first, then both halves on the bootstrapped ``traffic`` sandbox.

What the sandbox shows and what it cannot: the static half runs for real (remote
secrets read and their tokens used against the other API server, ``cacerts`` read and
compared, east-west Service addresses, istiod's Deployment); the samples are really
deployed and become Ready (kwok marks the pods Running/Ready), and the real istiod the
sandbox runs injects their sidecars.  No container runs, so pods/exec has nothing to
run curl in: the request step fails and verify must say that traffic was NOT checked
and exit 1.  (On sandbox clusters verify would pick the sandbox's own workloads by
itself; this module asks for the sidecar pods, ``MESHCTL_VERIFY_PROBE=pods``, because
that path is what it tests.  ``tests/test_traffic.py`` tests the workload path.)
The request counting itself is tested from real curl output
(``tests/fixtures/curl``).

Damaging tests (a deleted secret, a foreign root, a gateway without address, a bad
token) restore what they broke in ``finally`` so the module's sandbox stays a mesh.
"""

from __future__ import annotations

import base64
import json
import math
import random
import signal
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from meshctl import config, manifests, verify
from meshctl.ca import cacerts, certs
from meshctl.errors import ClusterError
from meshctl.kube import inventory
from meshctl.topology import Plan
from meshctl.verify import curl as verify_curl
from meshctl.verify import ledger as verify_ledger
from meshctl.verify import sizing
from tests.api_proxy import Fault
from tests.factories import assert_one_line_error, meshctl, two_networks
from tests.sandbox_fixtures import SandboxFactory, SandboxHandle
from tests.traffic_sandbox import Running, bootstrapped, identity, kubectl, via_proxy

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
        "meshctl.io/purpose": "verify", "istio.io/rev": "1-31"}
    assert verify.target("other") == "helloworld.other:5000/hello"


# --- on the sandbox ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _sidecar_pod_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every verify run of this module takes the sidecar-pod path (see the docstring)."""
    monkeypatch.setenv("MESHCTL_VERIFY_PROBE", "pods")


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


# --- issue 21 item 12: the request count is sized for a stated false-failure rate --------


@pytest.mark.parametrize("endpoints,target,count", [
    (1, Fraction(1, 1000), 1),
    (2, Fraction(1, 1000), 11),   # 2^-10 <= 0.1 % < 2^-9
    (3, Fraction(1, 1000), 20),
    (4, Fraction(1, 1000), 29),
    (5, Fraction(1, 1000), 39),   # 1 main + 4 remotes: was 10, which misses one run in two
    (10, Fraction(1, 1000), 88),
    (2, Fraction(1, 100), 8),
    (5, Fraction(1, 2), 10),
], ids=lambda v: str(v))
def test_request_count_is_the_smallest_that_meets_the_target(endpoints: int, target: Fraction,
                                                             count: int) -> None:
    assert sizing.requests_for(endpoints, target) == count
    assert sizing.miss_chance(endpoints, count) <= target
    if count > 1:
        assert sizing.miss_chance(endpoints, count - 1) > target


@pytest.mark.parametrize("endpoints,requests,chance", [
    (1, 1, Fraction(0)),
    (2, 1, Fraction(1)),           # fewer requests than endpoints: always a miss
    (2, 10, Fraction(1, 512)),     # 2 (1/2)^10
    (3, 3, Fraction(7, 9)),        # 1 - 3!/3^3
    (4, 4, Fraction(29, 32)),      # 1 - 4!/4^4
    (3, 5, Fraction(3 * 2**5 - 3, 3**5)),  # C(3,1) 2^5 - C(3,2) 1^5, over 3^5
], ids=lambda v: str(v))
def test_miss_chance_is_exact_inclusion_exclusion(endpoints: int, requests: int,
                                                  chance: Fraction) -> None:
    assert sizing.miss_chance(endpoints, requests) == chance


def test_miss_chance_of_the_old_fixed_ten_requests() -> None:
    """The bug: 10 requests to 1 main + 4 remotes fail a healthy mesh about one run in two;
    the sized count brings that under 0.1 %."""
    assert 0.47 < float(sizing.miss_chance(5, 10)) < 0.48
    assert sizing.request_count(5) == 39
    assert sizing.miss_chance(5, sizing.request_count(5)) <= sizing.TARGET
    assert sizing.request_count(5, 10) == 10  # --requests given: it wins


def test_union_bound_above_the_exact_limit_is_an_upper_bound() -> None:
    k = sizing.EXACT_UP_TO + 1
    n = sizing.requests_for(k)
    exact = Fraction(sum((-1) ** (j + 1) * math.comb(k, j) * (k - j) ** n for j in range(1, k)),
                     k ** n)
    assert exact <= sizing.miss_chance(k, n) <= sizing.TARGET


@pytest.mark.parametrize("endpoints,requests", [(5, 20), (3, 8), (2, 4)],
                         ids=["5-endpoints-20", "3-endpoints-8", "2-endpoints-4"])
def test_miss_chance_matches_a_simulation(endpoints: int, requests: int) -> None:
    """Uniform draws with a fixed seed: the share of runs that miss an endpoint is within
    four standard deviations of the formula."""
    rng = random.Random(20211221)
    trials = 20_000
    missed = sum(len({rng.randrange(endpoints) for _ in range(requests)}) < endpoints
                 for _ in range(trials))
    p = float(sizing.miss_chance(endpoints, requests))
    assert abs(missed / trials - p) <= 4 * math.sqrt(p * (1 - p) / trials), (missed, p)


@pytest.mark.parametrize("chance,text", [
    (Fraction(1, 1024), "< 0.098 %"),
    (Fraction(1, 512), "< 0.2 %"),
    (Fraction(1, 2), "< 51 %"),  # strictly above, never "< 50 %" for exactly 50 %
    (sizing.miss_chance(5, 10), "< 48 %"),
    (Fraction(1, 10**12), "< 1.1e-10 %"),
    (Fraction(0), "0 %"),
    (Fraction(1), "100 %"),
], ids=["2^-10", "2^-9", "half", "5-clusters-10-requests", "tiny", "zero", "certain"])
def test_chance_text_never_understates(chance: Fraction, text: str) -> None:
    assert sizing.chance_text(chance) == text


def test_luck_line_and_json_carry_the_rate() -> None:
    traffic = verify.Traffic(True, "cluster1/meshctl-verify/curl-1", 11, 11, endpoints=2)
    assert traffic.luck_line() == ("sent 11 requests: chance that a healthy mesh misses a "
                                   "cluster by bad luck < 0.098 %")
    doc = traffic.to_json()
    assert doc["endpoints"] == 2 and doc["missChance"] == 2 ** -10
    # an explicit --requests: the rate is the one for that count
    assert verify.Traffic(True, "c", 10, 10, endpoints=5).luck_line().endswith("< 48 %")
    # not checked: no requests ran, so no sentence about them; the rate stays in JSON
    unchecked = verify.Traffic(False, None, 11, 0, endpoints=2, reason="no exec")
    assert unchecked.luck_line() is None and unchecked.to_json()["missChance"] == 2 ** -10
    result = verify.Result("cluster1", ("cluster2",), (), traffic,
                           cleanup_kept=("cluster1: Namespace meshctl-verify: it holds …",))
    assert result.notes() == ["traffic probe: sidecar pods (helloworld + curl)",
                              traffic.luck_line(),
                              "kept cluster1: Namespace meshctl-verify: it holds …"]
    assert result.to_json()["probe"] == {"name": "sidecar pods (helloworld + curl)",
                                         "limits": ""}
    assert result.to_json()["cleanupKept"] == ["cluster1: Namespace meshctl-verify: it holds …"]
    assert result.to_json()["schema"] == "meshctl.verify/v1"  # keys added, none changed


# --- issue 21 item 5: whose namespace, and what else is in it (pure) ---------------------

OURS = {"app.kubernetes.io/managed-by": "meshctl", "meshctl.io/mesh": "mesh1"}
VERIFYS = {**OURS, "meshctl.io/purpose": "verify"}


@pytest.mark.parametrize("labels,needle", [
    (None, None),
    (VERIFYS, None),
    ({**VERIFYS, "istio-injection": "enabled", "team": "x"}, None),
    ({"team": "payments"}, "exists and was not made by meshctl"),
    ({**VERIFYS, "meshctl.io/mesh": "mesh2"},
     "was made by meshctl for mesh 'mesh2', not for this mesh 'mesh1'"),
    ({"app.kubernetes.io/managed-by": "meshctl", "meshctl.io/purpose": "verify"},
     "for no mesh (no meshctl.io/mesh label)"),
    (OURS, "made by meshctl for this mesh, but not as verify's sample namespace"),
    ({**VERIFYS, "app.kubernetes.io/managed-by": "Helm"}, "exists and was not made by meshctl"),
], ids=["absent", "verifys", "verifys-with-more-labels", "unlabelled", "another-mesh",
        "no-mesh-label", "meshctl-not-verify", "managed-by-helm"])
def test_which_namespace_verify_may_use(labels: dict | None, needle: str | None) -> None:
    live = None if labels is None else {"metadata": {"name": "ns", "labels": labels}}
    problem = verify_ledger.namespace_problem(live, cluster="cluster2", namespace="ns",
                                               mesh_id="mesh1")
    if needle is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith("cluster2: Namespace ns ")
        assert needle in problem


def _obj(kind: str, name: str, uid: str, owner: str | None = None, **meta: Any) -> dict:
    refs = [{"uid": owner, "kind": "X", "name": "x"}] if owner else []
    return {"kind": kind, "metadata": {"name": name, "uid": uid, "ownerReferences": refs,
                                       **meta}}


def test_strangers_are_what_neither_verify_nor_the_cluster_made() -> None:
    objects = [
        _obj("Deployment", "helloworld-v1", "dep"),
        _obj("ReplicaSet", "helloworld-v1-abc", "rs", owner="dep"),
        _obj("Pod", "helloworld-v1-abc-xyz", "pod", owner="rs"),
        _obj("Service", "helloworld", "svc"),
        _obj("EndpointSlice", "helloworld-q7", "es", owner="svc"),
        _obj("Endpoints", "helloworld", "ep"),
        _obj("ConfigMap", "kube-root-ca.crt", "c1"),
        _obj("ConfigMap", "istio-ca-root-cert", "c2"),
        _obj("ConfigMap", "istio-ca-crl", "c4"),
        _obj("ServiceAccount", "default", "sa"),
        _obj("Event", "helloworld-v1.17a", "ev"),
        _obj("Pod", "going", "p2", deletionTimestamp="2026-01-01T00:00:00Z"),
        _obj("ConfigMap", "stranger", "c3"),
        _obj("Widget", "stranger-widget", "w1"),
        _obj("Pod", "theirs", "p3", owner="their-rs"),
        _obj("Endpoints", "their-service", "ep2"),
    ]
    left = inventory.strangers(objects, ["dep", "svc"],
                               also_ours=verify_ledger._endpoints_of({"helloworld"}))
    assert [inventory.describe(o) for o in left] == [
        "ConfigMap stranger", "Widget stranger-widget", "Pod theirs", "Endpoints their-service"]


# --- issue 21 item 5 on the sandbox: strangers survive, errors and Ctrl-C clean up --------

NSV = verify.DEFAULT_NAMESPACE
WIDGETS = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.test"},
    "spec": {"group": "example.test", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                 "openAPIV3Schema": {"type": "object",
                                     "x-kubernetes-preserve-unknown-fields": True}}}]}}


def _gone_or_terminating(mesh: SandboxHandle, cluster: int, namespace: str) -> bool:
    try:
        ns = mesh[cluster].core().read_namespace(namespace)
    except k8s.ApiException as e:
        assert e.status == 404
        return True
    return ns.status.phase == "Terminating"


def _delete_namespace(mesh: SandboxHandle, cluster: int, namespace: str) -> None:
    kubectl(mesh[cluster], "delete", "namespace", namespace, "--ignore-not-found",
            "--wait=true", "--timeout=120s")


@pytest.fixture
def widget_crd(mesh: SandboxHandle, tmp_path: Path) -> Iterator[None]:
    """A team's own CRD on cluster1: a kind no fixed list of verify's could know."""
    path = tmp_path / "widgets.yaml"
    path.write_text(yaml.safe_dump(WIDGETS))
    kubectl(mesh[0], "apply", "-f", str(path))
    kubectl(mesh[0], "wait", "--for=condition=Established", "--timeout=60s",
            "crd/widgets.example.test")
    yield
    _delete_namespace(mesh, 0, NSV)
    kubectl(mesh[0], "delete", "crd", "widgets.example.test", "--ignore-not-found")


@pytest.mark.sandbox
def test_strangers_put_into_the_namespace_during_the_run_survive(
        mesh: SandboxHandle, tmp_path: Path, widget_crd: None) -> None:
    """A ConfigMap and a custom resource that someone puts into meshctl-verify while verify
    runs keep their uid and resourceVersion, and so the namespace stays; verify's own
    objects go.  No --requests: the count is sized (2 clusters: 11, rate 2^-10)."""
    running = Running("verify", "--main", "cluster1", "--remote", "cluster2", "--json",
                      "--timeout", "90", "--clusters-dir", str(mesh.clusters_dir),
                      env=mesh.env())
    try:
        assert running.wait_for_line(f"cluster1: sample apps in namespace {NSV}", 180), \
            "".join(running.err)
        kubectl(mesh[0], "-n", NSV, "create", "configmap", "stranger",
                "--from-literal=owner=payments")
        widget = tmp_path / "widget.yaml"
        widget.write_text(yaml.safe_dump({"apiVersion": "example.test/v1", "kind": "Widget",
                                          "metadata": {"name": "stranger-widget",
                                                       "namespace": NSV},
                                          "spec": {"size": 3}}))
        kubectl(mesh[0], "apply", "-f", str(widget))
        before = {"cm": identity(mesh[0], "configmap", "stranger", NSV),
                  "widget": identity(mesh[0], "widget", "stranger-widget", NSV)}
        ns_before = identity(mesh[0], "namespace", NSV)
    finally:
        code, out, err = running.finish(600)
    assert code == 1, err[-3000:]  # the sandbox cannot carry traffic
    assert "Traceback" not in err
    doc = json.loads(out)
    # the namespace was not deleted (deleting it would take the strangers, soon after), and
    # the strangers, as kubectl reads them, keep their uid and resourceVersion
    assert identity(mesh[0], "namespace", NSV) == ns_before
    assert mesh[0].core().read_namespace(NSV).status.phase == "Active"
    assert {"cm": identity(mesh[0], "configmap", "stranger", NSV, check=False),
            "widget": identity(mesh[0], "widget", "stranger-widget", NSV, check=False)} == before
    [kept] = [k for k in doc["cleanupKept"] if k.startswith(f"cluster1: Namespace {NSV}")]
    assert "it holds 2 object(s) verify did not make" in kept
    assert "ConfigMap stranger" in kept and "Widget stranger-widget" in kept
    assert {f"cluster1: Deployment {NSV}/helloworld-v1", f"cluster1: Deployment {NSV}/curl",
            f"cluster1: Service {NSV}/helloworld", f"cluster1: ServiceAccount {NSV}/curl",
            f"cluster2: Namespace {NSV}"} <= set(doc["cleanup"])
    assert not mesh[0].apps().list_namespaced_deployment(NSV).items
    assert not mesh[0].core().list_namespaced_service(NSV).items
    assert _gone_or_terminating(mesh, 1, NSV)  # nothing else was in cluster2's
    assert f"kept Namespace {NSV}: it holds 2 object(s)" in err  # said on stderr too
    traffic = doc["traffic"]  # sized: 2 clusters, 11 requests, rate 2^-10 (item 12)
    assert (traffic["requests"], traffic["endpoints"], traffic["missChance"]) == (11, 2, 2**-10)


@pytest.mark.sandbox
def test_an_error_mid_run_still_cleans_up(mesh: SandboxHandle, tmp_path: Path) -> None:
    """The API refuses (403) to list the samples' pods once they are deployed: verify
    stops with that one error (exit 3), and what it deployed is gone all the same."""
    fault = Fault("GET", rf"^/api/v1/namespaces/{NSV}/pods$", 403)
    folder, proxy = via_proxy(mesh, tmp_path, "cluster1", [fault])
    try:
        result = meshctl("verify", "--main", "cluster1", "--remote", "cluster2", "--requests",
                         "2", "--timeout", "90", "--clusters-dir", str(folder), env=mesh.env())
    finally:
        proxy.stop()
    assert fault.fired == 1, result.stderr[-2000:]
    assert result.returncode == 3, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cluster1: ") and "injected by the test proxy" in last
    assert "cluster1: removed 5 sample objects" in result.stderr  # 4 and the namespace
    assert "cluster2: removed 3 sample objects" in result.stderr
    assert _sample_gone(mesh)


@pytest.mark.sandbox
def test_ctrl_c_mid_run_still_cleans_up(mesh: SandboxHandle) -> None:
    running = Running("verify", "--main", "cluster1", "--remote", "cluster2", "--requests",
                      "2", "--timeout", "90", "--clusters-dir", str(mesh.clusters_dir),
                      env=mesh.env())
    try:
        assert running.wait_for_line(f"cluster2: sample apps in namespace {NSV}", 180), \
            "".join(running.err)
        assert mesh[1].apps().list_namespaced_deployment(NSV).items  # really deployed
        running.proc.send_signal(signal.SIGINT)
    finally:
        code, _, err = running.finish(300)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
    assert "cluster1: removed 5 sample objects" in err  # 4 and the namespace
    assert "cluster2: removed 3 sample objects" in err
    assert _sample_gone(mesh)


# Namespaces verify must refuse (exit 1, one line, nothing touched), as the bad-input
# catalogue has them: each made on cluster2 only, with a ConfigMap of its owner's in it
# (istio-system: bootstrap's, on both clusters, with the install record in it).
FOREIGN = [
    ("another-mesh", "mesh2-samples", {**VERIFYS, "meshctl.io/mesh": "mesh2"},
     "was made by meshctl for mesh 'mesh2', not for this mesh 'mesh1'"),
    ("no-mesh-label", "old-samples", {"app.kubernetes.io/managed-by": "meshctl",
                                      "meshctl.io/purpose": "verify"},
     "was made by meshctl for no mesh (no meshctl.io/mesh label)"),
    ("meshctl-not-verify", "meshctl-other", OURS,
     "was made by meshctl for this mesh, but not as verify's sample namespace"),
    ("managed-by-helm", "helm-samples", {**VERIFYS, "app.kubernetes.io/managed-by": "Helm"},
     "exists and was not made by meshctl"),
    ("istio-system", "istio-system", None,
     "was made by meshctl for this mesh, but not as verify's sample namespace"),
]


def _snapshot(mesh: SandboxHandle, cluster: int, namespace: str) -> dict[str, Any]:
    """The namespace and the ConfigMap its owner keeps there (istiod's leader-election
    ConfigMaps in istio-system change by themselves, so not every ConfigMap)."""
    core = mesh[cluster].core()
    ns = core.read_namespace(namespace)
    cm = core.read_namespaced_config_map(
        "meshctl-install" if namespace == "istio-system" else "team-settings", namespace)
    return {"namespace": (ns.metadata.uid, ns.metadata.resource_version, ns.metadata.labels),
            "configmap": (cm.metadata.uid, cm.metadata.resource_version, cm.data)}


@pytest.mark.sandbox
@pytest.mark.parametrize("name,labels,needle", [c[1:] for c in FOREIGN],
                         ids=[c[0] for c in FOREIGN])
def test_a_namespace_that_is_not_verifys_for_this_mesh_is_refused(
        mesh: SandboxHandle, name: str, labels: dict | None, needle: str) -> None:
    core = mesh[1].core()
    if labels is not None:
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name,
                                                                         labels=labels)))
        core.create_namespaced_config_map(name, k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(name="team-settings"), data={"owner": "payments"}))
    try:
        before = {i: _snapshot(mesh, i, name) for i in (0, 1)
                  if labels is None or i == 1}
        result = meshctl("verify", "--main", "cluster1", "--remote", "cluster2",
                         "--namespace", name, "--clusters-dir", str(mesh.clusters_dir),
                         env=mesh.env())
        assert_one_line_error(result, 1, f"cluster2: Namespace {name} {needle}",
                              "--namespace")
        assert {i: _snapshot(mesh, i, name) for i in before} == before
        if labels is not None:  # nothing was written on cluster1 either
            with pytest.raises(k8s.ApiException) as info:
                mesh[0].core().read_namespace(name)
            assert info.value.status == 404
    finally:
        if labels is not None:
            _delete_namespace(mesh, 1, name)


@pytest.mark.sandbox
def test_a_sample_object_of_another_mesh_is_left_alone(mesh: SandboxHandle,
                                                       tmp_path: Path) -> None:
    """Object by object, as for the namespace: in verify's own namespace a Service named
    like its sample but labelled for another mesh is not taken over, not deleted, and
    keeps the namespace in place."""
    core = mesh[0].core()
    _wait(lambda: _gone_or_terminating(mesh, 0, NSV)
          and not [n for n in core.list_namespace().items if n.metadata.name == NSV],
          f"namespace {NSV} gone")
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NSV,
                                                                     labels=VERIFYS)))
    core.create_namespaced_service(NSV, k8s.V1Service(
        metadata=k8s.V1ObjectMeta(name="helloworld", labels={**OURS, "meshctl.io/mesh":
                                                             "mesh2"}),
        spec=k8s.V1ServiceSpec(ports=[k8s.V1ServicePort(port=5000)])))
    try:
        before = identity(mesh[0], "service", "helloworld", NSV)
        result, doc, _ = _verify(mesh, tmp_path)
        assert result.returncode == 1
        deploy = _by_name(doc)["deploy samples"]
        assert deploy["status"] == "FAIL"
        assert f"cluster1: Service {NSV}/helloworld exists and is not meshctl's for mesh " \
               "'mesh1'" in deploy["message"]
        assert identity(mesh[0], "service", "helloworld", NSV) == before
        assert any(k.startswith(f"cluster1: Namespace {NSV}: it holds 1 object(s)")
                   and "Service helloworld" in k for k in doc["cleanupKept"])
        assert mesh[0].core().read_namespace(NSV).status.phase == "Active"
    finally:
        _delete_namespace(mesh, 0, NSV)


# --- the same defect shape elsewhere in verify: a port-forward left open on an error -------


def _forward_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name.startswith("Kubernetes port forward proxy") and t.is_alive()]


@pytest.mark.sandbox
def test_a_failed_istiod_request_closes_its_port_forward(mesh: SandboxHandle) -> None:
    """A request that fails after the tunnel opened (here: a path http.client refuses)
    must close the tunnel, as the successful one does; the kubernetes client's proxy
    thread for it ends only when its sockets are closed."""
    from meshctl import kube
    from meshctl.verify import control_plane

    k = kube.client(config.load(mesh.clusters_dir).clusters["cluster1"])
    pod = control_plane.istiod_pods(k)[0]
    port = control_plane.monitoring_port(pod)
    assert control_plane.istiod_get(k, pod["metadata"]["name"], port, "/debug/clusterz")
    with pytest.raises(ClusterError, match="InvalidURL"):
        control_plane.istiod_get(k, pod["metadata"]["name"], port, "/debug/clusterz\nX: y")
    deadline = time.monotonic() + 10
    while _forward_threads() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _forward_threads()


# --- bad input to verify's flags, as tests/test_bad_input.py catalogues it ------------------
# exit 2, one line naming the flag, nothing written, no cluster contacted (the cluster
# files name hosts that do not resolve).

VERIFY_FLAGS = [
    ("requests-over-the-ceiling", ("--requests", "10001"), ("--requests 10001", "at most 10000")),
    ("requests-huge", ("--requests", "99999999999999999999"), ("at most 10000",)),
    ("requests-fraction", ("--requests", "1.5"), ("--requests 1.5", "whole number")),
    ("requests-negative", ("--requests", "-3"), ("--requests -3", "at least 1")),
    ("requests-exponent", ("--requests", "1e3"), ("--requests 1e3", "whole number")),
    ("requests-hex", ("--requests", "0x10"), ("--requests 0x10", "whole number")),
    ("requests-empty", ("--requests", ""), ("--requests", "whole number")),
    ("timeout-zero", ("--timeout", "0"), ("--timeout 0", "at least 1")),
    ("timeout-word", ("--timeout", "soon"), ("--timeout soon", "not a number")),
    ("namespace-upper-case", ("--namespace", "Verify"), ("--namespace 'Verify'", "DNS-1123")),
    ("namespace-dotted", ("--namespace", "a.b"), ("--namespace 'a.b'", "DNS-1123")),
    ("namespace-too-long", ("--namespace", "n" * 64), ("--namespace", "DNS-1123")),
    ("namespace-trailing-dash", ("--namespace", "verify-"), ("--namespace", "DNS-1123")),
]


@pytest.mark.parametrize("flags,needles", [c[1:] for c in VERIFY_FLAGS],
                         ids=[c[0] for c in VERIFY_FLAGS])
def test_verify_refuses_bad_flags(tmp_path: Path, flags: tuple[str, ...],
                                  needles: tuple[str, ...]) -> None:
    folder = two_networks(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = meshctl("verify", "--main", "cluster1", "--remote", "cluster2", *flags,
                     "--clusters-dir", str(folder), cwd=tmp_path,
                     env={"XDG_CACHE_HOME": str(tmp_path / "cache"),
                          "MESHCTL_API_DEADLINE": "2"})
    assert_one_line_error(result, 2, *needles)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")
                  if "cache" not in p.parts) == before


# --- the workload probe's judgement of a peer's chain (offline) -------------------------


def _chain(tmp: Path, org: str) -> tuple[list[bytes], object]:
    """A root, cluster2's intermediate and a SPIFFE leaf, as a server would present them."""
    from meshctl.ca import certs, pki
    from meshctl.config import CASettings

    settings = CASettings(dir=tmp / org, key="ecdsa-p256", organization=org)
    root = certs.make_root(settings)
    bundle = certs.make_intermediate(root, "cluster2", settings)
    leaf = certs.workload_cert(bundle, namespace="meshctl-verify", service_account="echo")
    return [pki.cert_pem(c) for c in (leaf, bundle.ca_cert, root.cert)], root


def test_peer_chain_under_the_mesh_root_names_its_spiffe_id(tmp_path: Path) -> None:
    from meshctl.ca import pki
    from meshctl.verify import workloads

    chain, root = _chain(tmp_path, "mesh")
    status, words = workloads.judge_chain(chain, {pki.fingerprint(root.cert): root.cert},
                                          "cluster2")
    assert status == "PASS", words
    assert "spiffe://cluster.local/ns/meshctl-verify/sa/echo" in words
    assert "L=cluster2" in words


def test_peer_chain_under_another_root_names_that_root(tmp_path: Path) -> None:
    from meshctl.ca import pki
    from meshctl.verify import workloads

    chain, _ = _chain(tmp_path, "other")
    _, mesh_root = _chain(tmp_path, "mesh")
    status, words = workloads.judge_chain(
        chain, {pki.fingerprint(mesh_root.cert): mesh_root.cert}, "cluster2")
    assert status == "FAIL"
    assert "cluster2's workload certificate" in words
    assert "does not chain to this mesh's root" in words
    assert "O=other" in words
    assert workloads.judge_chain([], {}, "cluster2")[0] == "FAIL"


def test_several_callers_each_get_enough_and_the_rate_covers_them_all() -> None:
    """The workload probe calls from every primary and each must see every endpoint: the
    count per caller is sized for TARGET / callers, and the printed rate is the union."""
    each = sizing.request_count(2, callers=2)
    assert each > sizing.request_count(2)
    assert 2 * sizing.miss_chance(2, each) <= sizing.TARGET
    traffic = verify.Traffic(True, "probe", 2 * each, 2 * each, endpoints=2, callers=2)
    assert traffic.miss_chance == float(2 * sizing.miss_chance(2, each))
    assert f"({each} from each of 2 callers)" in traffic.luck_line()
