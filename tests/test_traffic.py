"""Traffic across the mesh: real workloads of the sandbox, calling each other through istiod.

Two primaries on one network, bootstrapped by meshctl.  Workloads are real processes
(pilot-agent + Istio's echo server, ``meshctl.sandbox.workload``) that get their
certificates and routes from their own cluster's real istiod; calls are Istio's echo
client over proxyless gRPC (``meshctl.sandbox.calls``).  What this proves: workload
identity issued under meshctl's intermediates, trust across clusters through meshctl's
one root, discovery through meshctl's remote secrets, routing by meshctl's canary
objects.  What it cannot: Envoy, and east-west gateways (one network here).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from meshctl.sandbox import calls
from meshctl.sandbox import lifecycle as sbx
from meshctl.sandbox import workload as wl
from tests.sandbox_fixtures import SandboxHandle
from tests.test_bootstrap import clusters_dir, run
from tests.test_istiod import eventually, openssl

pytestmark = pytest.mark.sandbox
NS = "sample"
PORT = wl.PORT
#: Workload certificates live this long in this module (the agent renews at half), and
#: mesh.yaml's ca.workloadCertTTL says so, so a root rotation's step 3 waits that long.
TTL = "1m"
STRICT = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
          "metadata": {"name": "default", "namespace": "istio-system"},
          "spec": {"mtls": {"mode": "STRICT"}}}


def host(service: str) -> str:
    return f"{service}.{NS}.svc.cluster.local"


class Mesh:
    def __init__(self, handle: SandboxHandle, tmp: Path, folder: Path) -> None:
        self.handle, self.tmp, self.folder = handle, tmp, folder
        self.sb = sbx.load(handle.state_dir)
        self.callers: dict[str, wl.Workload] = {}

    @property
    def root(self) -> Path:
        return self.tmp / "ca" / "root-cert.pem"

    def meshctl(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = run(self.handle, *args, "--clusters-dir", str(self.folder))
        if ok:
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    def kubectl(self, cluster: str, *args: str, data: str | None = None) -> str:
        out = subprocess.run(["kubectl", "--kubeconfig", str(self.handle.kubeconfig),
                              "--context", cluster, *args], input=data, capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def caller(self, cluster: str) -> wl.Workload:
        if cluster not in self.callers:
            self.callers[cluster] = wl.start_caller(self.sb, cluster=cluster, namespace=NS,
                                                    service_account="caller")
        return self.callers[cluster]

    def send(self, cluster: str, service: str, count: int, qps: int = 50) -> calls.Calls:
        return calls.send(self.sb, self.caller(cluster), host(service), PORT, count=count,
                          qps=qps)

    def until_answered(self, cluster: str, service: str, *, by: str,
                       timeout: float = 60.0) -> calls.Calls:
        """Calls until one batch is answered entirely by cluster ``by``."""
        def ok() -> calls.Calls | None:
            got = self.send(cluster, service, 5, qps=20)
            return got if got.ok == 5 and {c for c, _ in got.answered} == {by} else None
        return eventually(ok, timeout=timeout, what=f"{cluster} -> {service} answered by {by}")


@pytest.fixture(scope="module")
def mesh(sandbox_factory, tmp_path_factory) -> Mesh:
    handle = sandbox_factory(2, nodes=1, cpu="8", memory="16Gi", label="traffic")
    tmp = tmp_path_factory.mktemp("traffic")
    folder = clusters_dir(tmp, handle, {}, {})   # both on network1
    doc = yaml.safe_load((folder / "mesh.yaml").read_text())
    doc["ca"]["workloadCertTTL"] = TTL
    (folder / "mesh.yaml").write_text(yaml.safe_dump(doc))
    m = Mesh(handle, tmp, folder)
    m.meshctl("bootstrap", "--main", "cluster1", "--remote", "cluster2")
    for cluster in ("cluster1", "cluster2"):
        m.kubectl(cluster, "create", "namespace", NS)
        m.kubectl(cluster, "apply", "-f", "-", data=yaml.safe_dump(STRICT))
    # only1 has its one endpoint in cluster1, only2 in cluster2; the Service exists on both
    # (the usual multi-cluster rule), echo has v1 in cluster1 and v2 in cluster2.
    os.environ[wl.TTL_ENV] = TTL  # read when each agent starts; this module's only
    try:
        for cluster, service, version in (("cluster1", "only1", "v1"),
                                          ("cluster2", "only2", "v1"),
                                          ("cluster1", "echo", "v1"), ("cluster2", "echo", "v2")):
            wl.start(m.sb, cluster=cluster, namespace=NS, service=service, version=version)
        m.caller("cluster1"), m.caller("cluster2")
    finally:
        os.environ.pop(wl.TTL_ENV, None)
    for cluster in ("cluster1", "cluster2"):
        for service in ("only1", "only2", "echo"):
            m.kubectl(cluster, "apply", "-f", "-", data=yaml.safe_dump({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": service, "namespace": NS},
                "spec": {"selector": {"app": service},
                         "ports": [{"name": "grpc", "port": PORT, "appProtocol": "grpc"}]}}))
        # mTLS for proxyless callers comes from a DestinationRule: meshctl's canary writes it
    for service in ("only1", "only2"):
        m.meshctl("canary", "--cluster", "cluster1", "--namespace", NS, "--service", service,
                  "--weights", "v1=100")
    return m


def test_cross_cluster_mtls_both_ways_chains_through_the_other_intermediate(mesh: Mesh) -> None:
    for src, service, dst in (("cluster1", "only2", "cluster2"), ("cluster2", "only1", "cluster1")):
        mesh.until_answered(src, service, by=dst)
        got = mesh.send(src, service, 40)
        assert got.ok == 40 and set(got.answered) == {(dst, "v1")}, got
        server = next(w for w in wl.records(mesh.sb) if w.service == service)
        chain = calls.peer_chain(mesh.sb, mesh.caller(src), server.ip, PORT)
        assert len(chain) >= 2, "the server presented no chain"
        leaf, *rest = chain
        text = openssl("x509", "-noout", "-ext", "subjectAltName", data=leaf).stdout.decode()
        assert f"URI:spiffe://cluster.local/ns/{NS}/sa/{service}" in text
        inter = mesh.tmp / f"untrusted-{dst}.pem"
        inter.write_bytes(b"".join(rest))
        verified = openssl("verify", "-CAfile", str(mesh.root), "-untrusted", str(inter),
                           data=leaf)
        assert verified.returncode == 0 and b"OK" in verified.stdout, verified.stderr
        issuer = openssl("x509", "-noout", "-issuer", data=leaf).stdout.decode()
        assert f"L = {dst}" in issuer or f"L={dst}" in issuer, issuer


def test_root_key_is_on_no_cluster(mesh: Mesh) -> None:
    """After bootstrap, workloads and calls: no Secret or ConfigMap of either cluster holds
    the root CA's key, in PEM or base64 (kubectl reads every namespace)."""
    import base64
    import json

    key = (mesh.tmp / "ca" / "root-key.pem").read_bytes()
    body = b"".join(line for line in key.splitlines() if b"-----" not in line)[:64]
    for cluster in ("cluster1", "cluster2"):
        items = json.loads(mesh.kubectl(cluster, "get", "secrets,configmaps", "-A", "-o",
                                        "json"))["items"]
        assert len(items) > 10
        for item in items:
            values = [base64.b64decode(v) for v in (item.get("data") or {}).values()
                      ] if item["kind"] == "Secret" else [
                str(v).encode() for v in (item.get("data") or {}).values()]
            where = f"{cluster}: {item['kind']} {item['metadata']['namespace']}/" \
                    f"{item['metadata']['name']}"
            assert not any(body in v for v in values), f"root key material in {where}"


