"""Certificate lifecycle on real API servers: push, status, intermediate and root rotation.

One two-cluster sandbox of its own (label ``certs``: these tests overwrite
``istio-system/cacerts``), one-node clusters to stay small.  Every test gets its own
CA folder (a copy of the sandbox's clusters dir with ``ca.dir`` in ``tmp_path``) and
starts from no ``cacerts`` on either cluster.  Chains are checked with ``openssl
verify`` and with cryptography's verifier, against the ``root-cert.pem`` read back
from each cluster's live Secret, not against local files.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from kubernetes import client as k8s

from meshctl import config, kube
from meshctl.ca import cacerts, certs, pki
from tests.factories import meshctl
from tests.sandbox_fixtures import SandboxFactory, SandboxHandle

pytestmark = pytest.mark.sandbox

CLUSTERS = ("cluster1", "cluster2")


@pytest.fixture(scope="module")
def certs_sandbox(sandbox_factory: SandboxFactory) -> SandboxHandle:
    return sandbox_factory(2, nodes=1, cpu="2", memory="4Gi", label="certs")


@pytest.fixture
def mesh(certs_sandbox: SandboxHandle, tmp_path: Path) -> Mesh:
    """A clusters dir whose ca.dir is this test's own, and both clusters without cacerts."""
    folder = tmp_path / "clusters"
    shutil.copytree(certs_sandbox.clusters_dir, folder)
    doc = yaml.safe_load((folder / "mesh.yaml").read_text())
    doc["ca"]["dir"] = str(tmp_path / "ca")
    (folder / "mesh.yaml").write_text(yaml.safe_dump(doc))
    for cl in certs_sandbox.clusters:
        try:
            cl.core().delete_namespaced_secret("cacerts", "istio-system")
        except k8s.ApiException as e:
            assert e.status == 404
    return Mesh(certs_sandbox, folder, tmp_path)


