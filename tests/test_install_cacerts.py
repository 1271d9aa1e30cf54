"""``install --cluster`` pushes ``cacerts`` before istiod starts, and preflight tells a
``cacerts`` istiod has not loaded from one it has (issue 21 item 11), on the sandbox
with the real istiod.

istiod reads ``cacerts`` only at start.  Started without it, it makes a self-signed CA
(``istio-ca-secret``) and publishes that root as ``istio-ca-root-cert``; a ``cacerts``
pushed afterwards waits for a restart.  Checked here with kubectl, openssl and what the
real istiod publishes: the intermediate ``install`` pushed chains to the local root,
istiod serves that root, and preflight FAILs (with the restart hint) exactly while
istiod still serves its own.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest

from meshctl.ca import pki
from tests.test_bootstrap import assert_torn_down, clusters_dir, run
from tests.test_ownership import kubectl

pytestmark = pytest.mark.sandbox

NS = "istio-system"


@pytest.fixture(scope="module")
def sb(sandbox_factory):
    return sandbox_factory(2, nodes=1, cpu="8", memory="16Gi", label="install-cacerts")


def get_json(cluster, *args: str) -> dict | None:
    got = kubectl(cluster, "get", *args, "-o", "json")
    return json.loads(got.stdout) if got.returncode == 0 else None


def served_root(cluster) -> bytes | None:
    cm = get_json(cluster, "configmap", "istio-ca-root-cert", "-n", NS)
    return cm["data"]["root-cert.pem"].encode() if cm else None


def wait_for(what: str, check, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (got := check()):
            return got
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def fingerprints(pem: bytes) -> set[str]:
    return {pki.fingerprint(c) for c in pki.load_certs(pem)}


def restart_istiod(cluster) -> None:
    done = kubectl(cluster, "delete", "pod", "-n", NS, "-l", "app=istiod", "--wait=true")
    assert done.returncode == 0, done.stderr


def istio_ca(sb, folder: Path) -> dict:
    proc = run(sb, "preflight", "--cluster", "cluster1", "--json", "--clusters-dir",
               str(folder))
    doc = json.loads(proc.stdout)
    return next(r for c in doc["clusters"] for r in c["results"] if r["check"] == "istio-ca")


def test_install_cluster_pushes_cacerts_and_preflight_sees_if_istiod_loaded_it(
        tmp_path: Path, sb) -> None:
    folder = clusters_dir(tmp_path, sb, {}, {})
    c1 = sb["cluster1"]
    root_file = tmp_path / "ca" / "root-cert.pem"
    try:
        done = run(sb, "install", "--cluster", "cluster1", "--clusters-dir", str(folder))
        assert done.returncode == 0, done.stderr[-3000:]
        secret = get_json(c1, "secret", "cacerts", "-n", NS)
        assert secret is not None, "install --cluster pushed no cacerts"
        data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        assert data["root-cert.pem"] == root_file.read_bytes()
        (tmp_path / "ca-cert.pem").write_bytes(data["ca-cert.pem"])
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(root_file),
                                 str(tmp_path / "ca-cert.pem")], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        # and cryptography's own check: the intermediate is signed by the local root
        pki.load_certs(data["ca-cert.pem"])[0].verify_directly_issued_by(
            pki.load_certs(root_file.read_bytes())[0])
        # the real istiod started with it: it serves meshctl's root, and made no CA of its own
        ours = fingerprints(root_file.read_bytes())
        wait_for("istiod to publish meshctl's root",
                 lambda: (pem := served_root(c1)) and fingerprints(pem) == ours)
        assert get_json(c1, "secret", "istio-ca-secret", "-n", NS) is None
        assert get_json(sb["cluster2"], "namespace", NS) is None, "install touched cluster2"
        assert istio_ca(sb, folder)["status"] == "PASS"

        # istiod (re)started without cacerts signs with its own CA; cacerts pushed later ...
        assert kubectl(c1, "delete", "secret", "cacerts", "-n", NS).returncode == 0
        restart_istiod(c1)
        wait_for("istiod's self-signed CA", lambda: get_json(
            c1, "secret", "istio-ca-secret", "-n", NS) and (pem := served_root(c1))
            and not fingerprints(pem) & ours)
        issued = run(sb, "certs.issue", "--cluster", "cluster1", "--clusters-dir", str(folder))
        assert issued.returncode == 0, issued.stderr[-2000:]
        # ... is not loaded: preflight must not pass it
        result = istio_ca(sb, folder)
        assert result["status"] == "FAIL", result
        assert "istiod has not loaded istio-system/cacerts" in result["message"], result
        assert "restart istiod" in result["hint"], result
        # after a restart istiod serves meshctl's root, and istio-ca-secret is a leftover
        restart_istiod(c1)
        wait_for("istiod to load cacerts",
                 lambda: (pem := served_root(c1)) and fingerprints(pem) == ours)
        result = istio_ca(sb, folder)
        assert result["status"] == "PASS" and "leftover" in result["message"], result
    finally:
        down = run(sb, "teardown", "--main", "cluster1", "--remote", "cluster2", "--yes",
                   "--clusters-dir", str(folder))
        assert down.returncode == 0, down.stderr[-3000:]
        assert_torn_down(sb, ["cluster1", "cluster2"])
