"""Clusters that already run an Istio meshctl did not install: found, refused, left alone.

Two sandbox clusters get Istio from plain ``istioctl install -y --set profile=minimal``
(the real istioctl, as a platform team would run it) and a user's VirtualService in a
namespace of their own.  Then, in this order:

- ``preflight`` exits 1 naming the istiod it found (revision, owning resource);
- a Helm release Secret written the way Helm writes it makes preflight name Helm;
- an in-cluster IstioOperator not named as meshctl's (its CRD created for the test:
  istioctl 1.24+ keeps none) makes preflight name it;
- ``preflight.foreign_istio`` (what bootstrap calls before its first write) FAILs the
  same clusters, and passes on clusters meshctl itself bootstrapped (the shared
  ``traffic`` sandbox);
- ``bootstrap`` exits 1 and sends ZERO mutating requests to either cluster (both
  clusters are reached through the counting proxy, for meshctl and istioctl alike),
  with and without ``--skip-preflight``;
- ``teardown --yes`` leaves that Istio, its CRDs and the VirtualService exactly as they
  were (uid and resourceVersion before and after).

What this cannot see: containers or traffic.  It sees objects, their versions and every
request meshctl and istioctl sent.
"""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from meshctl import config
from meshctl.preflight import runner as preflight
from tests.api_proxy import ApiProxy
from tests.factories import meshctl
from tests.sandbox_fixtures import Cluster, SandboxFactory, SandboxHandle
from tests.traffic_sandbox import bootstrapped

pytestmark = pytest.mark.sandbox

USER_NS = "shop"
GROUP, VERSION = "networking.istio.io", "v1"
HELM_SECRET = "sh.helm.release.v1.istiod.v1"


def istioctl(sb: SandboxHandle, c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(sb.bin_dir / "istioctl"), "--kubeconfig", str(c.kubeconfig),
                           "--context", c.context, *args], capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def theirs(sandbox_factory: SandboxFactory) -> SandboxHandle:
    """Two clusters with someone else's Istio and a user's VirtualService on each."""
    sb = sandbox_factory(2, nodes=1, cpu="8", memory="16Gi", label="foreign")
    for c in sb.clusters:
        installed = istioctl(sb, c, "install", "-y", "--set", "profile=minimal",
                             "--readiness-timeout", "5m")
        assert installed.returncode == 0, installed.stdout[-1500:] + installed.stderr[-1500:]
        core = c.core()
        if USER_NS not in {n.metadata.name for n in core.list_namespace().items}:
            core.create_namespace({"metadata": {"name": USER_NS}})
            k8s.CustomObjectsApi(c.kubernetes).create_namespaced_custom_object(
                GROUP, VERSION, USER_NS, "virtualservices", {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualService",
                    "metadata": {"name": "reviews", "labels": {"team": "shop"}},
                    "spec": {"hosts": ["reviews"],
                             "http": [{"route": [{"destination": {"host": "reviews"}}]}]}})
    return sb


def clusters_dir(tmp: Path, sb: SandboxHandle,
                 kubeconfigs: dict[str, Path] | None = None) -> Path:
    """The sandbox's own cluster files (two primaries, two networks), a CA of this test."""
    out = tmp / "clusters"
    out.mkdir()
    for c in sb.clusters:
        doc = yaml.safe_load((sb.clusters_dir / f"{c.name}.yaml").read_text())
        if kubeconfigs and c.name in kubeconfigs:
            doc["kubeconfig"] = str(kubeconfigs[c.name])
        (out / f"{c.name}.yaml").write_text(yaml.safe_dump(doc))
    mesh = yaml.safe_load((sb.clusters_dir / "mesh.yaml").read_text())
    mesh["ca"]["dir"] = str(tmp / "ca")
    (out / "mesh.yaml").write_text(yaml.safe_dump(mesh))
    return out


