"""meshctl changes only what it owns, on clusters that already hold other teams' objects.

Each test records foreign objects by uid and resourceVersion before meshctl runs and
compares after: "exactly as found" means the same object, never rewritten.  Requests
are counted by a proxy in front of each API server (meshctl's and istioctl's alike).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from meshctl import config
from meshctl.ca import certs
from tests.api_proxy import ApiProxy
from tests.test_bootstrap import (
    KUBECTL,
    assert_torn_down,
    built_istio_version,
    clusters_dir,
    counting_proxies,
    run,
    wait_gone,
)

pytestmark = pytest.mark.sandbox

NS = "istio-system"
TEAM_LABELS = {"team": "platform-networking", "cost-center": "42"}


@pytest.fixture(scope="module")
def shared(sandbox_factory):
    """Two clusters that other tests of this module damage on purpose."""
    return sandbox_factory(2, nodes=1, cpu="8", memory="16Gi", label="ownership")


def identity(obj) -> tuple[str, str]:
    return obj.metadata.uid, obj.metadata.resource_version


def kubectl(cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KUBECTL, "--kubeconfig", str(cluster.kubeconfig), "--context",
                           cluster.context, *args], capture_output=True, text=True, timeout=60)


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def proxied(tmp_path: Path, shared) -> Iterator[tuple[Path, dict[str, ApiProxy]]]:
    proxies, kubeconfigs = counting_proxies(tmp_path, shared.clusters)
    yield clusters_dir(tmp_path, shared, {}, {}, kubeconfigs), proxies
    for proxy in proxies.values():
        proxy.stop()


def args(folder: Path, *extra: str) -> list[str]:
    return ["--main", "cluster1", "--remote", "cluster2", "--clusters-dir", str(folder),
            *extra]


def test_existing_istio_system_comes_back_as_found(tmp_path: Path, shared) -> None:
    """A team's istio-system (labels, a ConfigMap) survives bootstrap and teardown."""
    core = shared["cluster1"].core()
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(
        name=NS, labels=dict(TEAM_LABELS))))
    cm = core.create_namespaced_config_map(NS, k8s.V1ConfigMap(
        metadata=k8s.V1ObjectMeta(name="team-settings"), data={"owner": "platform"}))
    before_ns = core.read_namespace(NS)
    folder = clusters_dir(tmp_path, shared, {}, {})
    try:
        up = run(shared, "bootstrap", *args(folder))
        assert up.returncode == 0, up.stderr[-3000:]
        during = core.read_namespace(NS)
        assert during.metadata.uid == before_ns.metadata.uid
        assert during.metadata.labels["topology.istio.io/network"] == "network1"
        assert "app.kubernetes.io/managed-by" not in during.metadata.labels, \
            "a namespace meshctl found is never labelled as meshctl's"
        again = run(shared, "bootstrap", *args(folder))
        assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr[-2000:]
        # verify deploys its sample in its own namespace and removes it: the sandbox cannot
        # carry traffic (exit 1, "traffic was NOT checked"), but it must not touch ours
        checked = run(shared, "verify", *args(folder), "--timeout", "120")
        assert checked.returncode in (0, 1), checked.stderr[-2000:]
        assert "Traceback" not in checked.stderr
        assert identity(core.read_namespaced_config_map("team-settings", NS)) == identity(cm)

        down = run(shared, "teardown", *args(folder), "--yes")
        assert down.returncode == 0, down.stderr[-3000:]
        print(down.stdout)
        assert "kept Namespace istio-system" in down.stdout
        after_ns = core.read_namespace(NS)
        assert after_ns.metadata.uid == before_ns.metadata.uid
        assert after_ns.metadata.labels == before_ns.metadata.labels
        assert (after_ns.metadata.annotations or {}) == (before_ns.metadata.annotations or {})
        assert identity(core.read_namespaced_config_map("team-settings", NS)) == identity(cm)
        left = [c.metadata.name for c in core.list_namespaced_config_map(NS).items]
        assert "meshctl-install" not in left
        assert not core.list_namespaced_secret(NS, label_selector=(
            "app.kubernetes.io/managed-by=meshctl")).items
    finally:
        core.delete_namespace(NS)
        assert_torn_down(shared, ["cluster1", "cluster2"])


