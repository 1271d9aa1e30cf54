"""Keeping sandbox workloads' mounted files current, as kubelet keeps ConfigMap volumes.

A pod's ``istio-ca-root-cert`` volume follows the ConfigMap: during a staged root
rotation istiod adds the new root there, and the agent needs it to trust istiod's new
serving certificate when it reconnects.  The sandbox writes a workload's files once at
start (:mod:`meshctl.sandbox.workload`); this loop, a thread of the sandbox's controller
process per cluster, then rewrites ``var/run/secrets/istio/root-cert.pem`` atomically
whenever the namespace's ConfigMap changes.  It reads the records as plain JSON, so it
needs nothing above the sandbox's own API client.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from meshctl import files
from meshctl.sandbox.api import Api, ApiError

ROOT_FILE = "var/run/secrets/istio/root-cert.pem"
INTERVAL = 2.0


def _records(state_dir: Path, cluster: str) -> list[tuple[Path, str]]:
    """(workload folder, namespace) of every workload of ``cluster``."""
    out = []
    for rec in sorted((state_dir / "w").glob("*/workload.json")):
        try:
            data = json.loads(rec.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("cluster") == cluster:
            out.append((rec.parent, str(data.get("namespace", ""))))
    return out


def _write(path: Path, text: str) -> bool:
    """Replace ``path`` with ``text`` atomically when it differs; True when it changed."""
    try:
        if path.read_text() == text:
            return False
    except OSError:
        return False  # the workload is gone or not ready yet: nothing to keep current
    files.write_atomic(path, text)
    return True


def sync_once(state_dir: Path, cluster: str, api: Api) -> int:
    """One pass: how many workloads got a new root file."""
    roots: dict[str, str | None] = {}
    changed = 0
    for folder, namespace in _records(state_dir, cluster):
        if namespace not in roots:
            try:
                cm = api.get(f"/api/v1/namespaces/{namespace}/configmaps/istio-ca-root-cert")
                roots[namespace] = (cm.get("data") or {}).get("root-cert.pem")
            except (ApiError, OSError, ValueError):
                roots[namespace] = None
        text = roots[namespace]
        if text and _write(folder / ROOT_FILE, text):
            changed += 1
            print(f"{cluster}: {folder.name}: {ROOT_FILE} follows {namespace}/"
                  "istio-ca-root-cert", flush=True)
    return changed


def run_cluster(state_dir: Path, cluster: str, api: Api) -> None:
    """Forever, while the sandbox exists; errors are logged, never fatal."""
    while state_dir.exists():
        try:
            sync_once(state_dir, cluster, api)
        except Exception as e:  # keep the loop alive; the log says what happened
            print(f"{cluster}: workload volumes: {type(e).__name__}: {str(e)[:200]}",
                  flush=True)
        time.sleep(INTERVAL)
