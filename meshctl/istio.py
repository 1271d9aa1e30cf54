"""istioctl: finding it, asking its version, and running it against one cluster.

meshctl drives the real istioctl rather than re-implementing Istio's installer: the
manifests Istio ships are the ones that get installed.  Every run names the cluster's
kubeconfig and context explicitly (never the current context), and the output of a
command that may carry credentials (create-remote-secret) is returned in memory and
never logged; errors carry istioctl's last stderr line only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshctl import envvars, kube, versions
from meshctl.config import Cluster
from meshctl.errors import ClusterError, UsageError, one_line

ENV = "MESHCTL_ISTIOCTL"
INSTALL_TIMEOUT = 600.0
VERSION_TIMEOUT = 60.0  # `istioctl version --remote=false` reads no cluster: seconds at most


@dataclass(frozen=True)
class Istioctl:
    path: Path
    version: str

    @property
    def minor(self) -> tuple[int, int] | None:
        """``(1, 31)`` from ``1.31.0`` or ``1.31-dev``; ``None`` if unparseable."""
        return versions.major_minor(self.version)


def istiod_name(revision: str = "") -> str:
    """The istiod Deployment's (and Service's) name for a revision: Istio's own rule."""
    return f"istiod-{revision}" if revision else "istiod"


def has_proxy(pod: Mapping[str, Any]) -> bool:
    """True when the pod already carries Istio's proxy (sidecar or native sidecar)."""
    spec = pod.get("spec") or {}
    return any(c.get("name") == "istio-proxy"
               for c in (spec.get("containers") or []) + (spec.get("initContainers") or []))


def find(*, timeout: float = VERSION_TIMEOUT, flag: str | None = None) -> Istioctl:
    """``flag`` (``--istioctl PATH``), else ``$MESHCTL_ISTIOCTL``, else ``istioctl`` on
    PATH, with its client version.

    Every way the program can fail to say its version is one line naming it: not found
    or not executable (exit 2, naming ``$MESHCTL_ISTIOCTL`` when that chose it), no
    answer within ``timeout`` (a hung or wrong program), a start that fails (not a
    binary for this machine), output that is not istioctl's JSON (exit 3).
    """
    configured = flag or envvars.text(ENV)
    # absolute: a relative path without a slash would be looked up on PATH when run
    path = Path(configured).absolute() if configured else None
    if path is None:
        found = shutil.which("istioctl")
        path = Path(found) if found else None
    where = (f"--istioctl {flag}" if flag else f"{ENV}={configured}" if configured
             else "PATH")
    if path is None or not path.is_file() or not os.access(path, os.X_OK):
        raise UsageError(f"istioctl not found ({where})",
                         hint=f"install istioctl, or set {ENV}; 'invoke sandbox.build' "
                              "builds one")
    try:
        result = subprocess.run([str(path), "version", "--remote=false", "-o", "json"],
                                capture_output=True, text=True, timeout=timeout, check=False,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{path} version ({where}): no answer within {timeout:g}s; is "
                           "it istioctl?") from None
    except OSError as e:
        raise UsageError(f"{path} ({where}): cannot run it: {e.strerror or type(e).__name__}",
                         hint=f"point {'--istioctl' if flag else ENV} at an istioctl built "
                              "for this machine") from None
    try:
        version = json.loads(result.stdout)["clientVersion"]["version"]
    except (ValueError, KeyError, TypeError):
        version = None
    if not isinstance(version, str) or not version.strip():
        raise ClusterError(f"{path} version ({where}): unexpected output "
                           f"({_last_line(result.stderr) or 'no JSON'})")
    return Istioctl(path=path, version=one_line(version, 80))


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return one_line(lines[-1], 300) if lines else ""


def cluster_args(cluster: Cluster) -> list[str]:
    args = ["--context", cluster.context]
    path = kube.kubeconfig_path(cluster)
    if path:
        args += ["--kubeconfig", path]
    return args


def run(istioctl: Istioctl, cluster: Cluster, args: list[str], *, what: str,
        timeout: float = INSTALL_TIMEOUT) -> str:
    """Run ``istioctl <args>`` against ``cluster``; stdout on success, ClusterError else.

    stdout is returned, never printed or logged: for create-remote-secret it holds a
    token.  The error message carries only istioctl's last stderr line.
    """
    cmd = [str(istioctl.path), *args, *cluster_args(cluster)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{cluster.name}: {what}: istioctl did not finish within "
                           f"{timeout:.0f}s") from None
    except OSError as e:  # gone or replaced since find(): still one line naming the cluster
        raise ClusterError(f"{cluster.name}: {what}: cannot run {istioctl.path}: "
                           f"{e.strerror or type(e).__name__}") from None
    if result.returncode != 0:
        # stderr only: stdout may hold a kubeconfig with a token (create-remote-secret)
        raise ClusterError(f"{cluster.name}: {what}: istioctl exited {result.returncode}: "
                           f"{_last_line(result.stderr) or 'no message on stderr'}")
    return result.stdout


def install(istioctl: Istioctl, cluster: Cluster, operator_yaml: str, *, what: str,
            timeout: float = INSTALL_TIMEOUT) -> None:
    """``istioctl install -y -f <operator>`` on ``cluster`` (waits for readiness itself)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="meshctl-iop-") as f:
        f.write(operator_yaml)
        f.flush()
        run(istioctl, cluster, ["install", "-y", "-f", f.name,
                                "--readiness-timeout", f"{int(timeout)}s"],
            what=what, timeout=timeout + 60)