def _kubectl_json(cluster, *args: str) -> dict:
    got = kubectl(cluster, "get", *args, "-o", "json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


def test_what_certs_issue_makes_is_meshctls_and_goes_with_teardown(tmp_path: Path,
                                                                   shared) -> None:
    """certs.issue on clusters without istio-system creates it: as meshctl's (labels, then
    adopted into bootstrap's record with its uid), so teardown removes it; the cacerts it
    pushes carry the mesh label; and a cacerts under a root this machine replaced since
    (``certs.init --force`` keeps the old one in ca.dir/backups/) is still meshctl's."""
    folder = clusters_dir(tmp_path, shared, {}, {})
    for argv in (["certs.init"], ["certs.issue"]):
        done = run(shared, *argv, "--clusters-dir", str(folder))
        assert done.returncode == 0, done.stderr[-2000:]
    mesh_id = config.load(folder).mesh.mesh_id
    wanted = {"app.kubernetes.io/managed-by": "meshctl", "meshctl.io/mesh": mesh_id}
    uids = {}
    for c in shared.clusters:  # what kubectl sees, not meshctl's own reading
        ns = _kubectl_json(c, "namespace", NS)
        assert ns["metadata"]["labels"].items() >= wanted.items(), ns["metadata"]
        uids[c.name] = ns["metadata"]["uid"]
        secret = _kubectl_json(c, "secret", "cacerts", "-n", NS)
        assert secret["metadata"]["labels"] == wanted
    up = run(shared, "bootstrap", *args(folder))
    assert up.returncode == 0, up.stderr[-3000:]
    for c in shared.clusters:
        record = _kubectl_json(c, "configmap", "meshctl-install", "-n", NS)["data"]
        assert json.loads(record["namespace"]) == {"created": True, "uid": uids[c.name]}
        assert _kubectl_json(c, "namespace", NS)["metadata"]["labels"][
            "topology.istio.io/network"] == "network1"
    again = run(shared, "bootstrap", *args(folder))
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr[-2000:]

    # a cacerts from before the mesh label (simulated: label removed) gets it, data untouched
    c1 = shared["cluster1"]
    assert kubectl(c1, "label", "secret", "cacerts", "-n", NS, "meshctl.io/mesh-")\
        .returncode == 0
    before = _kubectl_json(c1, "secret", "cacerts", "-n", NS)
    relabel = run(shared, "certs.issue", "--cluster", "cluster1", "--clusters-dir", str(folder))
    assert relabel.returncode == 0, relabel.stderr[-2000:]
    assert "cacerts labelled" in relabel.stdout, relabel.stdout
    after = _kubectl_json(c1, "secret", "cacerts", "-n", NS)
    assert after["metadata"]["labels"] == wanted and after["data"] == before["data"]

    replaced = run(shared, "certs.init", "--force", "--clusters-dir", str(folder))
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    down = run(shared, "teardown", *args(folder), "--yes")
    assert down.returncode == 0, down.stderr[-3000:]
    assert "kept Secret istio-system/cacerts" not in down.stdout, down.stdout
    assert_torn_down(shared, ["cluster1", "cluster2"])
    for c in shared.clusters:
        gone = kubectl(c, "get", "namespace", NS)
        assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout


def test_field_owned_by_another_manager(tmp_path: Path, shared, proxied) -> None:
    """kubectl owns the network label with another value: refused, then taken with --force,
    and teardown puts kubectl's value back."""
    folder, proxies = proxied
    core = shared["cluster2"].core()
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NS)))
    try:
        labelled = kubectl(shared["cluster2"], "label", "namespace", NS,
                           "topology.istio.io/network=their-network")
        assert labelled.returncode == 0, labelled.stderr
        refused = run(shared, "bootstrap", *args(folder))
        assert refused.returncode == 1, refused.stderr[-2000:]
        lines = error_lines(refused)
        assert len(lines) == 1 and "Traceback" not in refused.stderr
        assert "kubectl-label" in lines[0] and "topology.istio.io/network" in lines[0]
        assert "--force" in lines[0]
        for name, p in proxies.items():
            assert p.mutations() == [], (name, p.mutations())

        forced = run(shared, "bootstrap", *args(folder, "--force"))
        assert forced.returncode == 0, forced.stderr[-3000:]
        assert "took over" in forced.stderr and "kubectl-label" in forced.stderr
        assert core.read_namespace(NS).metadata.labels[
            "topology.istio.io/network"] == "network1"

        # the record names the previous manager; a restore never writes under a name read
        # from the cluster (here: one an editor of the record chose)
        record = core.read_namespaced_config_map("meshctl-install", NS)
        fields = json.loads(record.data["foreign-namespace-fields"])
        assert fields["labels"]["topology.istio.io/network"] == {
            "previous": "their-network", "manager": "kubectl-label"}
        fields["labels"]["topology.istio.io/network"]["manager"] = "kube-apiserver"
        core.patch_namespaced_config_map("meshctl-install", NS, {"data": {
            "foreign-namespace-fields": json.dumps(fields)}})

        down = run(shared, "teardown", *args(folder), "--yes")
        assert down.returncode == 0, down.stderr[-3000:]
        after = _kubectl_json(shared["cluster2"], "namespace", NS,
                              "--show-managed-fields")["metadata"]
        assert after["labels"]["topology.istio.io/network"] == "their-network"
        owners = [m["manager"] for m in after["managedFields"]
                  if "f:topology.istio.io/network" in (
                      m.get("fieldsV1", {}).get("f:metadata", {}).get("f:labels") or {})]
        assert owners == ["meshctl-restore"], after["managedFields"]
    finally:
        core.delete_namespace(NS)
        assert_torn_down(shared, ["cluster1", "cluster2"])


