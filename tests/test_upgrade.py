"""``meshctl upgrade`` on the sandbox: from the previous Istio build to the pinned one.

Each mesh is bootstrapped by meshctl with the *previous* istioctl (a dated 1.31-dev
snapshot, built beside the pinned one; the sandbox runs each istiod pod with the
pilot-discovery its image tag names), then upgraded stage by stage with the pinned
istioctl.  What meshctl did is checked with upstream tools: ``kubectl`` (Deployments,
webhooks, namespace labels, pod images), ``istioctl remote-clusters --revision`` (istiod's
own view of the other cluster), ``istioctl tag list``, ``istioctl proxy-status``.

The multi-primary test runs real workloads (pilot-agent + Istio's echo server,
proxyless gRPC, no Envoy) and a caller that keeps calling across clusters through the
whole upgrade.  The sandbox's workloads are host processes, not pods: where meshctl's
``--move`` restarts Deployments (kwok pods, re-injected by the new revision), the test
restarts the workloads itself (a new replica up, the old one deregistered and stopped),
as a rolling restart would.  It proves routing and mTLS across the two istiods of an
upgrade; it does not prove Envoy sidecars or the east-west gateways' data path (kwok
pods run nothing).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.sandbox import calls
from meshctl.sandbox import lifecycle as sbx
from meshctl.sandbox import workload as wl
from meshctl.sandbox import workload_cluster as wc
from tests.factories import BIN, REPO, assert_one_line_error, meshctl
from tests.sandbox_fixtures import SandboxHandle
from tests.test_bootstrap import clusters_dir
from tests.test_istiod import eventually

pytestmark = pytest.mark.sandbox
NEW = "canary"
NS = "shop"
PORT = wl.PORT
NAMES = ("cluster1", "cluster2")


class Mesh:
    """A sandbox mesh and the commands the tests run on it."""

    def __init__(self, handle: SandboxHandle, folder: Path, tmp: Path) -> None:
        self.handle, self.folder, self.tmp = handle, folder, tmp
        self.old = str(handle.bin_dir / "istioctl-previous")
        self.new = str(handle.bin_dir / "istioctl")
        self.args = ["--main", "cluster1", "--remote", "cluster2", "--clusters-dir",
                     str(folder)]
        self.current = self.old  # the istioctl bootstrap and teardown use

    def env(self) -> dict[str, str]:
        return {**self.handle.env(), "MESHCTL_ISTIOCTL": self.current}

    def meshctl(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = meshctl(*args, env=self.env())
        if ok:
            assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
        return result

    def upgrade(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return self.meshctl("upgrade", *self.args, *args, ok=ok)

    def tool(self, *args: str, ok: bool = True) -> str:
        out = subprocess.run(list(args), capture_output=True, text=True, timeout=120,
                             env=self.handle.env(), check=False)
        assert not ok or out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-2000:])
        return out.stdout

    def kubectl(self, cluster: str, *args: str, data: str | None = None) -> str:
        out = subprocess.run(["kubectl", "--kubeconfig", str(self.handle.kubeconfig),
                              "--context", cluster, *args], input=data, capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def istioctl(self, cluster: str, *args: str) -> str:
        return self.tool(self.new, "--kubeconfig", str(self.handle.kubeconfig), "--context",
                         cluster, *args)

    def items(self, cluster: str, what: str, *args: str) -> list[dict[str, Any]]:
        return json.loads(self.kubectl(cluster, "get", what, *args, "-o", "json"))["items"]

    def istiods(self, cluster: str) -> dict[str, str]:
        """istiod Deployment -> its image tag (kubectl)."""
        return {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
                .rsplit(":", 1)[-1]
                for d in self.items(cluster, "deploy", "-n", "istio-system", "-l", "app=istiod")}

    def synced(self, cluster: str, revision: str) -> dict[str, str]:
        """``istioctl remote-clusters --revision``: cluster -> status."""
        out = self.istioctl(cluster, "remote-clusters", "--revision", revision)
        rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
        return {r[0]: next((w for w in r if w in ("synced", "timeout", "syncing")), "?")
                for r in rows}

    def record(self, cluster: str) -> dict[str, Any]:
        return json.loads(self.kubectl(cluster, "get", "cm", "meshctl-install", "-n",
                                       "istio-system", "-o", "json"))

    def written(self) -> dict[str, str]:
        """What a refused command must not change: each record's resourceVersion and the
        istiod Deployments."""
        return {c: f"{self.record(c)['metadata']['resourceVersion']} "
                   f"{sorted(self.istiods(c))}" for c in NAMES}

    def owned_by(self, cluster: str, owner: str) -> list[str]:
        """Everything istioctl labelled as rendered from IstioOperator ``owner``."""
        sel = f"install.operator.istio.io/owning-resource={owner}"
        kinds = ("deploy,svc,cm,sa,role,rolebinding,hpa,pdb")
        found = [f"{i['kind']}/{i['metadata']['name']}" for i in self.items(
            cluster, kinds, "-n", "istio-system", "-l", sel)]
        found += [f"{i['kind']}/{i['metadata']['name']}" for i in self.items(
            cluster, "mutatingwebhookconfigurations,validatingwebhookconfigurations,"
                     "clusterroles,clusterrolebindings", "-l", sel)]
        return found

    def by_revision(self, cluster: str, revision: str) -> list[str]:
        sel = f"istio.io/rev={revision}"
        found = [f"{i['kind']}/{i['metadata']['name']}" for i in self.items(
            cluster, "deploy,svc,cm,sa", "-n", "istio-system", "-l", sel)]
        return found + [f"{i['kind']}/{i['metadata']['name']}" for i in self.items(
            cluster, "mutatingwebhookconfigurations,validatingwebhookconfigurations", "-l", sel)]

    def killed_during(self, args: list[str], ready: Any, timeout: float = 240.0) -> None:
        """Run ``meshctl upgrade <args>`` and SIGKILL it (its whole process group, so
        istioctl dies too) as soon as ``ready()`` says it is in the middle."""
        exe = str(BIN / "meshctl")
        proc = subprocess.Popen([exe, "upgrade", *self.args, *args], cwd=REPO,
                                env={**self.env(), "COLUMNS": "200"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if ready():
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.2)
            assert proc.wait(timeout=30) == -signal.SIGKILL, "the run ended before the kill"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def _mesh(handle: SandboxHandle, tmp: Path, roles: dict[str, str], inject: list[str]) -> Mesh:
    folder = clusters_dir(tmp, handle, roles, {})
    for name in NAMES:
        path = folder / f"{name}.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["injectNamespaces"] = inject
        path.write_text(yaml.safe_dump(doc))
    m = Mesh(handle, folder, tmp)
    for name in NAMES:
        for ns in inject:
            if ns != "default":
                m.kubectl(name, "create", "namespace", ns)
    m.meshctl("bootstrap", *m.args)
    return m


class Caller(threading.Thread):
    """Calls ``echo`` from cluster1 without pause until stopped; counts every answer."""

    def __init__(self, mesh: Mesh, sb: sbx.Sandbox, caller: wl.Workload) -> None:
        super().__init__(daemon=True)
        self.sb, self.caller = sb, caller
        self.answered: Counter[tuple[str, str]] = Counter()
        self.failed: Counter[str] = Counter()
        self.batches = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                caller = self.caller
            got = calls.send(self.sb, caller, f"echo.{NS}.svc.cluster.local", PORT,
                             count=20, qps=40)
            with self.lock:
                self.answered.update(got.answered)
                self.failed.update(got.causes)
                self.batches += 1

    def swap(self, caller: wl.Workload) -> wl.Workload:
        """Use ``caller`` from the next batch on; returns the old one once no batch uses it."""
        with self.lock:
            old, self.caller, seen = self.caller, caller, self.batches
        eventually(lambda: self.batches >= seen + 2 or None, timeout=60,
                   what="two batches with the new caller")
        return old


def roll(sb: sbx.Sandbox, w: wl.Workload) -> wl.Workload:
    """A rolling restart of one server: the new replica (injected by whatever revision
    its namespace names now) up and registered, then the old one deregistered, given
    time for the callers' istiod to push the change, and stopped."""
    new = wl.start(sb, cluster=w.cluster, namespace=w.namespace, service=w.service,
                   version=w.version)[0]
    api = wc.api(sb, w.cluster)
    wc.unregister(api, w)
    time.sleep(3.0)
    wl.stop(sb, w, api)
    return new