def preflight_json(sb: SandboxHandle, folder: Path) -> tuple[int, dict]:
    proc = meshctl("preflight", "--json", "--clusters-dir", str(folder), env=sb.env())
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def result(doc: dict, cluster: str, check: str) -> dict:
    for c in doc["clusters"]:
        if c["cluster"] == cluster:
            for r in c["results"]:
                if r["check"] == check:
                    return r
    raise AssertionError(f"no {check} result for {cluster}: {json.dumps(doc)[:3000]}")


# --- preflight ---------------------------------------------------------------------------


def test_preflight_names_the_istio_it_found(theirs: SandboxHandle, tmp_path: Path) -> None:
    folder = clusters_dir(tmp_path, theirs)
    code, doc = preflight_json(theirs, folder)
    assert (code, doc["exitCode"]) == (1, 1)
    for c in theirs.clusters:
        istio = result(doc, c.name, "istio")
        assert istio["status"] == "FAIL", istio
        assert "istiod meshctl did not install: Deployment istio-system/istiod (revision " \
            "default" in istio["message"], istio["message"]
        owner = c.apps().read_namespaced_deployment("istiod", "istio-system").metadata.labels \
            .get("install.operator.istio.io/owning-resource")
        assert (f"owning resource {owner}" if owner else "no owning resource") \
            in istio["message"]
        assert "meshctl does not adopt an existing Istio" in istio["hint"]
        assert "README 'Clusters that already run Istio'" in istio["hint"]
        webhook = result(doc, c.name, "injector-webhook")
        assert webhook["status"] == "FAIL" and "sidecar-injector" in webhook["message"]
        assert "mesh-config" not in {r["check"] for r in next(
            x for x in doc["clusters"] if x["cluster"] == c.name)["results"]}
    table = meshctl("preflight", "--clusters-dir", str(folder), env=theirs.env())
    assert table.returncode == 1 and "istiod meshctl did not install" in table.stdout


def helm_release_payload(chart: str, version: str) -> str:
    """What Helm 3 stores as ``data.release``: base64(gzip(JSON release)).  The API wants
    Secret data base64-encoded once more, as for any Secret."""
    release = {"name": "istiod", "namespace": "istio-system", "version": 1,
               "info": {"status": "deployed"},
               "chart": {"metadata": {"name": chart, "version": version,
                                      "appVersion": version, "home": "https://istio.io",
                                      "sources": ["https://github.com/istio/istio"]}},
               "manifest": "---\n# Source: istiod/templates/deployment.yaml\n"}
    helm_value = base64.b64encode(gzip.compress(json.dumps(release).encode()))
    return base64.b64encode(helm_value).decode()


def test_helm_release_secret_makes_preflight_name_helm(theirs: SandboxHandle,
                                                       tmp_path: Path) -> None:
    core = theirs[1].core()
    core.create_namespaced_secret("istio-system", {
        "metadata": {"name": HELM_SECRET, "labels": {
            "owner": "helm", "name": "istiod", "status": "deployed", "version": "1"}},
        "type": "helm.sh/release.v1",
        "data": {"release": helm_release_payload("istiod", "1.24.2")}})
    try:
        code, doc = preflight_json(theirs, clusters_dir(tmp_path, theirs))
        assert code == 1
        helm = result(doc, "cluster2", "istio-helm")
        assert helm["status"] == "FAIL"
        assert "Istio installed with Helm" in helm["message"]
        assert "Helm release istio-system/istiod (chart istiod 1.24.2, revision 1, " \
            "deployed)" in helm["message"]
        assert result(doc, "cluster1", "istio-helm")["status"] == "PASS"
    finally:
        core.delete_namespaced_secret(HELM_SECRET, "istio-system")