def test_ca_conflict_on_one_cluster_writes_nothing_anywhere(tmp_path: Path, shared,
                                                             proxied) -> None:
    folder, proxies = proxied
    other_ca = certs.make_root(config.load(folder).mesh.ca)
    bundle = certs.make_intermediate(other_ca, "cluster2", config.load(folder).mesh.ca)
    core = shared["cluster2"].core()
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NS)))
    try:
        import base64

        core.create_namespaced_secret(NS, k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name="cacerts"),
            data={k: base64.b64encode(v).decode() for k, v in bundle.files().items()}))
        for p in proxies.values():
            p.reset()
        result = run(shared, "bootstrap", *args(folder))
        assert result.returncode == 1, result.stderr[-2000:]
        lines = error_lines(result)
        assert len(lines) == 1 and "cluster2" in lines[0] and "another CA" in lines[0]
        for name, p in proxies.items():
            assert p.mutations() == [], (name, p.mutations())
        with pytest.raises(k8s.ApiException):
            shared["cluster1"].core().read_namespace(NS)
    finally:
        core.delete_namespace(NS)
        wait_gone(core, NS)


def test_other_istioctl_version_is_not_nothing_to_do(tmp_path: Path, shared, proxied) -> None:
    """A re-run with another istioctl than the one that installed says so (exit 1)."""
    folder, proxies = proxied
    try:
        up = run(shared, "bootstrap", *args(folder))
        assert up.returncode == 0, up.stderr[-3000:]
        core = shared["cluster2"].core()
        record = core.read_namespaced_config_map("meshctl-install", NS)
        installed_by = built_istio_version(shared)
        assert record.data["istioctl-version"] == installed_by
        # as if an older istioctl had installed it: the record is the only witness
        core.patch_namespaced_config_map("meshctl-install", NS,
                                         {"data": {"istioctl-version": "1.30.2"}})
        for p in proxies.values():
            p.reset()
        again = run(shared, "bootstrap", *args(folder))
        assert again.returncode == 1, again.stdout[-1000:] + again.stderr[-2000:]
        assert "nothing to do" not in again.stdout
        lines = error_lines(again)
        assert len(lines) == 1 and "1.30.2" in lines[0] and installed_by in lines[0], lines
        assert "cluster2" in lines[0] and "hint:" in lines[0]
        for name, p in proxies.items():
            assert p.mutations() == [], (name, p.mutations())
    finally:
        down = run(shared, "teardown", *args(folder), "--yes")
        assert down.returncode == 0, down.stderr[-3000:]
        assert_torn_down(shared, ["cluster1", "cluster2"])
