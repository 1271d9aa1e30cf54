"""Injection labels on real API servers: bootstrap sets them, teardown puts them back.

One bootstrap of two primaries (one network, no gateways: the cheapest mesh) serves the
module; the tests run in file order over it and the last one tears it down.  Before
the bootstrap, cluster1's ``team-a`` carries another tool's ``istio-injection=disabled``
and an unrelated ``team=x`` (both set by the real kubectl, so kubectl's managers own
them), ``fresh`` does not exist, and cluster2's ``default`` carries someone's leftover
``istio.io/rev=old``, which must go: ``istio-injection`` overrides it, and the two
together make injection unpredictable (istio/istio#48643).  What the labels look like
is read with the real kubectl.

What is not seen here: a sidecar injected into a pod by these labels (the sandbox's
pods are kwok's; tests/test_istiod.py covers the injector itself).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from meshctl import config, kube, ownership
from meshctl.mesh import injection, install
from tests.test_bootstrap import KUBECTL, assert_torn_down, clusters_dir, run, wait_gone

pytestmark = pytest.mark.sandbox

ARGS = ["--main", "cluster1", "--remote", "cluster2"]


def kubectl(cluster, *args: str) -> str:
    done = subprocess.run([KUBECTL, "--kubeconfig", str(cluster.kubeconfig), "--context",
                           cluster.context, *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def labels(cluster, ns: str) -> dict[str, str]:
    return json.loads(kubectl(cluster, "get", "ns", ns, "-o",
                              "jsonpath={.metadata.labels}") or "{}")


def flat(text: str) -> str:
    """Output with rich's line wrapping undone (80 columns when not a terminal)."""
    return " ".join(text.split())


def entries(cluster) -> dict[str, dict]:
    cm = json.loads(kubectl(cluster, "get", "configmap", "-n", "istio-system",
                            "meshctl-install", "-o", "json"))
    return json.loads(cm["data"][injection.REC_INJECTION])


@pytest.fixture(scope="module")
def mesh(sandbox_factory, tmp_path_factory):
    """The sandbox, its clusters folder, and the first bootstrap's result."""
    handle = sandbox_factory(2, nodes=1, cpu="8", memory="16Gi", label="injection")
    tmp = tmp_path_factory.mktemp("injection")
    folder = clusters_dir(tmp, handle, {}, {})
    for name, namespaces in (("cluster1", ["team-a", "fresh"]), ("cluster2", ["default"])):
        path = folder / f"{name}.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["injectNamespaces"] = namespaces
        path.write_text(yaml.safe_dump(doc))
    c1, c2 = handle["cluster1"], handle["cluster2"]
    kubectl(c1, "create", "namespace", "team-a")
    kubectl(c1, "label", "namespace", "team-a", "istio-injection=disabled", "team=x")
    kubectl(c2, "label", "namespace", "default", "istio.io/rev=old")
    # preflight FAILs on a namespace that does not exist yet (fresh): skip it, the
    # ownership checks still run
    first = run(handle, "bootstrap", *ARGS, "--clusters-dir", str(folder), "--skip-preflight")
    yield handle, folder, first
    run(handle, "teardown", *ARGS, "--clusters-dir", str(folder), "--yes")  # if a test failed


def test_bootstrap_sets_the_labels_and_records_what_was_there(mesh) -> None:
    handle, _, first = mesh
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    c1, c2 = handle["cluster1"], handle["cluster2"]
    assert labels(c1, "team-a") == {"istio-injection": "enabled", "team": "x",
                                    "kubernetes.io/metadata.name": "team-a"}
    fresh = labels(c1, "fresh")
    assert fresh["istio-injection"] == "enabled" and "istio.io/rev" not in fresh
    assert fresh[ownership.MANAGED_BY] == "meshctl" and fresh[ownership.MESH] == "mesh1"
    default = labels(c2, "default")
    assert default.get("istio-injection") == "enabled" and "istio.io/rev" not in default
    # the other manager's label was taken over, and the run said from whom
    assert "took over .metadata.labels.istio-injection (owned by kubectl-label)" \
        in flat(first.stderr)
    team_a = entries(c1)["team-a"]
    assert team_a["created"] is False
    assert team_a["previous"] == {"istio-injection": "disabled", "istio.io/rev": None}
    assert team_a["uid"] == kubectl(c1, "get", "ns", "team-a", "-o", "jsonpath={.metadata.uid}")
    assert entries(c1)["fresh"] == {
        "uid": kubectl(c1, "get", "ns", "fresh", "-o", "jsonpath={.metadata.uid}"),
        "created": True, "previous": {"istio-injection": None, "istio.io/rev": None}}
    assert entries(c2)["default"]["previous"] == {"istio-injection": None,
                                                  "istio.io/rev": "old"}


def test_rerun_changes_nothing_and_keeps_the_previous_values(mesh) -> None:
    handle, folder, _ = mesh
    again = run(handle, "bootstrap", *ARGS, "--clusters-dir", str(folder),
                "--skip-preflight")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do" in again.stdout, again.stdout + again.stderr[-2000:]
    assert entries(handle["cluster1"])["team-a"]["previous"]["istio-injection"] == "disabled"


def test_relabel_moves_between_revisions_and_keeps_the_first_previous(mesh) -> None:
    """The upgrade's --move and --rollback: the record still says what was there before
    meshctl, whatever revisions came between."""
    handle, folder, _ = mesh
    k = kube.client(config.load(folder).clusters["cluster1"])
    moved = injection.relabel(k, ["team-a", "fresh"], "canary", "mesh1")
    assert len(moved) == 2, moved
    for ns in ("team-a", "fresh"):
        now = labels(handle["cluster1"], ns)
        assert now.get("istio.io/rev") == "canary" and "istio-injection" not in now, now
    assert injection.relabel(k, ["team-a", "fresh"], "canary", "mesh1") == []
    before = k.mutations
    assert injection.ensure(k, ["team-a", "fresh"], "canary", "mesh1") == []
    assert k.mutations == before  # converged: not one write
    back = injection.relabel(k, ["team-a", "fresh"], "", "mesh1")
    assert len(back) == 2, back
    assert labels(handle["cluster1"], "team-a") == {
        "istio-injection": "enabled", "team": "x", "kubernetes.io/metadata.name": "team-a"}
    recorded = injection.recorded_namespaces(install.recorded(k))
    assert recorded["team-a"]["previous"] == {"istio-injection": "disabled",
                                              "istio.io/rev": None}
    assert recorded["fresh"]["created"] is True


def test_teardown_puts_back_what_was_there(mesh) -> None:
    handle, folder, _ = mesh
    c1, c2 = handle["cluster1"], handle["cluster2"]
    down = run(handle, "teardown", *ARGS, "--clusters-dir", str(folder), "--yes")
    assert down.returncode == 0, down.stderr[-3000:]
    assert labels(c1, "team-a") == {"istio-injection": "disabled", "team": "x",
                                    "kubernetes.io/metadata.name": "team-a"}
    assert labels(c2, "default") == {"istio.io/rev": "old",
                                     "kubernetes.io/metadata.name": "default"}
    wait_gone(c1.core(), "fresh")
    out = flat(down.stdout)
    assert "cluster1: restored Namespace team-a: label istio-injection back to 'disabled'" \
        in out, out
    assert "cluster2: restored Namespace default: label istio.io/rev back to 'old'" in out
    assert "cluster1: removed Namespace fresh" in out
    assert_torn_down(handle, ["cluster1", "cluster2"])
    kubectl(c1, "delete", "namespace", "team-a")