class Mesh:
    """The test's view: run meshctl (keeping every output), read live Secrets, make leaves."""

    def __init__(self, sandbox: SandboxHandle, folder: Path, tmp: Path) -> None:
        self.sandbox, self.folder, self.tmp = sandbox, folder, tmp
        self.cfg = config.load(folder)
        self.ca = self.cfg.mesh.ca.dir
        self.outputs: list[str] = []

    def run(self, *args: str,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = meshctl(*args, "--clusters-dir", str(self.folder), env=env)
        self.outputs += [result.stdout, result.stderr]
        return result

    def set_ca(self, **values: object) -> None:
        """Change ``ca`` keys of this test's mesh.yaml (e.g. a short workloadCertTTL)."""
        doc = yaml.safe_load((self.folder / "mesh.yaml").read_text())
        doc["ca"].update(values)
        (self.folder / "mesh.yaml").write_text(yaml.safe_dump(doc))
        self.cfg = config.load(self.folder)

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def status(self) -> tuple[int, dict]:
        result = self.run("certs.status", "--json")
        return result.returncode, json.loads(result.stdout)

    def secret(self, cluster: str) -> k8s.V1Secret:
        return self.sandbox[cluster].core().read_namespaced_secret("cacerts", "istio-system")

    def live(self, cluster: str) -> dict[str, bytes]:
        return {k: base64.b64decode(v) for k, v in self.secret(cluster).data.items()}

    def bundle(self, cluster: str) -> certs.Bundle:
        return certs.bundle_from_files(cluster, self.live(cluster))

    def root(self) -> certs.RootCA:
        return certs.load_root(self.cfg.mesh.ca)

    def push(self, bundle: certs.Bundle) -> str:
        """Replace a cluster's cacerts directly (the way an operator's mistake would)."""
        k = kube.client(self.cfg.clusters[bundle.cluster])
        return cacerts.apply(k, bundle, mesh_id=self.cfg.mesh.mesh_id, force=True,
                             backup_dir=self.tmp / "test-backups")


def openssl_verify(root_pem: bytes, intermediate: x509.Certificate, leaf: x509.Certificate,
                   where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    (where / "roots.pem").write_bytes(root_pem)
    (where / "int.pem").write_bytes(pki.cert_pem(intermediate))
    (where / "leaf.pem").write_bytes(pki.cert_pem(leaf))
    result = subprocess.run(["openssl", "verify", "-CAfile", str(where / "roots.pem"),
                             "-untrusted", str(where / "int.pem"), str(where / "leaf.pem")],
                            capture_output=True, text=True, check=False)
    return result.returncode == 0 and result.stdout.strip().endswith("leaf.pem: OK")


def crypto_verify(root_pem: bytes, intermediate: x509.Certificate,
                  leaf: x509.Certificate) -> bool:
    verifier = PolicyBuilder().store(Store(pki.load_certs(root_pem))).build_client_verifier()
    try:
        verifier.verify(leaf, [intermediate])
    except VerificationError:
        return False
    return True


def leaf_of(bundle: certs.Bundle) -> x509.Certificate:
    """A workload certificate as istiod would issue it from this intermediate (1h TTL)."""
    return certs.workload_cert(bundle, namespace="sample", service_account="reviews", hours=1)


# --- issue and status ------------------------------------------------------------------


def test_issue_pushes_verifiable_cacerts_and_status_names_a_tampered_cluster(mesh: Mesh) -> None:
    mesh.ok("certs.init")
    out = mesh.ok("certs.issue")
    assert out.count("Secret istio-system/cacerts created") == 2, out
    root = mesh.root()
    fp = pki.fingerprint(root.cert)
    for name in CLUSTERS:
        live = mesh.live(name)
        assert set(live) == set(certs.CACERTS_FILES)
        d = mesh.tmp / "verify" / name
        d.mkdir(parents=True)
        for f, data in live.items():
            (d / f).write_bytes(data)
        (d / "local-root.pem").write_bytes(pki.cert_pem(root.cert))
        for ca_file in ("root-cert.pem", "local-root.pem"):
            r = subprocess.run(["openssl", "verify", "-CAfile", str(d / ca_file),
                                str(d / "ca-cert.pem")], capture_output=True, text=True)
            assert r.returncode == 0 and "ca-cert.pem: OK" in r.stdout, r.stdout + r.stderr
        assert live["cert-chain.pem"] == live["ca-cert.pem"] + pki.cert_pem(root.cert)
        assert live == {f: (mesh.ca / name / f).read_bytes() for f in certs.CACERTS_FILES}

    code, doc = mesh.status()
    assert code == 0 and doc["schema"] == "meshctl.certs.status/v1" and doc["level"] == "PASS"
    assert doc["commonRoot"] == fp and doc["rotation"] is None
    for c in doc["clusters"]:
        assert c["roots"] == [fp] and c["chainVerifies"] and c["matchesLocal"], c
        assert c["intermediate"]["subject"] == f"L={c['name']},CN=Intermediate CA,O=meshctl"
        assert 729 < c["intermediate"]["daysLeft"] <= 730

    # same content again: no write at all
    before = {n: mesh.secret(n).metadata.resource_version for n in CLUSTERS}
    out = mesh.ok("certs.issue")
    assert out.count("unchanged") == 2
    assert {n: mesh.secret(n).metadata.resource_version for n in CLUSTERS} == before

    # cluster2 tampered with a bundle from another root
    other_root = certs.make_root(mesh.cfg.mesh.ca)
    mesh.push(certs.make_intermediate(other_root, "cluster2", mesh.cfg.mesh.ca))
    code, doc = mesh.status()
    assert code == 1 and doc["level"] == "FAIL"
    by_name = {c["name"]: c for c in doc["clusters"]}
    assert by_name["cluster1"]["level"] == "PASS"
    assert by_name["cluster2"]["level"] == "FAIL" and not by_name["cluster2"]["chainVerifies"]
    assert doc["commonRoot"] is None
    assert any(ch["level"] == "FAIL" and "cluster2 does not trust root" in ch["message"]
               for ch in doc["checks"]), doc["checks"]
    table = mesh.run("certs.status")
    assert table.returncode == 1 and "cluster2" in table.stdout and "FAIL" in table.stdout

    # facts first: issuing for all clusters writes nowhere while one holds another CA
    mesh.sandbox["cluster1"].core().delete_namespaced_secret("cacerts", "istio-system")
    all_refused = mesh.run("certs.issue")
    assert all_refused.returncode == 1 and "nothing was pushed" in all_refused.stderr
    with pytest.raises(k8s.ApiException):
        mesh.secret("cluster1")  # not re-created before the refusal
    mesh.ok("certs.issue", "--cluster", "cluster1")

    # issue refuses to overwrite it (exit 1, one line, saying what differs) ...
    refused = mesh.run("certs.issue", "--cluster", "cluster2")
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 1 and len(lines) == 1, refused.stderr
    assert "cluster2" in lines[0] and "root" in lines[0] and "serial" in lines[0]
    assert "--force" in lines[0] and "Traceback" not in refused.stderr
    # ... unless --force, which saves the tampered Secret first, 0600
    out = mesh.ok("certs.issue", "--cluster", "cluster2", "--force")
    assert "replaced (previous saved to" in out
    saved = list((mesh.ca / "backups" / "cluster2").glob("cacerts-*.yaml"))
    assert len(saved) == 1 and stat.S_IMODE(os.stat(saved[0]).st_mode) == 0o600
    kept = yaml.safe_load(saved[0].read_text())
    assert base64.b64decode(kept["data"]["root-cert.pem"]) == pki.cert_pem(other_root.cert)
    code, doc = mesh.status()
    assert code == 0 and doc["level"] == "PASS"
    assert_no_key_material(mesh)


def test_expired_intermediate_fails_status(mesh: Mesh) -> None:
    mesh.ok("certs.init")
    mesh.ok("certs.issue")
    s = mesh.cfg.mesh.ca
    expired = certs.make_intermediate(mesh.root(), "cluster1", s, days=1,
                                      not_before=datetime.now(UTC) - timedelta(days=2))
    certs.write_bundle(certs.cluster_dir(s, "cluster1"), expired)  # local matches live
    mesh.push(expired)
    code, doc = mesh.status()
    one = next(c for c in doc["clusters"] if c["name"] == "cluster1")
    assert code == 1 and doc["level"] == "FAIL" and one["level"] == "FAIL"
    assert any("expired" in ch["message"] for ch in one["checks"] if ch["level"] == "FAIL")
    assert one["intermediate"]["daysLeft"] < 0 and one["matchesLocal"]
    # soon to expire is a WARN, not a FAIL
    soon = certs.make_intermediate(mesh.root(), "cluster1", s, days=10)
    certs.write_bundle(certs.cluster_dir(s, "cluster1"), soon)
    mesh.push(soon)
    code, doc = mesh.status()
    assert code == 0 and doc["level"] == "WARN"


# --- intermediate rotation -------------------------------------------------------------


def test_rotate_intermediate_keeps_root_and_backs_up(mesh: Mesh) -> None:
    mesh.ok("certs.init")
    mesh.ok("certs.issue")
    before = mesh.bundle("cluster2")
    out = mesh.ok("certs.rotate", "--cluster", "cluster2")
    after = mesh.bundle("cluster2")
    assert after.ca_cert.serial_number != before.ca_cert.serial_number
    assert after.roots == before.roots == (mesh.root().cert,)
    assert certs.issued_by(after.ca_cert, mesh.root().cert)
    assert mesh.bundle("cluster1").ca_cert.serial_number != after.ca_cert.serial_number
    assert "reloads plug-in certificates" in out and "TTL" in out
    assert f"was {before.ca_cert.serial_number:x}" in out
    # old one kept: the previous Secret and the previous local files
    saved = list((mesh.ca / "backups" / "cluster2").glob("cacerts-*.yaml"))
    assert len(saved) == 1 and stat.S_IMODE(os.stat(saved[0]).st_mode) == 0o600
    old_data = yaml.safe_load(saved[0].read_text())["data"]
    assert base64.b64decode(old_data["ca-cert.pem"]) == pki.cert_pem(before.ca_cert)
    local_backups = list((mesh.ca / "backups").glob("cluster2.backup-*"))
    assert len(local_backups) == 1
    assert certs.load_bundle(local_backups[0], "cluster2").ca_cert == before.ca_cert
    assert stat.S_IMODE(os.stat(local_backups[0] / "ca-key.pem").st_mode) == 0o600
    code, doc = mesh.status()
    assert code == 0 and doc["level"] == "PASS"
    # usage errors: exit 2, one line
    for args in (("certs.rotate",), ("certs.rotate", "--step", "2"),
                 ("certs.rotate", "--root", "--cluster", "cluster1", "--step", "1"),
                 ("certs.rotate", "--root", "--step", "4"),
                 ("certs.rotate", "--cluster", "nosuch")):
        bad = mesh.run(*args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


# --- root rotation ---------------------------------------------------------------------


def _check_trust(mesh: Mesh, good: list[tuple[str, certs.Bundle, x509.Certificate]],
                 bad: list[tuple[str, certs.Bundle, x509.Certificate]], label: str) -> None:
    """Every ``good`` leaf verifies against every cluster's live root-cert.pem, no ``bad`` one."""
    for target in CLUSTERS:
        roots = mesh.live(target)["root-cert.pem"]
        for i, (what, bundle, leaf) in enumerate(good + bad):
            expected = i < len(good)
            where = mesh.tmp / "leaves" / label / target / str(i)
            got_openssl = openssl_verify(roots, bundle.ca_cert, leaf, where)
            got_crypto = crypto_verify(roots, bundle.ca_cert, leaf)
            assert got_openssl is expected and got_crypto is expected, (
                label, target, what, expected, got_openssl, got_crypto)


def test_root_rotation_no_downtime(mesh: Mesh) -> None:
    mesh.ok("certs.init")
    mesh.ok("certs.issue")
    old_root = mesh.root()
    old_root_key = pki.key_pem(old_root.key)
    gen0 = {n: mesh.bundle(n) for n in CLUSTERS}
    old_leaves = [(f"{n} old intermediate", gen0[n], leaf_of(gen0[n])) for n in CLUSTERS]
    _check_trust(mesh, old_leaves, [], "before")

    # out of order before anything started: exit 2 naming step 1
    for step in ("2", "3"):
        r = mesh.run("certs.rotate", "--root", "--step", step)
        assert r.returncode == 2 and "--step 1" in r.stderr, r.stderr

    # step 1: both roots everywhere, intermediates unchanged
    out = mesh.ok("certs.rotate", "--root", "--step", "1")
    assert "step 1 done" in out
    state = json.loads((mesh.ca / "rotation.json").read_text())
    assert state["step"] == 1 and state["complete"] and state["old_root"] == pki.fingerprint(
        old_root.cert)
    new_root_fp = state["new_root"]
    for n in CLUSTERS:
        b = mesh.bundle(n)
        assert [pki.fingerprint(r) for r in b.roots] == [state["old_root"], new_root_fp]
        assert b.ca_cert == gen0[n].ca_cert
        assert mesh.live(n)["cert-chain.pem"] == pki.cert_pem(b.ca_cert) + pki.cert_pem(
            old_root.cert)
    _check_trust(mesh, old_leaves, [], "step1")
    code, doc = mesh.status()
    assert code == 0, doc
    assert doc["rotation"]["inProgress"] and doc["rotation"]["done"] == 1
    assert doc["rotation"]["next"] == "certs.rotate --root --step 2"
    assert [c["rotationStage"] for c in doc["clusters"]] == [1, 1]
    assert "root rotation: step 1 of 3 done" in mesh.ok("certs.status")

    # twice: a no-op (no write); out of order: refused naming step 2; issue refused
    versions = {n: mesh.secret(n).metadata.resource_version for n in CLUSTERS}
    assert "already done" in mesh.ok("certs.rotate", "--root", "--step", "1")
    assert {n: mesh.secret(n).metadata.resource_version for n in CLUSTERS} == versions
    r = mesh.run("certs.rotate", "--root", "--step", "3")
    assert r.returncode == 2 and "--step 2" in r.stderr, r.stderr
    for args in (("certs.issue",), ("certs.rotate", "--cluster", "cluster1"),
                 ("certs.init", "--force")):
        r = mesh.run(*args)
        assert r.returncode == 2 and "rotation is in progress" in r.stderr, (args, r.stderr)
    assert {n: mesh.secret(n).metadata.resource_version for n in CLUSTERS} == versions

    # step 2: new intermediates under the new root, root-cert.pem still both
    out = mesh.ok("certs.rotate", "--root", "--step", "2")
    assert "reloads plug-in certificates" in out
    assert "UTC (workload certificates renew within 24h00m (ca.workloadCertTTL))" in out
    step2_done = json.loads((mesh.ca / "rotation.json").read_text())["step2_finished"]
    assert abs(datetime.fromisoformat(step2_done) - datetime.now(UTC)) < timedelta(minutes=1)
    gen1 = {n: mesh.bundle(n) for n in CLUSTERS}
    new_root = certs.load_root(config.CASettings(dir=mesh.ca / "next-root"))
    assert pki.fingerprint(new_root.cert) == new_root_fp
    for n in CLUSTERS:
        b = gen1[n]
        assert b.ca_cert != gen0[n].ca_cert and certs.issued_by(b.ca_cert, new_root.cert)
        assert b.roots == (old_root.cert, new_root.cert)
        assert mesh.live(n)["cert-chain.pem"] == pki.cert_pem(b.ca_cert) + pki.cert_pem(
            new_root.cert)
    new_leaves = [(f"{n} new intermediate", gen1[n], leaf_of(gen1[n])) for n in CLUSTERS]
    _check_trust(mesh, old_leaves + new_leaves, [], "step2")
    code, doc = mesh.status()
    assert code == 0 and [c["rotationStage"] for c in doc["clusters"]] == [2, 2], doc
    r = mesh.run("certs.rotate", "--root", "--step", "1")
    assert r.returncode == 2 and "--step 3" in r.stderr, r.stderr
    versions = {n: mesh.secret(n).metadata.resource_version for n in CLUSTERS}
    assert "already done" in mesh.ok("certs.rotate", "--root", "--step", "2")
    assert {n: mesh.secret(n).metadata.resource_version for n in CLUSTERS} == versions

    # step 3 at once: refused while old-chain workload certificates may live (24h default)
    state_before = (mesh.ca / "rotation.json").read_bytes()
    early = mesh.run("certs.rotate", "--root", "--step", "3")
    assert early.returncode == 1, early.stderr
    [line] = [x for x in early.stderr.splitlines() if x.strip()]
    assert "step 3 refused: 23h59m left" in line or "step 3 refused: 24h00m left" in line, line
    assert "(ca.workloadCertTTL)" in line and "--force" in line
    assert {n: mesh.secret(n).metadata.resource_version for n in CLUSTERS} == versions
    assert (mesh.ca / "rotation.json").read_bytes() == state_before
    _check_trust(mesh, old_leaves + new_leaves, [], "step3-refused")
    mesh.set_ca(workloadCertTTL="2s")  # a mesh whose workload certificates live 2 s
    time.sleep(2.1)

    # step 3: old root dropped; only new-chain leaves verify; old root archived
    out = mesh.ok("certs.rotate", "--root", "--step", "3")
    assert "archived" in out
    for n in CLUSTERS:
        b = mesh.bundle(n)
        assert b.roots == (new_root.cert,) and b.ca_cert == gen1[n].ca_cert
    _check_trust(mesh, new_leaves, old_leaves, "step3")
    assert mesh.root().cert == new_root.cert and not (mesh.ca / "next-root").exists()
    archived = sorted((mesh.ca / "backups").glob("root.backup-*"))  # the one backup layout
    assert len(archived) == 1
    assert (archived[0] / "root-key.pem").read_bytes() == old_root_key
    assert stat.S_IMODE(os.stat(archived[0] / "root-key.pem").st_mode) == 0o600
    code, doc = mesh.status()
    assert code == 0 and doc["level"] == "PASS" and doc["commonRoot"] == new_root_fp
    assert doc["rotation"]["inProgress"] is False
    versions = {n: mesh.secret(n).metadata.resource_version for n in CLUSTERS}
    assert "already done" in mesh.ok("certs.rotate", "--root", "--step", "3")
    assert {n: mesh.secret(n).metadata.resource_version for n in CLUSTERS} == versions
    r = mesh.run("certs.rotate", "--root", "--step", "2")
    assert r.returncode == 2 and "--step 1" in r.stderr, r.stderr
    # after the rotation, ordinary issuing works again, under the new root
    assert mesh.ok("certs.issue").count("unchanged") == 2

    assert_no_key_material(mesh, extra_keys=[old_root_key])


def test_interrupted_step_is_finished_by_a_rerun(mesh: Mesh) -> None:
    """A step that stopped half-way (cluster1 done, cluster2 not) completes on re-run."""
    from meshctl.ca import rotation

    mesh.ok("certs.init")
    mesh.ok("certs.issue")
    mesh.ok("certs.rotate", "--root", "--step", "1")
    s = mesh.cfg.mesh.ca
    state = rotation.load_state(s)
    old, new = rotation.load_roots(s, state)
    # what step 2 does for cluster1, then "crash" before cluster2
    rotation.save_state(s, rotation.State(**{**state.to_json(), "clusters": state.clusters,
                                             "step": 2, "complete": False}))
    half = certs.make_intermediate(new, "cluster1", s, roots=(old.cert, new.cert))
    certs.replace_bundle(s, half)
    mesh.push(half)
    before2 = mesh.bundle("cluster2")
    code, doc = mesh.status()
    assert code == 0 and [c["rotationStage"] for c in doc["clusters"]] == [2, 1], doc
    r = mesh.run("certs.rotate", "--root", "--step", "3")
    assert r.returncode == 2 and "--step 2" in r.stderr
    out = mesh.ok("certs.rotate", "--root", "--step", "2")
    assert "cluster1: already done" in out
    assert mesh.bundle("cluster1").ca_cert == half.ca_cert
    after2 = mesh.bundle("cluster2")
    assert after2.ca_cert != before2.ca_cert and certs.issued_by(after2.ca_cert, new.cert)
    assert rotation.load_state(s).complete


def assert_no_key_material(mesh: Mesh, extra_keys: list[bytes] = ()) -> None:
    """No root key in any Secret or ConfigMap of any cluster; no key in any output."""
    root_keys = [pki.key_pem(mesh.root().key), *extra_keys]
    needles = []
    for key in root_keys:
        body = b"".join(key.strip().splitlines()[1:-1])  # the base64 between the PEM lines
        needles += [key, body, base64.b64encode(key)]
    for cl in mesh.sandbox.clusters:
        core = cl.core()
        objects = [*core.list_secret_for_all_namespaces().items,
                   *core.list_config_map_for_all_namespaces().items]
        assert len(objects) > 2
        for obj in objects:
            blobs = [v.encode() for v in (obj.data or {}).values()]
            if isinstance(obj, k8s.V1Secret):
                blobs += [base64.b64decode(v) for v in (obj.data or {}).values()]
            blobs += [json.dumps(obj.metadata.annotations or {}).encode()]
            for blob in blobs:
                assert not any(n in blob for n in needles), (cl.name, obj.metadata.name)
    text = "\n".join(mesh.outputs)
    assert "PRIVATE KEY" not in text and "BEGIN" not in text
    for key in root_keys:
        body = b"".join(key.strip().splitlines()[1:-1]).decode()
        assert body[:40] not in text


# --- issue 21: the wait before step 3, and a cacerts that does not parse -----------------


def _istiod_with_ttl(mesh: Mesh, cluster: str, ttl: str) -> None:
    """An istiod Deployment (0 replicas: no pod, no process) whose env sets the TTL."""
    apps = mesh.sandbox[cluster].apps()
    body = {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "istiod-ttl-test", "namespace": "istio-system",
                         "labels": {"app": "istiod"}},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "istiod-ttl-test"}},
                     "template": {"metadata": {"labels": {"app": "istiod-ttl-test"}},
                                  "spec": {"containers": [{
                                      "name": "discovery", "image": "istio/pilot",
                                      "env": [{"name": "DEFAULT_WORKLOAD_CERT_TTL",
                                               "value": ttl}]}]}}}}
    apps.create_namespaced_deployment("istio-system", body)


