"""meshctl.revisions and ``status`` on a real two-revision mesh, checked against Istio's tools.

Two primaries are bootstrapped by meshctl, then a second revision ``canary`` is installed
on each with the real istioctl exactly as an upgrade does it: ``istioctl install -y -f``
of meshctl's own IstioOperator with ``spec.revision: canary`` and the name
``meshctl-<cluster>-canary``.  What meshctl reads is compared with what upstream tools
say on the same clusters: ``kubectl get deploy -l app=istiod``, ``kubectl get
mutatingwebhookconfigurations -l istio.io/tag``, ``istioctl tag list`` and ``istioctl
proxy-status --revision R``.  Connected proxies are real: a sandbox workload
(pilot-agent + echo server, proxyless gRPC, no Envoy) in a namespace labelled
``istio.io/rev=canary`` connects to istiod-canary, a caller in an
``istio-injection=enabled`` namespace to the default revision's istiod.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from meshctl import config as mesh_config
from meshctl import istio, kube, manifests, revisions, topology
from meshctl.sandbox import lifecycle as sbx
from meshctl.sandbox import workload as wl
from meshctl.sandbox import workload_cluster as wc
from tests.sandbox_fixtures import SandboxHandle
from tests.test_bootstrap import KUBECTL, clusters_dir, run
from tests.test_istiod import eventually

pytestmark = pytest.mark.sandbox
CANARY = "canary"
NAMES = ("cluster1", "cluster2")


@dataclasses.dataclass
class Mesh:
    handle: SandboxHandle
    folder: Path
    config: mesh_config.Config

    def kube(self, name: str) -> kube.Kube:
        return kube.client(self.config.clusters[name])

    def tool(self, *args: str) -> str:
        out = subprocess.run(list(args), capture_output=True, text=True, timeout=120,
                             env=self.handle.env(), check=False)
        assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-2000:])
        return out.stdout

    def kubectl(self, name: str, *args: str) -> str:
        return self.tool(KUBECTL, "--kubeconfig", str(self.handle.kubeconfig),
                         "--context", name, *args)

    def istioctl(self, name: str, *args: str) -> str:
        return self.tool(str(self.handle.bin_dir / "istioctl"), "--kubeconfig",
                         str(self.handle.kubeconfig), "--context", name, *args)


def install_revision(mesh: Mesh, revision: str) -> None:
    """An upgrade's install of ``revision``: meshctl's IstioOperator, renamed per revision."""
    cfg = mesh.config
    with_rev = dataclasses.replace(cfg, mesh=dataclasses.replace(
        cfg.mesh, istio=dataclasses.replace(cfg.mesh.istio, revision=revision)))
    plan = topology.plan(cfg, "cluster1", ["cluster2"])
    ctl = istio.Istioctl(mesh.handle.bin_dir / "istioctl", "sandbox")
    for cp in plan.clusters:
        doc = yaml.safe_load(manifests.istio_operator(with_rev, plan, cp))
        doc["metadata"]["name"] = f"meshctl-{cp.name}-{revision}"
        assert doc["spec"]["revision"] == revision
        istio.install(ctl, cfg.clusters[cp.name], yaml.safe_dump(doc),
                      what=f"install revision {revision}")


@pytest.fixture(scope="module")
def mesh(sandbox_factory, tmp_path_factory) -> Mesh:
    handle = sandbox_factory(2, nodes=1, cpu="8", memory="16Gi", label="revisions")
    tmp = tmp_path_factory.mktemp("revisions")
    folder = clusters_dir(tmp, handle, {}, {})
    result = run(handle, "bootstrap", "--main", "cluster1", "--remote", "cluster2",
                 "--clusters-dir", str(folder))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    m = Mesh(handle, folder, mesh_config.load(folder))
    install_revision(m, CANARY)
    return m


def status_json(mesh: Mesh) -> dict[str, Any]:
    result = run(mesh.handle, "status", "--json", "--clusters-dir", str(mesh.folder))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {c["name"]: c for c in json.loads(result.stdout)["clusters"]}


def all_ready(k: kube.Kube) -> list[revisions.ControlPlane] | None:
    planes = revisions.control_planes(k)
    return planes if planes and all(c.ready for c in planes) else None


def test_control_planes_match_kubectls_istiod_deployments(mesh: Mesh) -> None:
    for name in NAMES:
        listed = json.loads(mesh.kubectl(name, "get", "deploy", "-n", "istio-system",
                                         "-l", "app=istiod", "-o", "json"))["items"]
        seen = {d["metadata"]["name"]: d["metadata"]["labels"] for d in listed}
        assert set(seen) == {"istiod", "istiod-canary"}
        planes = eventually(lambda name=name: all_ready(mesh.kube(name)),
                            what=f"both istiods ready on {name}")
        assert [(c.revision, c.deployment, c.owner) for c in planes] == [
            ("canary", "istiod-canary", f"meshctl-{name}-canary"),
            ("default", "istiod", f"meshctl-{name}")]
        for c in planes:
            assert c.version == seen[c.deployment]["operator.istio.io/version"]
            assert c.revision == seen[c.deployment]["istio.io/rev"]


def tag_list(mesh: Mesh, name: str) -> dict[str, str]:
    """``istioctl tag list``: ``TAG REVISION NAMESPACES`` rows; a revision without a tag
    has an empty first column (istioctl lists untagged revisions too)."""
    out = {}
    for line in mesh.istioctl(name, "tag", "list").splitlines()[1:]:
        words = line.split()
        if len(words) >= 2 and not line.startswith(" "):
            out[words[0]] = words[1]
    return out


def test_tags_match_istioctl_tag_list_and_the_tag_webhooks(mesh: Mesh) -> None:
    for name in NAMES:
        k = mesh.kube(name)
        tags = revisions.tags(k)
        assert tags == tag_list(mesh, name) == {"default": "default"}
        hooks = json.loads(mesh.kubectl(name, "get", "mutatingwebhookconfigurations",
                                        "-l", "istio.io/tag", "-o", "json"))["items"]
        assert {h["metadata"]["labels"]["istio.io/tag"]: h["metadata"]["labels"]["istio.io/rev"]
                for h in hooks} == tags
        assert revisions.default_revision(k) == "default"
        assert revisions.injector_revisions(k).keys() == {"canary", "default"}


@pytest.fixture
def labelled(mesh: Mesh) -> Iterator[dict[str, str]]:
    """Namespaces on cluster1: one per way of selecting a revision (removed afterwards)."""
    wanted = {"rev-enabled": {"istio-injection": "enabled"},
              "rev-canary": {"istio.io/rev": CANARY},
              "rev-tag": {"istio.io/rev": "default"},
              "rev-both": {"istio-injection": "enabled", "istio.io/rev": CANARY},
              "rev-gone": {"istio.io/rev": "gone"}}
    for ns, labels in wanted.items():
        mesh.kubectl("cluster1", "create", "namespace", ns)
        mesh.kubectl("cluster1", "label", "namespace", ns,
                     *[f"{k}={v}" for k, v in labels.items()])
    yield {"rev-enabled": "default", "rev-canary": CANARY, "rev-tag": "default",
           "rev-both": "default", "rev-gone": "gone"}
    for ns in wanted:
        mesh.kubectl("cluster1", "delete", "namespace", ns, "--wait=false")


def test_namespaces_by_revision_and_status_json(mesh: Mesh, labelled: dict[str, str]) -> None:
    found = revisions.namespaces_by_revision(mesh.kube("cluster1"))
    for ns, rev in labelled.items():
        assert ns in found.get(rev, []), (ns, rev, found)
    doc = status_json(mesh)
    for name in NAMES:
        row = doc[name]
        assert row["default_revision"] == "default"
        assert row["tags"] == {"default": "default"}
        assert [(r["revision"], r["deployment"], r["ready"]) for r in row["revisions"]] == [
            ("canary", "istiod-canary", True), ("default", "istiod", True)]
        assert all(isinstance(r["proxies"], int) and r["proxies_error"] is None
                   for r in row["revisions"])
        assert row["istio_version"] == row["revisions"][1]["version"]
    assert doc["cluster1"]["namespaces"]["gone"] == ["rev-gone"]
    assert any("rev-gone" in p for p in doc["cluster1"]["revision_problems"])
    assert doc["cluster2"]["revision_problems"] == []
    table = run(mesh.handle, "status", "--clusters-dir", str(mesh.folder))
    assert table.returncode == 0
    assert "gone (no such revision): rev-gone" in " ".join(table.stdout.split())


def proxy_status_count(mesh: Mesh, name: str, revision: str) -> int:
    lines = mesh.istioctl(name, "proxy-status", "--revision", revision).splitlines()
    assert lines and lines[0].split()[0] == "NAME", lines
    return len([line for line in lines[1:] if line.strip()])


def test_proxies_by_revision_equal_istioctl_proxy_status(mesh: Mesh) -> None:
    sb = sbx.load(mesh.handle.state_dir)
    api = wc.api(sb, "cluster1")
    for ns, labels in (("moved", {"istio.io/rev": CANARY}),
                       ("stays", {"istio-injection": "enabled"})):
        mesh.kubectl("cluster1", "create", "namespace", ns)
        mesh.kubectl("cluster1", "label", "namespace", ns,
                     *[f"{k}={v}" for k, v in labels.items()])
    started: list[wl.Workload] = []
    try:
        # istiod writes istio-ca-root-cert into each new namespace; the agent needs it
        for ns in ("moved", "stays"):
            eventually(lambda ns=ns: mesh.kube("cluster1").get(
                f"/api/v1/namespaces/{ns}/configmaps/istio-ca-root-cert"),
                what=f"istio-ca-root-cert in {ns}")
        # servers: their echo server holds an xDS stream through the agent (an agent
        # alone, a caller, connects only when something asks it for routes)
        for ns, version in (("moved", "v2"), ("stays", "v1")):
            started += wl.start(sb, cluster="cluster1", namespace=ns, service="echo",
                                version=version)
        k = mesh.kube("cluster1")
        want = {CANARY: 1, "default": 1}

        def counted() -> dict[str, int]:
            got = revisions.proxies_by_revision(k)
            assert got == want, got
            return got

        eventually(counted, what=f"proxies {want} on cluster1")
        for rev, n in want.items():
            assert proxy_status_count(mesh, "cluster1", rev) == n
        # istioctl's own debug clients linger in istiod for ~30 s: still not counted
        assert revisions.proxies_by_revision(k) == want
        rows = {r["revision"]: r["proxies"] for r in status_json(mesh)["cluster1"]["revisions"]}
        assert rows == want
        k2 = mesh.kube("cluster2")
        assert revisions.proxies_by_revision(k2) == {
            rev: proxy_status_count(mesh, "cluster2", rev) for rev in want} == {
            CANARY: 0, "default": 0}
    finally:
        for w in started:
            wl.stop(sb, w, api)
        for ns in ("moved", "stays"):
            mesh.kubectl("cluster1", "delete", "namespace", ns, "--wait=false")


READER_RULES = [
    {"apiGroups": [""], "resources": ["pods", "secrets", "services", "namespaces",
                                      "configmaps", "endpoints"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["admissionregistration.k8s.io"],
     "resources": ["mutatingwebhookconfigurations"], "verbs": ["get", "list", "watch"]}]


def reader_folder(mesh: Mesh, tmp: Path) -> Path:
    """A clusters folder whose cluster1 is read by a ServiceAccount that may read what
    status reads but has no ``pods/portforward``: the API server refuses the port-forward."""
    c = mesh.handle[0]
    core = c.core()
    rbac = k8s.RbacAuthorizationV1Api(c.kubernetes)
    core.create_namespaced_service_account("default", {"metadata": {"name": "status-reader"}})
    rbac.create_cluster_role({"metadata": {"name": "status-reader"}, "rules": READER_RULES})
    rbac.create_cluster_role_binding({
        "metadata": {"name": "status-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "status-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "status-reader",
                      "namespace": "default"}]})
    token = core.create_namespaced_service_account_token(
        "status-reader", "default", {"spec": {"expirationSeconds": 3600}}).status.token
    admin = yaml.safe_load(c.kubeconfig.read_text())
    entry = next(x["cluster"] for x in admin["clusters"] if x["name"] == c.context
                 or x["cluster"]["server"] == c.api_url)
    kubeconfig = tmp / "reader.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "reader",
        "clusters": [{"name": "c", "cluster": entry}],
        "users": [{"name": "reader", "user": {"token": token}}],
        "contexts": [{"name": "reader", "context": {"cluster": "c", "user": "reader"}}]}))
    kubeconfig.chmod(0o600)
    folder = tmp / "clusters"
    shutil.copytree(mesh.folder, folder)
    doc = yaml.safe_load((folder / "cluster1.yaml").read_text())
    doc.update(kubeconfig=str(kubeconfig), context="reader")
    (folder / "cluster1.yaml").write_text(yaml.safe_dump(doc))
    return folder


def test_a_refused_port_forward_is_said_for_that_field_and_the_row_still_shows(
        mesh: Mesh, tmp_path: Path) -> None:
    folder = reader_folder(mesh, tmp_path)
    result = run(mesh.handle, "status", "--json", "--clusters-dir", str(folder))
    assert result.returncode == 0, result.stderr[-2000:]  # as before: every row was read
    rows = {c["name"]: c for c in json.loads(result.stdout)["clusters"]}
    one = rows["cluster1"]
    assert [r["revision"] for r in one["revisions"]] == ["canary", "default"]
    for r in one["revisions"]:
        assert r["proxies"] is None and r["ready"] is True and r["version"]
        assert "port-forward to istio-system/istiod" in r["proxies_error"], r
        assert "403" in r["proxies_error"] or "Forbidden" in r["proxies_error"], r
    assert one["links"] == ["cluster2"] and one["cert_days_left"] > 0
    assert one["default_revision"] == "default"
    assert all(isinstance(r["proxies"], int) for r in rows["cluster2"]["revisions"])
    table = run(mesh.handle, "status", "--clusters-dir", str(folder))
    assert table.returncode == 0
    said = " ".join(table.stdout.split())
    assert "proxies unknown" in said
    assert "proxies of revision canary: cluster1: port-forward" in said
