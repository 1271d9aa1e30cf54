"""teardown and --force on shared clusters: other teams' objects and a record someone
edited (issue 21 items 2, 3, 4), on the sandbox, checked against what kubectl reports.

- Objects of kinds a fixed list never saw (NetworkPolicy, Role, RoleBinding, Job, PVC,
  Lease, an Istio VirtualService, a custom resource of another CRD) keep the
  ``istio-system`` meshctl created, each named with its kind; their uid and
  resourceVersion are the same afterwards, and a cluster holding nothing else still
  loses its ``istio-system`` (no false strangers from the real control plane, istiod
  or kwok).
- An install record someone edited (another mesh, a label meshctl never sets, another
  IstioOperator's name, …) stops teardown before anything is changed on any cluster
  (zero mutating requests through a counting proxy, for meshctl and istioctl alike);
  so does teardown run with another mesh's files.  The IstioOperator text in the
  record is never what istioctl uninstalls.
- A Gateway of meshctl's name that someone else made is refused in bootstrap's facts
  pass (zero writes), taken over with ``--force`` but left theirs, and kept by teardown.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from meshctl import ownership
from meshctl.mesh import install_record as rec
from tests.api_proxy import ApiProxy
from tests.factories import meshctl
from tests.test_bootstrap import (
    KUBECTL,
    assert_torn_down,
    clusters_dir,
    counting_proxies,
    run,
)
from tests.test_ownership import error_lines, kubectl

pytestmark = pytest.mark.sandbox

NS = "istio-system"
ARGS = ("--main", "cluster1", "--remote", "cluster2")


@pytest.fixture(scope="module")
def sb(sandbox_factory):
    """Two clusters this module damages on purpose (and cleans after each test)."""
    return sandbox_factory(2, nodes=1, cpu="8", memory="16Gi", label="hardening")


@pytest.fixture
def proxied(tmp_path: Path, sb) -> Iterator[tuple[Path, dict[str, ApiProxy]]]:
    proxies, kubeconfigs = counting_proxies(tmp_path, sb.clusters)
    yield clusters_dir(tmp_path, sb, {}, {"cluster2": "network2"}, kubeconfigs), proxies
    for proxy in proxies.values():
        proxy.stop()


def get_json(cluster, *args: str) -> dict:
    got = kubectl(cluster, "get", *args, "-o", "json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


def identity(cluster, ref: str, namespace: str = NS) -> tuple[str, str]:
    meta = get_json(cluster, ref, "-n", namespace)["metadata"]
    return meta["uid"], meta["resourceVersion"]


def kubectl_apply(cluster, docs: list[dict]) -> None:
    done = subprocess.run(
        [*kubectl_base(cluster), "apply", "-f", "-"], input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": docs}),
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def kubectl_base(cluster) -> list[str]:
    return [KUBECTL, "--kubeconfig", str(cluster.kubeconfig), "--context", cluster.context]


def istio_crds(cluster) -> list[str]:
    ext = k8s.ApiextensionsV1Api(cluster.kubernetes)
    return [c.metadata.name for c in ext.list_custom_resource_definition().items
            if c.metadata.name.endswith("istio.io")]


def clean(sb, *crds: str) -> None:
    """What a test left on purpose (istio-system kept, CRDs kept), then nothing of Istio."""
    for c in sb.clusters:
        kubectl(c, "delete", "namespace", NS, "team", "--ignore-not-found", "--wait=false")
        names = [*istio_crds(c), *crds]
        if names:
            kubectl(c, "delete", "crd", *names, "--ignore-not-found", "--wait=false")
    assert_torn_down(sb, ["cluster1", "cluster2"])


def wait_established(cluster, name: str) -> None:
    done = subprocess.run([*kubectl_base(cluster), "wait", "--for=condition=Established",
                           f"crd/{name}", "--timeout=60s"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- item 2: every namespaced kind, not a fixed list ---------------------------------------

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                 "openAPIV3Schema": {"type": "object",
                                     "x-kubernetes-preserve-unknown-fields": True}}}]}}


def team_objects() -> list[dict]:
    meta = {"namespace": NS, "labels": {"team": "platform"}}

    def m(name: str) -> dict:
        return {**meta, "name": name}

    return [
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": m("team-deny"), "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": m("team-reader"),
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": m("team-reader"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "team-reader"},
         "subjects": [{"kind": "User", "name": "alice"}]},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": m("team-backup"),
         "spec": {"suspend": True, "template": {"spec": {
             "restartPolicy": "Never",
             "containers": [{"name": "b", "image": "busybox"}]}}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": m("team-data"),
         "spec": {"accessModes": ["ReadWriteOnce"],
                  "resources": {"requests": {"storage": "1Gi"}}}},
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": m("team-lock"),
         "spec": {"holderIdentity": "team-controller"}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
         "metadata": m("team-vs"),
         "spec": {"hosts": ["reviews.shop.svc.cluster.local"],
                  "http": [{"route": [{"destination": {
                      "host": "reviews.shop.svc.cluster.local"}}]}]}},
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": m("team-widget"),
         "spec": {"size": 3}},
    ]


def ref(doc: dict) -> str:
    group = doc["apiVersion"].rpartition("/")[0]
    plural = {"NetworkPolicy": "networkpolicies", "PersistentVolumeClaim":
              "persistentvolumeclaims"}.get(doc["kind"], doc["kind"].lower() + "s")
    return f"{plural}.{group}/{doc['metadata']['name']}" if group else \
        f"{plural}/{doc['metadata']['name']}"


def test_istio_system_with_other_teams_objects_is_kept(tmp_path: Path, sb) -> None:
    folder = clusters_dir(tmp_path, sb, {}, {"cluster2": "network2"})
    c1 = sb["cluster1"]
    try:
        up = run(sb, "bootstrap", *ARGS, "--clusters-dir", str(folder))
        assert up.returncode == 0, up.stderr[-3000:]
        kubectl_apply(c1, [WIDGET_CRD])
        wait_established(c1, "widgets.example.com")
        objects = team_objects()
        kubectl_apply(c1, objects)
        before = {ref(d): identity(c1, ref(d)) for d in objects}
        ns_before = get_json(c1, "namespace", NS)["metadata"]["uid"]

        down = run(sb, "teardown", *ARGS, "--yes", "--clusters-dir", str(folder))
        assert down.returncode == 0, down.stderr[-3000:]
        flat = " ".join(down.stdout.split())  # the report folds long lines
        head = "cluster1: kept Namespace istio-system: it holds objects meshctl did not make ("
        assert flat.count(head) == 1, down.stdout
        kept = flat.split(head, 1)[1].split(")", 1)[0]
        for doc in objects:
            assert f"{doc['kind']} {doc['metadata']['name']}" in kept, (doc, kept)
        assert "Istio CRDs: custom resources meshctl did not make use them (VirtualService " \
            "istio-system/team-vs" in flat, down.stdout
        assert get_json(c1, "namespace", NS)["metadata"]["uid"] == ns_before
        assert {ref(d): identity(c1, ref(d)) for d in objects} == before
        # a cluster holding only meshctl's (and istiod's, kwok's, Kubernetes') loses it
        assert "cluster2: removed Namespace istio-system" in flat, down.stdout
        assert kubectl(sb["cluster2"], "get", "namespace", NS).returncode != 0
    finally:
        clean(sb, "widgets.example.com")


BROKEN_API = {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
              "metadata": {"name": "v1.broken.example.com"},
              "spec": {"group": "broken.example.com", "version": "v1",
                       "groupPriorityMinimum": 100, "versionPriority": 10,
                       "insecureSkipTLSVerify": True,
                       "service": {"name": "nothing-here", "namespace": "default"}}}


def test_kinds_that_cannot_be_listed_keep_istio_system(tmp_path: Path, sb) -> None:
    """An aggregated API that does not answer may serve namespaced kinds in istio-system
    that nobody can see: not knowing keeps the namespace, and the reason is printed."""
    folder = clusters_dir(tmp_path, sb, {}, {"cluster2": "network2"})
    c1 = sb["cluster1"]
    try:
        up = run(sb, "bootstrap", *ARGS, "--clusters-dir", str(folder))
        assert up.returncode == 0, up.stderr[-3000:]
        kubectl_apply(c1, [BROKEN_API])
        uid = get_json(c1, "namespace", NS)["metadata"]["uid"]
        down = meshctl("teardown", *ARGS, "--yes", "--clusters-dir", str(folder),
                       env={**sb.env(), "MESHCTL_API_DEADLINE": "3"})
        assert down.returncode == 0, down.stderr[-3000:]
        flat = " ".join(down.stdout.split())
        assert "cluster1: kept Namespace istio-system: cannot tell what it holds (discovery " \
            "failed: " in flat and "broken.example.com" in flat, down.stdout
        assert get_json(c1, "namespace", NS)["metadata"]["uid"] == uid
        assert "cluster2: removed Namespace istio-system" in flat, down.stdout
    finally:
        kubectl(c1, "delete", "apiservice", "v1.broken.example.com", "--ignore-not-found")
        clean(sb)


# --- item 3: the install record is untrusted input ----------------------------------------


def set_data(key: str, value: str | None) -> Callable[[dict], None]:
    def change(cm: dict) -> None:
        if value is None:
            cm["data"].pop(key, None)
        else:
            cm["data"][key] = value
    return change


def set_operator(text: str) -> Callable[[dict], None]:
    def change(cm: dict) -> None:
        cm["data"][rec.OPERATOR_PREFIX + rec.CONTROL_PLANE] = text
        cm["data"][rec.CONTROL_PLANE] = rec.digest(text)
    return change


def other_mesh(cm: dict) -> None:
    cm["data"][rec.MESH] = "mesh2"
    cm["metadata"]["labels"][ownership.MESH] = "mesh2"


def binary(cm: dict) -> None:
    cm["binaryData"] = {"blob": "AAAA"}


VICTIM_IOP = json.dumps({"apiVersion": rec.IOP_API_VERSION, "kind": "IstioOperator",
                         "metadata": {"name": "victim", "namespace": "team"}})
PSA = json.dumps({"labels": {"pod-security.kubernetes.io/enforce": {
    "previous": "privileged", "manager": "kube-apiserver"}}})
# (id, change to cluster2's record, words of the one error line)
BAD_RECORDS: list[tuple[str, Callable[[dict], None], str]] = [
    ("other-mesh", other_mesh, "cluster2: meshctl installed it for mesh 'mesh2', not 'mesh1'"),
    ("pod-security-label", set_data(rec.FOREIGN_FIELDS, PSA), "which meshctl never sets"),
    ("victim-operator", set_operator(VICTIM_IOP),
     "is not meshctl's IstioOperator istio-system/meshctl-cluster2"),
    ("operator-text-edited", set_data(rec.OPERATOR_PREFIX + rec.CONTROL_PLANE, "kind: x"),
     "does not match its recorded hash"),
    ("unknown-key", set_data("purge", "true"), "key 'purge' is not a key meshctl writes"),
    ("namespace-uid", set_data(rec.NAMESPACE, '{"created": true, "uid": "x y"}'),
     "uid is not a Kubernetes uid"),
    ("crds", set_data(rec.CRDS, "all"), "key 'crds' is not installed or existing"),
    ("mesh-missing", set_data(rec.MESH, None), "key 'mesh' is missing"),
    ("binary-data", binary, "binary or not text"),
]


def test_edited_records_stop_teardown_before_any_change(
        tmp_path: Path, sb, proxied: tuple[Path, dict[str, ApiProxy]]) -> None:
    folder, proxies = proxied
    c2 = sb["cluster2"]
    core = c2.core()
    try:
        up = run(sb, "bootstrap", *ARGS, "--clusters-dir", str(folder))
        assert up.returncode == 0, up.stderr[-3000:]
        # someone else's Istio component that a forged operator name would point istioctl at
        kubectl(c2, "create", "namespace", "team")
        victim = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
            "name": "victim-istiod", "namespace": "team", "labels": {
                ownership.OWNING_RESOURCE: "victim",
                "install.operator.istio.io/owning-resource-namespace": "team",
                "operator.istio.io/component": "Pilot"}},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "v"}},
                     "template": {"metadata": {"labels": {"app": "v"}}, "spec": {
                         "containers": [{"name": "v", "image": "busybox"}]}}}}
        kubectl_apply(c2, [victim])
        victim_id = identity(c2, "deployment/victim-istiod", "team")
        original = core.read_namespaced_config_map("meshctl-install", NS)
        good = k8s.ApiClient().sanitize_for_serialization(original)
        failures = []
        for case, change, needle in BAD_RECORDS:
            cm = json.loads(json.dumps(good))
            for key in ("resourceVersion", "managedFields", "creationTimestamp", "uid"):
                cm["metadata"].pop(key, None)
            change(cm)
            core.replace_namespaced_config_map("meshctl-install", NS, cm)
            for p in proxies.values():
                p.reset()
            down = run(sb, "teardown", *ARGS, "--yes", "--clusters-dir", str(folder))
            lines = error_lines(down)
            ok = (down.returncode == 1 and len(lines) == 1 and needle in lines[0]
                  and "nothing was removed on any cluster" in lines[0]
                  and "Traceback" not in down.stderr
                  and all(p.mutations() == [] for p in proxies.values()))
            if not ok:
                failures.append((case, down.returncode, lines or down.stderr[-500:],
                                 {n: p.mutations()[:3] for n, p in proxies.items()}))
            assert identity(c2, "deployment/victim-istiod", "team") == victim_id, case
        restored = json.loads(json.dumps(good))
        for key in ("resourceVersion", "managedFields", "creationTimestamp", "uid"):
            restored["metadata"].pop(key, None)
        core.replace_namespaced_config_map("meshctl-install", NS, restored)
        assert not failures, failures

        # teardown with another mesh's files: refused the same way
        mesh_file = folder / "mesh.yaml"
        text = mesh_file.read_text()
        mesh_file.write_text(text.replace("meshID: mesh1", "meshID: mesh2"))
        for p in proxies.values():
            p.reset()
        other = run(sb, "teardown", *ARGS, "--yes", "--clusters-dir", str(folder))
        mesh_file.write_text(text)
        lines = error_lines(other)
        assert other.returncode == 1 and len(lines) == 1, other.stderr[-2000:]
        assert "cluster1: meshctl installed it for mesh 'mesh1', not 'mesh2'" in lines[0]
        assert "cluster2: meshctl installed it for mesh 'mesh1', not 'mesh2'" in lines[0]
        for name, p in proxies.items():
            assert p.mutations() == [], (name, p.mutations())

        # a record whose operator text is meshctl's by name but would make istioctl read
        # charts from elsewhere: valid shape, and never given to istioctl
        text = good["data"][rec.OPERATOR_PREFIX + rec.CONTROL_PLANE]
        doc = yaml.safe_load(text)
        doc["spec"]["installPackagePath"] = str(tmp_path / "no-such-charts")
        set_operator(json.dumps(doc))(restored)
        core.replace_namespaced_config_map("meshctl-install", NS, restored)
        down = run(sb, "teardown", *ARGS, "--yes", "--clusters-dir", str(folder))
        assert down.returncode == 0, down.stderr[-3000:]
        assert "istioctl uninstall -f meshctl-cluster2" in " ".join(down.stdout.split())
        assert identity(c2, "deployment/victim-istiod", "team") == victim_id
    finally:
        clean(sb)


# --- item 4: --force takes fields, never the object -----------------------------------------

GATEWAY_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "gateways.networking.istio.io"},
    "spec": {"group": "networking.istio.io", "scope": "Namespaced",
             "names": {"kind": "Gateway", "plural": "gateways", "singular": "gateway"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                 "openAPIV3Schema": {"type": "object",
                                     "x-kubernetes-preserve-unknown-fields": True}}}]}}
THEIR_GATEWAY = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                 "metadata": {"name": "cross-network-gateway", "namespace": NS,
                              "labels": {"team": "edge"}},
                 "spec": {"selector": {"istio": "their-gateway"},
                          "servers": [{"port": {"number": 8443, "name": "tls",
                                                "protocol": "TLS"},
                                       "tls": {"mode": "AUTO_PASSTHROUGH"},
                                       "hosts": ["*.team.example"]}]}}


def test_force_never_makes_their_gateway_meshctls(
        tmp_path: Path, sb, proxied: tuple[Path, dict[str, ApiProxy]]) -> None:
    folder, proxies = proxied
    c1 = sb["cluster1"]
    try:
        kubectl(c1, "create", "namespace", NS)
        kubectl_apply(c1, [GATEWAY_CRD])
        wait_established(c1, GATEWAY_CRD["metadata"]["name"])
        kubectl_apply(c1, [THEIR_GATEWAY])
        gw = "gateways.networking.istio.io/cross-network-gateway"
        uid = identity(c1, gw)[0]
        for p in proxies.values():
            p.reset()

        refused = run(sb, "bootstrap", *ARGS, "--clusters-dir", str(folder))
        lines = error_lines(refused)
        assert refused.returncode == 1 and len(lines) == 1, refused.stderr[-3000:]
        assert "cluster1: Gateway istio-system/cross-network-gateway exists and was not " \
            "made by meshctl" in lines[0] and "nothing was changed" in lines[0]
        for name, p in proxies.items():  # facts first: refused before istioctl ran
            assert p.mutations() == [], (name, p.mutations()[:5])

        forced = run(sb, "bootstrap", *ARGS, "--force", "--clusters-dir", str(folder))
        assert forced.returncode == 0, forced.stderr[-3000:]
        assert "still not meshctl's" in " ".join(forced.stderr.split()), forced.stderr[-3000:]
        live = get_json(c1, gw, "-n", NS)
        assert live["metadata"]["uid"] == uid
        assert live["metadata"]["labels"] == {"team": "edge"}, "never given meshctl's labels"
        assert live["spec"]["selector"] == {"istio": "eastwestgateway"}  # fields taken over

        down = run(sb, "teardown", *ARGS, "--yes", "--clusters-dir", str(folder))
        assert down.returncode == 0, down.stderr[-3000:]
        flat = " ".join(down.stdout.split())
        assert "cluster1: kept Gateway istio-system/cross-network-gateway: meshctl did not " \
            "make it" in flat, down.stdout
        assert get_json(c1, gw, "-n", NS)["metadata"]["uid"] == uid
        assert "cluster2: removed Gateway istio-system/cross-network-gateway" in flat
    finally:
        clean(sb)