def test_step3_waits_for_the_longest_ttl_and_force_says_the_risk(mesh: Mesh) -> None:
    mesh.ok("certs.init")
    mesh.ok("certs.issue")
    mesh.ok("certs.rotate", "--root", "--step", "1")
    mesh.ok("certs.rotate", "--root", "--step", "2")
    code, doc = mesh.status()
    assert code == 0 and doc["rotation"]["step2Finished"], doc["rotation"]
    assert "not before" in mesh.ok("certs.status")
    mesh.set_ca(workloadCertTTL="1s")
    time.sleep(1.1)
    # ... but cluster2's istiod hands out 48 h certificates: the wait is that long
    _istiod_with_ttl(mesh, "cluster2", "48h")
    try:
        versions = {n: mesh.secret(n).metadata.resource_version for n in CLUSTERS}
        early = mesh.run("certs.rotate", "--root", "--step", "3")
        assert early.returncode == 1 and "Traceback" not in early.stderr, early.stderr
        assert "47h59m left" in early.stderr
        assert "48h00m (cluster2: istiod DEFAULT_WORKLOAD_CERT_TTL)" in early.stderr
        assert {n: mesh.secret(n).metadata.resource_version for n in CLUSTERS} == versions
        forced = mesh.run("certs.rotate", "--root", "--step", "3", "--force")
        assert forced.returncode == 0, forced.stderr
        assert "warning: root rotation step 3 forced 47h59m early" in forced.stderr
        assert "mTLS fails" in forced.stderr and "step 3 done" in forced.stdout
    finally:
        mesh.sandbox["cluster2"].apps().delete_namespaced_deployment("istiod-ttl-test",
                                                                     "istio-system")
    new_fp = json.loads((mesh.ca / "rotation.json").read_text())["new_root"]
    for n in CLUSTERS:
        assert [pki.fingerprint(r) for r in mesh.bundle(n).roots] == [new_fp]
    # a finished rotation's step 3 re-run is a no-op, no wait, no --force needed
    assert "already done" in mesh.ok("certs.rotate", "--root", "--step", "3")