@pytest.mark.usefixtures("sandbox_bin_previous")
def test_multi_primary_upgrade_keeps_calls_flowing_and_converges_after_kill(
        sandbox_factory, tmp_path) -> None:
    handle = sandbox_factory(2, nodes=1, cpu="16", memory="32Gi", label="upgrade")
    m = _mesh(handle, tmp_path, {}, [NS])
    sb = sbx.load(handle.state_dir)
    old_tag = m.istiods("cluster1")["istiod"]
    assert old_tag.startswith("1.31-dev.2026042"), old_tag
    for name in NAMES:
        assert "istio-injection=enabled" in m.kubectl(name, "get", "ns", NS, "--show-labels")

    # refusals before any upgrade: one line, exit 1, nothing written
    before = m.written()
    for stage in ("--move", "--finish"):
        assert_one_line_error(m.upgrade(stage, "--istioctl", m.new, ok=False)
                              if stage == "--finish" else m.upgrade(stage, ok=False),
                              1, "no upgrade is in progress")
    assert_one_line_error(m.upgrade("--rollback", "--istioctl", m.old, ok=False), 1,
                          "no upgrade is in progress")
    # skew: the same build is nothing to upgrade to; a jump of three minors is refused
    # (the versions as the clusters' records carry them; nothing is installed either way)
    assert_one_line_error(m.upgrade("--to", NEW, "--istioctl", m.old, ok=False), 1,
                          "nothing to upgrade to")
    assert_one_line_error(m.upgrade("--to", "default", "--istioctl", m.new, ok=False), 2,
                          "not 'default'")
    assert m.written() == before
    # real workloads: echo v1 in cluster2 only, a caller in cluster1
    server = wl.start(sb, cluster="cluster2", namespace=NS, service="echo", version="v1")[0]
    for name in NAMES:
        m.kubectl(name, "apply", "-f", "-", data=yaml.safe_dump({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": NS},
            "spec": {"selector": {"app": "echo"},
                     "ports": [{"name": "grpc", "port": PORT, "appProtocol": "grpc"}]}}))
    # proxyless gRPC callers take mTLS from a DestinationRule: meshctl's canary writes it
    m.meshctl("canary", "--cluster", "cluster1", "--namespace", NS, "--service", "echo",
              "--weights", "v1=100", "--clusters-dir", str(m.folder))
    caller = wl.start_caller(sb, cluster="cluster1", namespace=NS, service_account="caller")
    eventually(lambda: calls.send(sb, caller, f"echo.{NS}.svc.cluster.local", PORT,
                                  count=5, qps=20).ok == 5 or None, timeout=90,
               what="cluster1 -> echo in cluster2")
    traffic = Caller(m, sb, caller)
    traffic.start()
    try:
        # start, killed in the middle (the new istiod's Deployment exists on cluster1)
        m.killed_during(["--to", NEW, "--istioctl", m.new],
                        lambda: f"istiod-{NEW}" in m.istiods("cluster1"))
        assert_one_line_error(m.upgrade("--move", ok=False), 1, "re-run")
        assert_one_line_error(m.upgrade("--to", "other", "--istioctl", m.new, ok=False), 1,
                              "in progress")
        m.upgrade("--to", NEW, "--istioctl", m.new)
        new_tag = m.istiods("cluster1")[f"istiod-{NEW}"]
        assert new_tag != old_tag and new_tag.startswith("1.31-dev.2026"), new_tag
        for name in NAMES:
            assert sorted(m.istiods(name)) == ["istiod", f"istiod-{NEW}"]  # never twice
            other = "cluster2" if name == "cluster1" else "cluster1"
            for revision in ("default", NEW):
                assert m.synced(name, revision).get(other) == "synced", (name, revision)
        pods = m.items("cluster1", "pods", "-n", "istio-system", "-l", "app=istiod")
        seen = {p["metadata"]["labels"]["istio.io/rev"]: p["spec"]["containers"][0]["image"]
                .rsplit(":", 1)[-1] for p in pods if p["status"].get("phase") == "Running"}
        assert seen == {"default": old_tag, NEW: new_tag}, seen
        assert_one_line_error(m.upgrade("--finish", "--istioctl", m.new, ok=False), 1,
                              "--move")

        # move: namespaces relabelled, Deployments restarted and re-injected by NEW
        m.kubectl("cluster1", "create", "deployment", "web", "-n", NS, "--image=nginx")
        eventually(lambda: m.items("cluster1", "pods", "-n", NS) or None, timeout=60)
        m.upgrade("--move")
        for name in NAMES:
            labels = m.kubectl(name, "get", "ns", NS, "-o", "jsonpath={.metadata.labels}")
            assert f'"istio.io/rev":"{NEW}"' in labels and "istio-injection" not in labels
        pods = m.items("cluster1", "pods", "-n", NS, "-l", "app=web")
        images = {c["image"].rsplit(":", 1)[-1] for p in pods for c in p["spec"]["containers"]
                  if c["name"] == "istio-proxy" and not p["metadata"].get("deletionTimestamp")}
        assert images == {new_tag}, images
        # the sandbox's workloads restart themselves (host processes, not pods)
        server = roll(sb, server)
        new_caller = wl.start_caller(sb, cluster="cluster1", namespace=NS,
                                     service_account="caller")
        wl.stop(sb, traffic.swap(new_caller), wc.api(sb, "cluster1"))
        status = m.istioctl("cluster1", "proxy-status", "--revision", NEW)
        assert new_caller.lane in status or "caller" in status or len(status.splitlines()) > 1
        # finish, killed after the tag moved; then the re-run converges
        m.killed_during(["--finish", "--istioctl", m.new], lambda: "canary" in m.tool(
            m.new, "--kubeconfig", str(handle.kubeconfig), "--context", "cluster1",
            "tag", "list"))
        m.upgrade("--finish", "--istioctl", m.new)
        time.sleep(2.0)
    finally:
        traffic.stop.set()
        traffic.join(timeout=120)
    assert not traffic.failed, traffic.failed.most_common(3)
    assert sum(traffic.answered.values()) >= 200 and set(traffic.answered) == {
        ("cluster2", "v1")}, traffic.answered

    for name in NAMES:
        assert m.istiods(name) == {f"istiod-{NEW}": new_tag}
        assert m.owned_by(name, f"meshctl-{name}") == [], m.owned_by(name, f"meshctl-{name}")
        assert m.by_revision(name, "default") == [], m.by_revision(name, "default")
        assert "default " + NEW in " ".join(m.istioctl(name, "tag", "list").split())
        other = "cluster2" if name == "cluster1" else "cluster1"
        assert m.synced(name, NEW).get(other) == "synced"
        data = m.record(name)["data"]
        assert json.loads(data["upgrade"])["stage"] == "finish" and data[
            "istioctl-version"] == new_tag
    # bootstrap refuses until mesh.yaml names the new revision, then has nothing to do
    assert_one_line_error(m.meshctl("bootstrap", *m.args, ok=False), 1, f"revision: {NEW}")
    doc = yaml.safe_load((m.folder / "mesh.yaml").read_text())
    doc.setdefault("istio", {})["revision"] = NEW
    (m.folder / "mesh.yaml").write_text(yaml.safe_dump(doc))
    m.current = m.new
    assert "nothing to do" in m.meshctl("bootstrap", *m.args).stdout
    wl.stop(sb, server, wc.api(sb, "cluster2"))
    # skew, last (nothing writes the records after it): a mesh whose records say 1.28.2
    # is refused a three-minor jump to this build; nothing is written
    patch = json.dumps({"data": {"istioctl-version": "1.28.2"}})
    for name in NAMES:
        m.kubectl(name, "patch", "cm", "meshctl-install", "-n", "istio-system", "--type",
                  "merge", "-p", patch)
    before = m.written()
    assert_one_line_error(m.upgrade("--to", "next", "--istioctl", m.new, ok=False), 1,
                          "jumps 3 minors")
    assert m.written() == before


