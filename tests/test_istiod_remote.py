"""Primary-remote with the real istiod: what the sandbox proves there, and what it cannot.

The main (cluster1) runs the real istiod; the remote (cluster2, remote profile) runs
none.  Proven: through the remote's secret, the main's istiod syncs the remote and
holds the endpoints of pods that run only there, and verify's control-plane half says
so.  Not proven: the remote's webhooks and its sidecars' xDS go to the main's istiod
through the main's east-west gateway, an Envoy the sandbox cannot run; the webhook
stand-in answers the remote's webhooks instead, so a pod there gets no sidecar.
"""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from meshctl import config as mesh_config
from meshctl import topology
from meshctl.verify import control_plane as vcp
from tests.test_bootstrap import clusters_dir, run
from tests.test_istiod import Mesh, eventually, hello

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def main_remote(sandbox_factory, tmp_path_factory) -> Mesh:
    handle = sandbox_factory(2, nodes=1, cpu="8", memory="16Gi", label="istiod-remote")
    tmp = tmp_path_factory.mktemp("istiod-remote")
    folder = clusters_dir(tmp, handle, {"cluster2": "remote"}, {})
    result = run(handle, "bootstrap", "--main", "cluster1", "--remote", "cluster2",
                 "--clusters-dir", str(folder))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cfg = mesh_config.load(folder)
    return Mesh(handle, tmp, folder, cfg, topology.plan(cfg, "cluster1", ["cluster2"]))


def test_main_istiod_syncs_the_remote_and_holds_its_endpoints(main_remote: Mesh,
                                                              namespace_factory) -> None:
    clients = {n: main_remote.kube(n) for n in main_remote.plan.names}
    checks = eventually(lambda: (cs := vcp.checks(main_remote.config, main_remote.plan,
                                                  clients)) and all(
        c.status == "PASS" for c in cs) and cs, what="control-plane checks PASS")
    assert [c.name for c in checks] == ["cluster1 sees cluster2"]  # the remote has no istiod

    ns = namespace_factory(main_remote.handle)
    c2 = main_remote.handle["cluster2"]
    deploy, svc = hello(ns)
    c2.apps().create_namespaced_deployment(ns, deploy)
    c2.core().create_namespaced_service(ns, svc)
    pod = main_remote.istiod_pod("cluster1")["metadata"]["name"]
    host = f"hello.{ns}.svc.cluster.local"
    found = eventually(lambda: (n := vcp.shard_counts(vcp.istiod_get(
        clients["cluster1"], pod, 15014, "/debug/endpointShardz"), host, ns)).get(
        "cluster2") == 2 and n, what=f"cluster2's endpoints of {host} in cluster1's istiod")
    assert found == {"cluster2": 2}


def test_remote_runs_no_istiod_and_its_webhook_is_the_stand_in(main_remote: Mesh,
                                                               namespace_factory) -> None:
    state = main_remote.handle.state_dir
    assert not list((state / "pids").glob("cluster2-istiod-*.pid"))
    ns = namespace_factory(main_remote.handle)
    core = main_remote.handle["cluster2"].core()
    core.patch_namespace(ns, {"metadata": {"labels": {"istio-injection": "enabled"}}})
    log_file = state / "logs" / "sandbox-lb.log"
    try:
        pod = eventually(lambda: core.create_namespaced_pod(ns, k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name="app"),
            spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="app", image="x")]))),
            what="pod admitted on the remote")
    except AssertionError as e:  # say what the stand-in's process saw, for the next reader
        tail = "\n".join(log_file.read_text().splitlines()[-40:])
        raise AssertionError(f"{e}\n--- sandbox-lb.log (last 40 lines) ---\n{tail}") from None
    # Admitted by the stand-in, unchanged: the main's istiod is not reachable here.
    assert [ct.name for ct in pod.spec.containers] == ["app"]
    log = log_file.read_text()
    assert "cluster2: serving webhook istiod.istio-system.svc:443" in log