def test_encrypted_ca_key_in_a_cluster_is_one_line_everywhere(mesh: Mesh) -> None:
    """cluster1's cacerts holds an encrypted ca-key.pem (istiod could not load it either).
    Every command that reads it says so naming the cluster, the Secret and the field, or
    shows it as a FAIL row; none raises TypeError; nothing is written to the cluster."""
    from cryptography.hazmat.primitives import serialization

    mesh.ok("certs.init")
    mesh.ok("certs.issue")
    bundle = mesh.bundle("cluster1")
    encrypted = bundle.ca_key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"pw"))
    core = mesh.sandbox["cluster1"].core()
    core.patch_namespaced_secret("cacerts", "istio-system", {"data": {
        "ca-key.pem": base64.b64encode(encrypted).decode()}})
    version = mesh.secret("cluster1").metadata.resource_version
    env = mesh.sandbox.env()
    named = ("cluster1", "Secret istio-system/cacerts", "ca-key.pem",
             "the private key is encrypted")

    code, doc = mesh.status()
    row = next(c for c in doc["clusters"] if c["name"] == "cluster1")
    assert code == 1 and row["level"] == "FAIL" and not row["present"]
    assert all(n in row["checks"][0]["message"] for n in named[1:])

    for args, want in [
        (("certs.rotate", "--cluster", "cluster1"), 1),
        (("certs.rotate", "--root", "--step", "1"), 1),
        (("certs.issue", "--cluster", "cluster1"), 1),
    ]:
        result = mesh.run(*args, env=env)
        lines = [x for x in result.stderr.splitlines() if x.strip()]
        assert result.returncode == want and len(lines) == 1, (args, result.stderr)
        assert all(n in lines[0] for n in named[2:]) and "cluster1" in lines[0], lines[0]

    # preflight: a FAIL row naming the field; bootstrap: one line, exit 1, nothing written
    pre = mesh.run("preflight", "--cluster", "cluster1", env=env)
    assert pre.returncode == 1 and "Traceback" not in pre.stderr, pre.stdout + pre.stderr
    assert "❌ cluster1 cacerts: istio-system/cacerts exists but is not a usable CA bundle: " \
           "ca-key.pem: the private key is encrypted" in pre.stdout, pre.stdout
    boot = mesh.run("bootstrap", "--main", "cluster1", "--remote", "cluster2", env=env)
    lines = [x for x in boot.stderr.splitlines() if x.strip()]
    assert boot.returncode == 1 and len(lines) == 1, boot.stderr
    assert "cluster1 cacerts" in lines[0] and "ca-key.pem: the private key is encrypted" \
        in lines[0] and "nothing was changed on any cluster" in lines[0], lines[0]
    # status: the table still comes, cluster1 without certificate days
    shown = mesh.run("status", env=env)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    assert mesh.secret("cluster1").metadata.resource_version == version
    assert not (mesh.ca / "rotation.json").exists()
    # teardown (last: it may remove istio-system): keeps the Secret, saying why
    down = mesh.run("teardown", "--main", "cluster1", "--remote", "cluster2", "--yes", env=env)
    assert down.returncode == 0 and "Traceback" not in down.stderr, down.stderr
    assert "cluster1: kept Secret istio-system/cacerts: not a usable CA bundle (ca-key.pem: " \
           "the private key is encrypted" in down.stdout, down.stdout