def test_plaintext_is_refused_under_strict(mesh: Mesh) -> None:
    server = next(w for w in wl.records(mesh.sb) if w.service == "only2")
    links = wl._binaries(mesh.sb)
    out = subprocess.run([str(links / wl.CLIENT), f"grpc://{server.ip}:{PORT}", "--count=1",
                          "--timeout=3s"], capture_output=True, text=True, timeout=30,
                         env={"PATH": os.environ["PATH"]}, check=False)
    assert out.returncode != 0, out.stdout


def test_unlinking_cluster2_takes_its_endpoints_away_and_link_brings_them_back(mesh: Mesh) -> None:
    mesh.until_answered("cluster1", "only2", by="cluster2")
    mesh.meshctl("unlink", "--main", "cluster1", "--remote", "cluster2")
    try:
        def failing() -> calls.Calls | None:
            got = mesh.send("cluster1", "only2", 5, qps=20)
            return got if got.ok == 0 else None
        got = eventually(failing, timeout=90, what="cluster1 losing only2's endpoints")
        assert got.causes, got
    finally:
        mesh.meshctl("link", "--main", "cluster1", "--remote", "cluster2")
    mesh.until_answered("cluster1", "only2", by="cluster2", timeout=90)


def test_another_meshs_remote_secret_is_neither_removed_nor_forced(mesh: Mesh) -> None:
    """unlink deletes, and link force-repairs, only a remote secret meshctl made for this
    mesh: one labelled for another mesh keeps its uid and resourceVersion (kubectl)."""
    name = "istio-remote-secret-cluster2"
    ident = ["get", "secret", name, "-n", "istio-system", "-o",
             "jsonpath={.metadata.uid}/{.metadata.resourceVersion}"]
    mesh.kubectl("cluster1", "-n", "istio-system", "label", "secret", name,
                 "meshctl.io/mesh=other-mesh", "--overwrite")
    try:
        before = mesh.kubectl("cluster1", *ident)
        gone = mesh.meshctl("unlink", "--main", "cluster1", "--remote", "cluster2", ok=False)
        assert mesh.kubectl("cluster1", *ident) == before, gone.stdout + gone.stderr
        forced = mesh.meshctl("link", "--main", "cluster1", "--remote", "cluster2", ok=False)
        assert forced.returncode == 1, forced.stdout + forced.stderr
        assert len(forced.stderr.strip().splitlines()) == 1 and "Traceback" not in forced.stderr
        assert mesh.kubectl("cluster1", *ident) == before
    finally:
        mesh.kubectl("cluster1", "-n", "istio-system", "label", "secret", name,
                     "meshctl.io/mesh=mesh1", "--overwrite")
    mesh.until_answered("cluster1", "only2", by="cluster2", timeout=90)