@pytest.mark.usefixtures("sandbox_bin_previous")
def test_primary_remote_rollback_leaves_nothing_then_upgrade_moves_the_remote(
        sandbox_factory, tmp_path) -> None:
    handle = sandbox_factory(2, nodes=1, cpu="16", memory="32Gi", label="upgrade-remote")
    m = _mesh(handle, tmp_path, {"cluster2": "remote"}, ["default"])
    old_tag = m.istiods("cluster1")["istiod"]
    before_hooks = sorted(i["metadata"]["name"] for i in m.items(
        "cluster2", "mutatingwebhookconfigurations"))

    before = m.written()
    said = m.upgrade("--to", NEW, "--istioctl", m.new, "--dry-run").stdout
    assert "dry run, nothing written" in said and f"meshctl-cluster2-{NEW}" in said, said
    assert m.written() == before
    m.upgrade("--to", NEW, "--istioctl", m.new)
    assert "nothing written" in m.upgrade("--move", "--dry-run").stdout
    hooks = {i["metadata"]["name"]: i for i in m.items("cluster2", "mutatingwebhookconfigurations")}
    assert f"istio-sidecar-injector-{NEW}" in hooks, sorted(hooks)
    assert m.synced("cluster1", NEW).get("cluster2") == "synced"
    m.upgrade("--move")
    assert f'"istio.io/rev":"{NEW}"' in m.kubectl("cluster2", "get", "ns", "default", "-o",
                                                  "jsonpath={.metadata.labels}")
    # rollback needs the istioctl that installed the old revision
    assert_one_line_error(m.upgrade("--rollback", "--istioctl", m.new, ok=False), 1,
                          old_tag)
    # a proxy still on the new revision (a sandbox server, whose echo server keeps its xDS
    # stream open; meshctl cannot restart it)
    # must not be left with the older control plane: rollback stops before removing it
    sb = sbx.load(handle.state_dir)
    wl.start(sb, cluster="cluster1", namespace="default", service="stray", version="v1")
    refused = m.upgrade("--rollback", "--istioctl", m.old, ok=False)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert len(errors) == 1 and f"proxies still connect to revision {NEW} (cluster1: 1)" in \
        errors[0] and "newer than their control plane" in errors[0], refused.stderr
    assert f"istiod-{NEW}" in m.istiods("cluster1")
    wl.delete(sb, cluster="cluster1", namespace="default", service="stray")
    eventually(lambda: m.upgrade("--rollback", "--istioctl", m.old, ok=False).returncode == 0
               or None, timeout=90, what="rollback once the stray proxy is gone")
    for name in NAMES:
        assert m.owned_by(name, f"meshctl-{name}-{NEW}") == []
        assert m.by_revision(name, NEW) == [], m.by_revision(name, NEW)
        labels = m.kubectl(name, "get", "ns", "default", "-o", "jsonpath={.metadata.labels}")
        assert '"istio-injection":"enabled"' in labels and "istio.io/rev" not in labels
        assert "upgrade.istio-operator.yaml" not in m.record(name)["data"]
    assert m.istiods("cluster1") == {"istiod": old_tag}
    assert sorted(i["metadata"]["name"] for i in m.items(
        "cluster2", "mutatingwebhookconfigurations")) == before_hooks
    assert m.synced("cluster1", "default").get("cluster2") == "synced"

    # the same upgrade again, to the end
    m.upgrade("--to", NEW, "--istioctl", m.new)
    m.upgrade("--move")
    m.upgrade("--finish", "--istioctl", m.new)
    tag = m.items("cluster2", "mutatingwebhookconfigurations", "-l", "istio.io/tag=default")
    assert [t["metadata"]["labels"]["istio.io/rev"] for t in tag] == [NEW], [
        (h["metadata"]["name"], h["metadata"].get("labels")) for h in m.items(
            "cluster2", "mutatingwebhookconfigurations")]
    remote_hooks = m.items("cluster2", "mutatingwebhookconfigurations", "-l",
                           "istio.io/rev")
    assert {h["metadata"]["labels"]["istio.io/rev"] for h in remote_hooks} == {NEW}
    assert "default " + NEW in " ".join(m.istioctl("cluster2", "tag", "list").split())
    assert m.istiods("cluster1") == {f"istiod-{NEW}": m.istiods("cluster1")[f"istiod-{NEW}"]}
    assert m.synced("cluster1", NEW).get("cluster2") == "synced"
    # teardown after the upgrade leaves no webhook behind, the re-set tag included
    m.current = m.new
    result = m.meshctl("teardown", *m.args, "--yes")
    assert "upgrade --finish" in result.stdout or "tag" in result.stdout, result.stdout
    for name in NAMES:
        left = [h["metadata"]["name"] for h in m.items(
            name, "mutatingwebhookconfigurations,validatingwebhookconfigurations")]
        assert left == [], (name, left)
