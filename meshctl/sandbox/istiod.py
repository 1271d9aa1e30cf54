"""The sandbox plays kubelet for istiod: the real ``pilot-discovery`` runs for each istiod pod.

kwok stands in for kubelets and runs no container.  For istiod that would leave Istio's
webhooks, its CA and its multi-cluster discovery untested, so for every pod labelled
``app=istiod`` with a ``discovery`` container that is scheduled on a node, this
controller does what kubelet would:
- materialises the container's volumes (``cacerts`` Secret, the ServiceAccount token,
  any ConfigMap) under a folder of its own that stands in for the container's root,
  and keeps them current with atomic ``..data`` swaps (``sandbox.pod``);
- starts ``pilot-discovery`` there (the build whose stamped version is the pod's image
  tag: ``pilot-discovery-previous`` for the older Istio that upgrade tests start from,
  the current build for any other tag, with a note in the log) with the pod's args and
  env (``REVISION``, ``CLUSTER_ID``, ``POD_NAME``, ``POD_NAMESPACE`` … as the chart
  sets them; ``REVISION`` from the pod's ``istio.io/rev`` label only if the env lacks
  it), a kubeconfig whose current context is this cluster and whose credential is the
  pod's own bound ServiceAccount token (so istiod works with exactly the RBAC its chart
  grants), and its five listen addresses moved to free ports on the node's 127.x
  address, so any number of istiods on one machine never clash;
- probes the readiness probe the pod declares and writes ``Ready`` into the pod status
  (kwok's stage for these pods leaves them Running but not Ready), restarts a process
  that exits with kubelet's back-off, and on deletion stops the process (TERM, KILL
  after the grace period) before removing the pod;
- publishes kwok ``PortForward``, ``Exec`` and ``Logs`` objects for the pod, so the API
  server's port-forward, exec and logs reach this process through kwok's kubelet API;
- routes each Service ClusterIP:port selecting a running istiod to its ready process
  (``sandbox.proxy``): the API server's webhook calls reach the real istiod.

Runs as threads of the sandbox's controller process (``sandbox.lb``), one per cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from meshctl import files
from meshctl.sandbox import pod as pod_fs
from meshctl.sandbox.api import Api, ApiError
from meshctl.sandbox.cluster import free_port
from meshctl.sandbox.istiod_report import (
    BACKOFF_MAX,
    BINARY,
    CONTAINER,
    KUBELETS,
    LISTEN,
    SELECTOR,
    TICK,
    VOLUME_SYNC,
    Reporting,
    Running,
    _cri_log,
    _port_of,
    binary_for,
    discovery,
    now,
    selects_istiod,
    split_args,
)
from meshctl.sandbox.procs import pid_file
from meshctl.sandbox.proxy import Address, ServiceProxy

__all__ = ["CONTAINER", "KUBELETS", "Kubelet", "discovery", "selects_istiod"]


class Kubelet(Reporting):
    """Runs istiod pods of one cluster; see the module docstring."""

    def __init__(self, state_dir: Path, cluster: str, api: Api, node_ip: str,
                 bin_dir: Path | None, proxy: ServiceProxy) -> None:
        """``bin_dir`` None: run no process, only mark istiod pods Ready and delete them
        (``sandbox.up(istiod=False)``: the lighter sandbox with the webhook stand-in)."""
        self.state_dir = state_dir
        self.cluster = cluster
        self.api = api
        self.node_ip = node_ip
        self.bin_dir = bin_dir
        self.binary = bin_dir / BINARY if bin_dir else None  # the current build's
        self.proxy = proxy
        self.source = pod_fs.Source(api)
        self.pods: dict[str, dict[str, Any]] = {}
        self.running: dict[str, Running] = {}
        self.routes: dict[Address, list[Address]] = {}
        self.lock = threading.Lock()
        self.synced = threading.Event()

    # --- watching pods --------------------------------------------------------------------

    def watch_forever(self) -> None:
        while self.state_dir.exists():
            try:
                listed = self.api.get(f"/api/v1/pods?labelSelector={SELECTOR}")
                with self.lock:
                    self.pods = {p["metadata"]["uid"]: p for p in listed["items"]}
                self.synced.set()
                rv = listed["metadata"]["resourceVersion"]
                for event in self.api.watch(
                        f"/api/v1/pods?labelSelector={SELECTOR}&resourceVersion={rv}",
                        timeout_seconds=30):
                    obj = event.get("object") or {}
                    uid = (obj.get("metadata") or {}).get("uid")
                    if event.get("type") == "ERROR" or not uid:
                        break
                    with self.lock:
                        if event["type"] == "DELETED":
                            self.pods.pop(uid, None)
                        else:
                            self.pods[uid] = obj
            except Exception as e:  # keep watching; the log says what happened
                self.say(f"watch: {type(e).__name__}: {str(e)[:200]}")
                time.sleep(1.0)

    def run_forever(self) -> None:
        threading.Thread(target=self.watch_forever, daemon=True,
                         name=f"{self.cluster} istiod watch").start()
        while self.state_dir.exists():
            try:
                self.tick()
            except Exception as e:  # one bad pod must not stop the others
                self.say(f"tick: {type(e).__name__}: {str(e)[:300]}")
            time.sleep(TICK)
        for run in list(self.running.values()):
            self.stop(run, grace=2.0)

    # --- one pass -------------------------------------------------------------------------

    def tick(self) -> None:
        with self.lock:
            pods = dict(self.pods)
        for uid, run in list(self.running.items()):
            if uid not in pods:
                self.stop(run)
        for uid, pod in pods.items():
            if not pod["spec"].get("nodeName"):
                continue
            if pod["metadata"].get("deletionTimestamp"):
                self.terminate(pod)
                continue
            if self.binary is None or discovery(pod) is None:
                self.mark_ready_without_process(pod)
                continue
            run = self.running.get(uid)
            try:
                if run is None:
                    run = self.prepare(pod)
                self.sync(pod, run)
            except pod_fs.NotReady as e:
                self.say(f"{pod['metadata']['name']} waits: {e}")
        self.sync_routes(pods)

    def prepare(self, pod: dict[str, Any]) -> Running:
        meta = pod["metadata"]
        container = discovery(pod) or {}
        _, found = split_args(container.get("args") or [])
        wanted = {_port_of(found.get(flag, ""), default) for flag, default in LISTEN.items()}
        wanted |= {int(p["containerPort"]) for p in container.get("ports") or []}
        ports = {port: free_port(self.node_ip) for port in sorted(wanted)}
        folder = self.state_dir / self.cluster / "pods" / f"{meta['namespace']}_{meta['name']}"
        run = Running(uid=meta["uid"], namespace=meta["namespace"], name=meta["name"],
                      dir=folder, ports=ports)
        run.root.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        self.running[run.uid] = run
        self.publish_kwok(pod, run)
        return run

    def sync(self, pod: dict[str, Any], run: Running) -> None:
        t = time.monotonic()
        if t >= run.next_volumes:
            self.sync_volumes(pod, run)
            run.next_volumes = t + VOLUME_SYNC
        if run.popen is not None and run.popen.poll() is not None:
            self.exited(pod, run)
        if run.popen is None and t >= run.next_start:
            self.start(pod, run)
        if run.popen is not None and t >= run.next_probe:
            self.probe(pod, run)

    # --- volumes and process --------------------------------------------------------------

    def sync_volumes(self, pod: dict[str, Any], run: Running) -> None:
        container = discovery(pod) or {}
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            vol = volumes.get(mount["name"])
            if vol is None or mount.get("subPath"):
                continue
            state = run.volumes.setdefault(mount["name"], pod_fs.VolumeState())
            content = pod_fs.volume_files(pod, vol, self.source, state)
            if content is None:
                continue
            target = pod_fs.mount_target(run.root, mount["mountPath"])
            first = not state.digest
            if pod_fs.write_volume(target, content, state) and not first:
                self.say(f"{run.key}: volume {mount['name']} updated ({len(content)} files)")

    def kubeconfig(self, pod: dict[str, Any], run: Running) -> Path:
        """This cluster as current context; the credential is the pod's own SA token file."""
        container = discovery(pod) or {}
        mounted = any(m["mountPath"] == pod_fs.SA_MOUNT
                      for m in container.get("volumeMounts") or [])
        token = pod_fs.mount_target(run.root, pod_fs.SA_MOUNT) / "token"
        if not mounted:  # automount off: request the same kind of token ourselves
            value, _ = self.source.token(pod, None, 3607)
            token = run.dir / "token"
            files.write_atomic(token, value, mode=files.PRIVATE)
        ca = self.api.ca_file.read_text()
        import base64

        doc = {"apiVersion": "v1", "kind": "Config", "current-context": self.cluster,
               "clusters": [{"name": self.cluster, "cluster": {
                   "server": self.api.server,
                   "certificate-authority-data": base64.b64encode(ca.encode()).decode()}}],
               "users": [{"name": "pod", "user": {"tokenFile": str(token)}}],
               "contexts": [{"name": self.cluster,
                             "context": {"cluster": self.cluster, "user": "pod"}}]}
        return files.write_atomic(run.dir / "kubeconfig", json.dumps(doc, indent=1),
                                  mode=files.PRIVATE)

    def argv_env(self, pod: dict[str, Any], run: Running) -> tuple[list[str], dict[str, str]]:
        container = discovery(pod) or {}
        node = self.node(pod["spec"]["nodeName"])
        env = pod_fs.container_env(pod, container, node, self.source)
        labels = pod["metadata"].get("labels") or {}
        if "REVISION" not in env and labels.get("istio.io/rev"):
            env["REVISION"] = labels["istio.io/rev"]
        env.setdefault("HOSTNAME", pod["metadata"]["name"])
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        kept, found = split_args(container.get("args") or [])
        assert self.bin_dir is not None  # no process is started without binaries
        binary, note = binary_for(pod, self.bin_dir)
        if note:
            self.say(f"{run.key}: {note}")
        argv = [str(binary), *(pod_fs.expand(a, env) for a in kept),
                f"--kubeconfig={self.kubeconfig(pod, run)}",
                f"--ctrlz_address={self.node_ip}", f"--ctrlz_port={free_port(self.node_ip)}"]
        for flag, default in LISTEN.items():
            port = _port_of(found.get(flag, ""), default)
            argv.append(f"{flag}={self.node_ip}:{run.ports[port]}")
        return argv, env

    def node(self, name: str) -> dict[str, Any]:
        try:
            return dict(self.api.get(f"/api/v1/nodes/{name}"))
        except ApiError:
            return {}

    def start(self, pod: dict[str, Any], run: Running) -> None:
        argv, env = self.argv_env(pod, run)
        log = self.log_path(run)
        log.parent.mkdir(parents=True, exist_ok=True)
        run.popen = subprocess.Popen(argv, cwd=run.root, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, close_fds=True)
        files.write_atomic(self.pid_path(run), f"{run.popen.pid}\n")
        threading.Thread(target=_cri_log, args=(run.popen.stdout, log), daemon=True,
                         name=f"log {run.key}").start()
        run.started_at, run.ready = now(), False
        run.next_probe = time.monotonic() + self.probe_spec(pod).get("initialDelaySeconds", 0)
        self.say(f"{run.key}: started {Path(argv[0]).name} pid {run.popen.pid} in {run.root} "
                 f"(ports {', '.join(f'{c}->{h}' for c, h in run.ports.items())})")
        self.patch_status(pod, run)

    def exited(self, pod: dict[str, Any], run: Running) -> None:
        assert run.popen is not None
        run.last_exit = run.popen.returncode
        run.popen = None
        run.ready = False
        backoff = min(10.0 * 2 ** run.restarts, BACKOFF_MAX)
        run.restarts += 1
        run.next_start = time.monotonic() + backoff
        self.say(f"{run.key}: exited with code {run.last_exit}; restart in {backoff:.0f}s")
        self.patch_status(pod, run)

    def stop(self, run: Running, grace: float = 30.0) -> None:
        """TERM the process group, KILL after ``grace``; forget the pod's files."""
        self.running.pop(run.uid, None)
        if run.popen is not None and run.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.popen.pid, signal.SIGTERM)
            try:
                run.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.popen.pid, signal.SIGKILL)
                run.popen.wait(timeout=10)
            self.say(f"{run.key}: stopped (exit {run.popen.returncode})")
        self.pid_path(run).unlink(missing_ok=True)
        import shutil

        shutil.rmtree(run.dir, ignore_errors=True)

    def terminate(self, pod: dict[str, Any]) -> None:
        """A pod being deleted: stop its process, then remove the object (kubelet's part)."""
        meta = pod["metadata"]
        run = self.running.get(meta["uid"])
        if run is not None:
            self.stop(run, grace=float(pod["spec"].get("terminationGracePeriodSeconds", 30)))
        with contextlib.suppress(ApiError):
            self.api.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/"
                             f"{meta['name']}", {"gracePeriodSeconds": 0,
                                                 "preconditions": {"uid": meta["uid"]}})

    def log_path(self, run: Running) -> Path:
        return self.state_dir / "logs" / f"{self.cluster}-istiod-{run.namespace}-{run.name}.log"

    def pid_path(self, run: Running) -> Path:
        return pid_file(self.state_dir, self.cluster, f"istiod-{run.namespace}-{run.name}")