IOP_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "istiooperators.install.istio.io"},
    "spec": {"group": "install.istio.io", "scope": "Namespaced",
             "names": {"kind": "IstioOperator", "plural": "istiooperators",
                       "singular": "istiooperator", "shortNames": ["iop"]},
             "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {
                               "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}


def test_istio_operator_resource_is_named(theirs: SandboxHandle, tmp_path: Path) -> None:
    """The in-cluster IstioOperator that istioctl before 1.24 (or the operator) keeps:
    named unless it carries one of meshctl's names for that cluster."""
    c = theirs[0]
    ext = k8s.ApiextensionsV1Api(c.kubernetes)
    custom = k8s.CustomObjectsApi(c.kubernetes)
    ext.create_custom_resource_definition(IOP_CRD)
    try:
        for _ in range(60):  # the CRD is served once Established
            crd = ext.read_custom_resource_definition(IOP_CRD["metadata"]["name"])
            if any(x.type == "Established" and x.status == "True"
                   for x in crd.status.conditions or []):
                break
            time.sleep(0.5)
        for name in ("installed-state", "installed-state-meshctl-cluster1"):
            custom.create_namespaced_custom_object(
                "install.istio.io", "v1alpha1", "istio-system", "istiooperators",
                {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
                 "metadata": {"name": name}, "spec": {"profile": "minimal"}})
        code, doc = preflight_json(theirs, clusters_dir(tmp_path, theirs))
        iop = result(doc, "cluster1", "istio-operator")
        assert code == 1 and iop["status"] == "FAIL"
        assert iop["numbers"]["found"] == [
            "IstioOperator istio-system/installed-state (revision default, no owning "
            "resource)"]
        assert result(doc, "cluster2", "istio-operator")["status"] == "PASS"  # no CRD there
    finally:
        ext.delete_custom_resource_definition(IOP_CRD["metadata"]["name"])
        for _ in range(120):
            try:
                ext.read_custom_resource_definition(IOP_CRD["metadata"]["name"])
            except k8s.ApiException:
                break
            time.sleep(0.5)


def test_foreign_istio_contract_for_bootstrap(theirs: SandboxHandle, tmp_path: Path) -> None:
    """``preflight.foreign_istio``, as bootstrap calls it before its first write: every
    ownership result of every cluster, FAIL for what is not meshctl's."""
    cfg = config.load(clusters_dir(tmp_path, theirs))
    results = preflight.foreign_istio(cfg, ["cluster1", "cluster2"])
    assert [r.cluster for r in results] == ["cluster1"] * 5 + ["cluster2"] * 5
    failed = {(r.cluster, r.check) for r in results if r.status == "FAIL"}
    for name in ("cluster1", "cluster2"):
        assert {(name, "istio"), (name, "injector-webhook")} <= failed
    assert not any(r.check == "mesh-config" for r in results)  # no install record: not ours


def test_meshctls_own_install_is_not_foreign(sandbox_factory: SandboxFactory) -> None:
    """The other side: on clusters meshctl bootstrapped, every ownership check passes,
    including the live settings against the cluster files (no drift)."""
    mesh = bootstrapped(sandbox_factory)
    results = preflight.foreign_istio(config.load(mesh.clusters_dir))
    assert [r for r in results if r.status != "PASS"] == []
    checked = [r for r in results if r.check == "mesh-config"]
    assert len(checked) == 2
    for r in checked:
        assert set(r.numbers["checked"]) == {"meshID", "trustDomain", "network", "clusterName"}


# --- bootstrap writes nothing --------------------------------------------------------------


@pytest.fixture
def proxied(theirs: SandboxHandle, tmp_path: Path) -> Iterator[tuple[Path, dict[str, ApiProxy]]]:
    """Both clusters reached only through counting proxies (meshctl and istioctl)."""
    proxies, kubeconfigs = {}, {}
    for c in theirs.clusters:
        pki = theirs.state_dir / c.name / "pki"
        proxy = ApiProxy(upstream=c.api_url, ca_file=pki / "ca.crt",
                         cert_file=pki / "admin.crt", key_file=pki / "admin.key")
        proxy.start(tmp_path / f"proxy-{c.name}")
        proxies[c.name] = proxy
        kubeconfigs[c.name] = proxy.kubeconfig(tmp_path / f"{c.name}.kubeconfig", c.context)
    yield clusters_dir(tmp_path, theirs, kubeconfigs), proxies
    for proxy in proxies.values():
        proxy.stop()


@pytest.mark.parametrize("extra", [[], ["--skip-preflight"]], ids=["preflight",
                                                                    "skip-preflight"])
def test_bootstrap_refuses_with_zero_mutating_requests(
        theirs: SandboxHandle, proxied: tuple[Path, dict[str, ApiProxy]],
        extra: list[str]) -> None:
    folder, proxies = proxied
    run = meshctl("bootstrap", "--main", "cluster1", "--remote", "cluster2", *extra,
                  "--clusters-dir", str(folder), env=theirs.env())
    assert run.returncode == 1, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    assert "Traceback" not in run.stderr
    assert "istiod" in run.stderr and "meshctl did not install" in run.stderr, run.stderr
    for name, proxy in proxies.items():
        assert proxy.requests, f"{name}: bootstrap never read the cluster"
        assert proxy.mutations() == [], (name, proxy.mutations())


# --- teardown leaves it alone ----------------------------------------------------------


def snapshot(c: Cluster) -> dict[str, tuple[str, str]]:
    """uid and resourceVersion of their Istio, its CRDs and the user's VirtualService."""
    ext = k8s.ApiextensionsV1Api(c.kubernetes)
    adm = k8s.AdmissionregistrationV1Api(c.kubernetes)
    custom = k8s.CustomObjectsApi(c.kubernetes)
    core = c.core()
    out: dict[str, tuple[str, str]] = {}

    def put(key: str, meta: k8s.V1ObjectMeta | dict) -> None:
        if isinstance(meta, dict):
            out[key] = (meta["uid"], meta["resourceVersion"])
        else:
            out[key] = (meta.uid, meta.resource_version)

    put("Namespace istio-system", core.read_namespace("istio-system").metadata)
    put("Deployment istiod",
        c.apps().read_namespaced_deployment("istiod", "istio-system").metadata)
    put("ConfigMap istio", core.read_namespaced_config_map("istio", "istio-system").metadata)
    for crd in ext.list_custom_resource_definition().items:
        if crd.metadata.name.endswith("istio.io"):
            put(f"CRD {crd.metadata.name}", crd.metadata)
    for hook in adm.list_mutating_webhook_configuration().items:
        if "istio" in hook.metadata.name:
            out[f"MutatingWebhookConfiguration {hook.metadata.name}"] = (hook.metadata.uid, "")
    vs = custom.get_namespaced_custom_object(GROUP, VERSION, USER_NS, "virtualservices",
                                             "reviews")
    put("VirtualService shop/reviews", vs["metadata"])
    return out


def test_teardown_leaves_their_istio_crds_and_virtual_service(
        theirs: SandboxHandle, proxied: tuple[Path, dict[str, ApiProxy]]) -> None:
    folder, proxies = proxied
    before = {c.name: snapshot(c) for c in theirs.clusters}
    assert any(k.startswith("CRD ") for k in before["cluster1"])
    down = meshctl("teardown", "--main", "cluster1", "--remote", "cluster2", "--yes",
                   "--clusters-dir", str(folder), env=theirs.env())
    assert "Traceback" not in down.stderr, down.stderr[-2000:]
    after = {c.name: snapshot(c) for c in theirs.clusters}
    assert after == before, (down.stdout[-2000:], down.stderr[-2000:])
    # nothing here is meshctl's, so nothing was even asked to change
    for name, proxy in proxies.items():
        assert proxy.requests, f"{name}: teardown never read the cluster"
        assert proxy.mutations() == [], (name, proxy.mutations())
