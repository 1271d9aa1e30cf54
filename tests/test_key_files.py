"""Where key material from the operator's kubeconfig lands: a 0700 folder meshctl owns.

``kubernetes.config`` writes ``client-key-data`` to a file (Python's ``ssl`` loads keys
only from files).  meshctl points it at ``$XDG_CACHE_HOME/meshctl/scratch/<pid>-<start>/``
(0700), removes that folder at exit, and removes any folder of a process that is gone
(a SIGKILLed run) when the next task starts.  No cluster is needed: the loader writes
the file while the client is built.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
import yaml

from meshctl import config, files, kube
from meshctl.ca import pki
from tests.factories import cluster_doc, meshctl, write_folder


def _client_cert_kubeconfig(tmp: Path, server: str = "https://127.0.0.1:1") -> Path:
    key = pki.generate_key("ecdsa-p256")
    cert = pki.self_signed_ca(subject=pki.name(common_name="admin"), key=key, days=1)
    path = tmp / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "clusters": [{"name": "c", "cluster": {
            "server": server,
            "certificate-authority-data": base64.b64encode(pki.cert_pem(cert)).decode()}}],
        "users": [{"name": "u", "user": {
            "client-certificate-data": base64.b64encode(pki.cert_pem(cert)).decode(),
            "client-key-data": base64.b64encode(pki.key_pem(key)).decode()}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}]}))
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private XDG_CACHE_HOME for this process (an environment variable, not a fake)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(files, "_SCRATCH", None)
    return tmp_path / "cache" / "meshctl" / "scratch"


def test_client_key_goes_to_the_private_scratch_folder(tmp_path: Path, cache: Path) -> None:
    kc = _client_cert_kubeconfig(tmp_path)
    folder = write_folder(tmp_path, [cluster_doc("c1", context="ctx", kubeconfig=str(kc))])
    kube.client(config.load(folder).clusters["c1"])
    mine = files.scratch_dir()
    assert mine.parent == cache
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    written = [p for p in mine.iterdir() if p.is_file()]
    assert written, "the loader wrote no file: client-key-data handling changed upstream"
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in written)
    key_pem = base64.b64decode(yaml.safe_load(kc.read_text())["users"][0]["user"][
        "client-key-data"])
    assert any(p.read_bytes() == key_pem for p in written)


def test_dead_runs_folders_are_swept_live_ones_kept(cache: Path) -> None:
    cache.mkdir(parents=True)
    dead = cache / "999999999-1"  # no such pid
    dead.mkdir()
    (dead / "tmpkey").write_text("a key a SIGKILLed run left")
    reused = cache / f"{os.getpid()}-1"  # our pid, another start time: pid reuse
    reused.mkdir()
    live = cache / f"{os.getppid()}-{files._start_time(os.getppid())}"
    live.mkdir()
    removed = files.sweep_scratch(cache)
    assert sorted(removed) == sorted([dead, reused])
    assert live.is_dir() and not dead.exists() and not reused.exists()


def test_a_task_sweeps_at_start_and_leaves_no_key(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    dead = cache / "meshctl" / "scratch" / "999999999-1"
    dead.mkdir(parents=True, mode=0o700)
    (dead / "tmpkey").write_text("left by a killed run")
    kc = _client_cert_kubeconfig(tmp_path)
    folder = write_folder(tmp_path, [cluster_doc("c1", context="ctx", kubeconfig=str(kc))])
    result = meshctl("status", "--clusters-dir", str(folder),
                     env={"XDG_CACHE_HOME": str(cache), "MESHCTL_API_DEADLINE": "1"})
    assert result.returncode == 3 and "connection refused" in result.stderr
    assert not dead.exists()
    assert not [p for p in cache.rglob("*") if p.is_file()]