def test_verify_sends_real_calls_through_the_sandbox_workloads(mesh: Mesh) -> None:
    """verify picks the sandbox's workloads by itself, says so, and counts real calls from
    every primary by cluster and version; each peer's chain leads to meshctl's root."""
    import json

    result = mesh.meshctl("verify", "--main", "cluster1", "--remote", "cluster2", "--json",
                          ok=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    doc = json.loads(result.stdout)
    assert doc["trafficChecked"] is True and doc["passed"] is True
    assert "proxyless gRPC" in doc["probe"]["name"] and "no Envoy" in doc["probe"]["limits"]
    checks = {c["name"]: c for c in doc["checks"]}
    for src in ("cluster1", "cluster2"):
        assert checks[f"calls from {src}"]["status"] == "PASS"
        assert "v1@cluster1" in checks[f"calls from {src}"]["message"]
        assert "v2@cluster2" in checks[f"calls from {src}"]["message"]
    for pair, dst in (("cluster1->cluster2", "cluster2"), ("cluster2->cluster1", "cluster1")):
        words = checks[f"peer identity {pair}"]["message"]
        assert "spiffe://cluster.local/ns/meshctl-verify/sa/echo" in words
        assert f"L={dst}" in words and "chains to this mesh's root" in words
    answered = {(a["cluster"], a["version"]) for a in doc["traffic"]["answers"]}
    assert answered == {("cluster1", "v1"), ("cluster2", "v2")}
    # its workloads and their registrations are gone; the namespace goes with them
    assert not [w for w in wl.records(mesh.sb) if w.namespace == "meshctl-verify"]
    for cluster in ("cluster1", "cluster2"):
        entries = mesh.kubectl(cluster, "get", "workloadentries", "-A", "-o", "name")
        assert "meshctl-verify" not in entries


def test_canary_80_20_observed_then_all_to_v2(mesh: Mesh) -> None:
    result = mesh.meshctl("canary", "--cluster", "cluster1", "--namespace", NS, "--service",
                          "echo", "--weights", "v1=80,v2=20", "--observe", "500", ok=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "v2" in result.stdout and "allowed" in result.stdout
    counts = Counter(dict(mesh.send("cluster1", "echo", 200, qps=100).answered))
    assert counts[("cluster1", "v1")] > counts[("cluster2", "v2")] > 0, counts
    result = mesh.meshctl("canary", "--cluster", "cluster1", "--namespace", NS, "--service",
                          "echo", "--weights", "v1=0,v2=100", "--observe", "500", ok=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    got = mesh.send("cluster1", "echo", 100, qps=100)
    assert got.ok == 100 and set(got.answered) == {("cluster2", "v2")}, got


def restart_istiod(mesh: Mesh, cluster: str) -> None:
    """A new istiod pod: Istio loads a *different* root only at start ("Updating new
    ROOT-CA not supported" while running), as an operator's rollout restart would."""
    mesh.kubectl(cluster, "-n", "istio-system", "rollout", "restart", "deployment/istiod")
    mesh.kubectl(cluster, "-n", "istio-system", "rollout", "status", "deployment/istiod",
                 "--timeout=180s")


def restart(mesh: Mesh, cluster: str, service: str) -> None:
    """New agent and server: a certificate from whatever CA the cluster's istiod has now."""
    os.environ[wl.TTL_ENV] = TTL
    try:
        wl.delete(mesh.sb, cluster=cluster, namespace=NS, service=service)
        wl.start(mesh.sb, cluster=cluster, namespace=NS, service=service, version="v1")
    finally:
        os.environ.pop(wl.TTL_ENV, None)


def test_wrong_root_fails_the_handshake_and_the_right_one_brings_calls_back(mesh: Mesh) -> None:
    mesh.until_answered("cluster1", "only2", by="cluster2")
    other = mesh.tmp / "other-root"
    shutil.copytree(mesh.folder, other / "clusters")
    doc = yaml.safe_load((other / "clusters" / "mesh.yaml").read_text())
    doc["ca"]["dir"] = str(other / "ca")
    (other / "clusters" / "mesh.yaml").write_text(yaml.safe_dump(doc))
    for args in (("certs.init",), ("certs.issue", "--cluster", "cluster2", "--force")):
        wrong = run(mesh.handle, *args, "--clusters-dir", str(other / "clusters"))
        assert wrong.returncode == 0, wrong.stdout + wrong.stderr
    try:
        restart_istiod(mesh, "cluster2")
        restart(mesh, "cluster2", "only2")

        def refused() -> calls.Calls | None:
            got = mesh.send("cluster1", "only2", 5, qps=20)
            return got if got.ok == 0 else None
        got = eventually(refused, timeout=90, what="cluster1 refusing cluster2's new chain")
        assert any("does not chain" in c or "handshake" in c for c in got.causes), got.causes
        chain = calls.peer_chain(mesh.sb, mesh.caller("cluster1"),
                                 next(w.ip for w in wl.records(mesh.sb) if w.service == "only2"),
                                 PORT)
        inter = mesh.tmp / "wrong-untrusted.pem"
        inter.write_bytes(b"".join(chain[1:]))
        verdict = openssl("verify", "-CAfile", str(mesh.root), "-untrusted", str(inter),
                          data=chain[0])
        assert verdict.returncode != 0, "cluster2's new chain must not verify under the root"
        # verify says so, naming the root: cluster2's cacerts is under another one
        judged = mesh.meshctl("verify", "--main", "cluster1", "--remote", "cluster2", ok=False)
        assert judged.returncode == 1, judged.stdout + judged.stderr
        assert "root" in judged.stdout and "cluster2" in judged.stdout, judged.stdout
    finally:
        back = mesh.meshctl("certs.issue", "--cluster", "cluster2", "--force", ok=False)
        assert back.returncode == 0, back.stdout + back.stderr
        restart_istiod(mesh, "cluster2")
        restart(mesh, "cluster2", "only2")
    mesh.until_answered("cluster1", "only2", by="cluster2", timeout=90)


def test_rotation_without_downtime_intermediate_then_root_in_three_steps(mesh: Mesh) -> None:
    """Calls both ways run without pause through certs.rotate --cluster and every step of
    certs.rotate --root; workload certificates live TTL (1 min), so they roll between the
    steps; step 3 waits for ca.workloadCertTTL after step 2, as meshctl enforces."""
    for src, service, dst in (("cluster1", "only2", "cluster2"), ("cluster2", "only1", "cluster1")):
        mesh.until_answered(src, service, by=dst, timeout=120)
    totals: dict[tuple[str, str], calls.Calls] = {}
    stop = threading.Event()
    phase = ["before"]

    def pound(src: str, service: str) -> None:
        while not stop.is_set():
            key = (src, phase[0])
            got = mesh.send(src, service, 20, qps=20)
            totals[key] = totals.get(key, calls.Calls(0)).merge(got)

    threads = [threading.Thread(target=pound, args=a) for a in (("cluster1", "only2"),
                                                                 ("cluster2", "only1"))]
    for t in threads:
        t.start()
    roll = 45.0  # over half the workload TTL: every agent renewed once
    try:
        phase[0] = "intermediate"
        mesh.meshctl("certs.rotate", "--cluster", "cluster2")
        time.sleep(roll)
        for step in ("1", "2"):
            phase[0] = f"step {step}"
            mesh.meshctl("certs.rotate", "--root", "--step", step)
            time.sleep(roll)
        phase[0] = "step 3"
        early = time.monotonic()
        while True:
            third = mesh.meshctl("certs.rotate", "--root", "--step", "3", ok=False)
            if third.returncode == 0:
                break
            assert third.returncode == 1 and "workloadCertTTL" in third.stderr + third.stdout, (
                third.stdout + third.stderr)
            assert time.monotonic() - early < 120, "step 3 still refused after the TTL"
            time.sleep(5)
        time.sleep(roll)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    failed = {key: (t.sent, dict(t.causes)) for key, t in totals.items() if t.failed}
    assert sum(t.sent for t in totals.values()) > 400 and not failed, failed
    # after the rotation the server's chain verifies under the new root alone
    server = next(w for w in wl.records(mesh.sb) if w.service == "only2")
    chain = calls.peer_chain(mesh.sb, mesh.caller("cluster1"), server.ip, PORT)
    inter = mesh.tmp / "rotated-untrusted.pem"
    inter.write_bytes(b"".join(chain[1:]))
    verdict = openssl("verify", "-CAfile", str(mesh.root), "-untrusted", str(inter),
                      data=chain[0])
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
