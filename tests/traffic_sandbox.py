"""The bootstrapped sandbox that the canary and verify tests share (label ``traffic``).

One two-cluster sandbox, one small node each, bootstrapped once by the real
``meshctl bootstrap`` (real istioctl: Istio's CRDs, so the API server validates every
VirtualService and DestinationRule against Istio's schemas).  The sandbox runs the
real istiod for each cluster (meshctl/sandbox/istiod.py): Istio's injector adds the
sidecar to the pod spec (no container runs) and Istio's validation webhook checks
every Istio object.  A module that asks again gets the same sandbox and
a bootstrap re-run that has nothing to do.

Also what verify's tests need to act *during* a run: :class:`Running` (the CLI as a
process whose stderr is read as it comes, to act on a progress line or send Ctrl-C),
:func:`via_proxy` (one cluster reached through ``tests/api_proxy.py``, to fail one
request mid-run) and :func:`kubectl` (the real kubectl, for identities a test compares).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from tests.api_proxy import ApiProxy, Fault
from tests.factories import BIN, meshctl
from tests.sandbox_fixtures import Cluster, SandboxFactory, SandboxHandle

KUBECTL = str(Path(sys.executable).parent / "kubectl")

LABEL = "traffic"
_DONE: set[Path] = set()


def bootstrapped(factory: SandboxFactory) -> SandboxHandle:
    """The sandbox, bootstrapped once per session (the first module to ask does it).

    Once only, because a second bootstrap's preflight counts Istio's own requests as
    taken and can refuse a small node that already runs istiod.
    """
    handle = factory(2, nodes=1, cpu="2", memory="8Gi", label=LABEL)
    if handle.state_dir not in _DONE:
        result = meshctl("bootstrap", "--main", "cluster1", "--remote", "cluster2",
                         "--clusters-dir", str(handle.clusters_dir), env=handle.env())
        assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
        _DONE.add(handle.state_dir)
    return handle


def kubectl(cluster: Cluster, *args: str, check: bool = True) -> str:
    """The real kubectl against one sandbox cluster; its stdout."""
    result = subprocess.run([KUBECTL, "--kubeconfig", str(cluster.kubeconfig), "--context",
                             cluster.context, *args], capture_output=True, text=True,
                            timeout=60, check=False)
    assert not check or result.returncode == 0, (args, result.stderr)
    return result.stdout


def identity(cluster: Cluster, kind: str, name: str, namespace: str | None = None, *,
             check: bool = True) -> str:
    """``uid/resourceVersion`` as kubectl reads them (``check=False``: "" when gone)."""
    where = ["-n", namespace] if namespace else []
    return kubectl(cluster, "get", kind, name, *where, "-o",
                   "jsonpath={.metadata.uid}/{.metadata.resourceVersion}", check=check)


class Running:
    """``meshctl`` as a running process: stderr lines arrive as it prints them."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        exe = shutil.which("meshctl", path=str(BIN)) or shutil.which("meshctl")
        assert exe, "meshctl is not installed (pip install -e .)"
        self.proc = subprocess.Popen([exe, *args], env={**env, "COLUMNS": "200"},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.err: list[str] = []
        self.out: list[str] = []
        self._lock = threading.Condition()
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stderr, self.err),
                                          daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stdout, self.out),
                                          daemon=True)]
        for t in self._threads:
            t.start()

    def _read(self, stream, into: list[str]) -> None:
        for line in stream:
            with self._lock:
                into.append(line)
                self._lock.notify_all()

    def wait_for_line(self, needle: str, timeout: float) -> bool:
        """True once a stderr line holds ``needle``; False on timeout or exit."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not any(needle in line for line in self.err):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return any(needle in line for line in self.err)
                self._lock.wait(min(left, 0.2))
        return True

    def finish(self, timeout: float) -> tuple[int, str, str]:
        """Wait for the exit (killing the process past ``timeout``); code, stdout, stderr."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        for t in self._threads:
            t.join(10)
        return code, "".join(self.out), "".join(self.err)


def via_proxy(handle: SandboxHandle, tmp: Path, cluster: str,
              faults: list[Fault]) -> tuple[Path, ApiProxy]:
    """A clusters folder like the sandbox's, with ``cluster`` reached through a proxy
    that answers the requests ``faults`` match with a fault (meshctl sees a real API
    server otherwise)."""
    out = tmp / "clusters-via-proxy"
    shutil.copytree(handle.clusters_dir, out)
    c = handle[cluster]
    pki = c.kubeconfig.parent / c.name / "pki"
    proxy = ApiProxy(upstream=c.api_url, ca_file=pki / "ca.crt", cert_file=pki / "admin.crt",
                     key_file=pki / "admin.key", faults=faults)
    proxy.start(tmp / f"proxy-{cluster}")
    doc = yaml.safe_load((out / f"{cluster}.yaml").read_text())
    doc["kubeconfig"] = str(proxy.kubeconfig(tmp / f"{cluster}.kubeconfig", doc["context"]))
    (out / f"{cluster}.yaml").write_text(yaml.safe_dump(doc))
    return out, proxy
