"""The sandbox plays kubelet for istiod: the real ``pilot-discovery`` runs for each istiod pod.

kwok stands in for kubelets and runs no container.  For istiod that would leave Istio's
webhooks, its CA and its multi-cluster discovery untested, so for every pod labelled
``app=istiod`` with a ``discovery`` container that is scheduled on a node, this
controller does what kubelet would:
- materialises the container's volumes (``cacerts`` Secret, the ServiceAccount token,
  any ConfigMap) under a folder of its own that stands in for the container's root,
  and keeps them current with atomic ``..data`` swaps (``sandbox_pod``);
- starts ``pilot-discovery`` there with the pod's args and env (``REVISION``,
  ``CLUSTER_ID``, ``POD_NAME``, ``POD_NAMESPACE`` … as the chart sets them; ``REVISION``
  from the pod's ``istio.io/rev`` label only if the env lacks it), a kubeconfig whose
  current context is this cluster and whose credential is the pod's own bound
  ServiceAccount token (so istiod works with exactly the RBAC its chart grants), and
  its five listen addresses moved to free ports on the node's 127.x address, so any
  number of istiods on one machine never clash;
- probes the readiness probe the pod declares and writes ``Ready`` into the pod status
  (kwok's stage for these pods leaves them Running but not Ready), restarts a process
  that exits with kubelet's back-off, and on deletion stops the process (TERM, KILL
  after the grace period) before removing the pod;
- publishes kwok ``PortForward``, ``Exec`` and ``Logs`` objects for the pod, so the API
  server's port-forward, exec and logs reach this process through kwok's kubelet API;
- routes each Service ClusterIP:port selecting a running istiod to its ready process
  (``sandbox_proxy``): the API server's webhook calls reach the real istiod.

Runs as threads of the sandbox's controller process (``sandbox_lb``), one per cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from meshctl import files
from meshctl import sandbox_pod as pod_fs
from meshctl.sandbox_api import Api, ApiError
from meshctl.sandbox_cluster import free_port
from meshctl.sandbox_procs import alive, pid_file
from meshctl.sandbox_proxy import Address, ServiceProxy

SELECTOR = "app=istiod"
CONTAINER = "discovery"
BINARY = "pilot-discovery"
# pilot-discovery's listen flags and their defaults (pilot/cmd/pilot-discovery/app/cmd.go).
LISTEN = {"--httpAddr": 8080, "--httpsAddr": 15017, "--grpcAddr": 15010,
          "--secureGRPCAddr": 15012, "--monitoringAddr": 15014}
OWNED_FLAGS = (*LISTEN, "--kubeconfig", "--ctrlz_port", "--ctrlz_address")
KWOK = "/apis/kwok.x-k8s.io/v1alpha1/namespaces"
TICK = 1.0
VOLUME_SYNC = 2.0
BACKOFF_MAX = 300.0


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_istiod(pod: dict[str, Any]) -> bool:
    return (pod.get("metadata", {}).get("labels") or {}).get("app") == "istiod"


def discovery(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The pod's ``discovery`` container if it runs ``pilot-discovery discovery``."""
    for c in pod.get("spec", {}).get("containers") or []:
        if c.get("name") == CONTAINER and (c.get("args") or [""])[0] == "discovery":
            return dict(c)
    return None


def selects_istiod(svc: dict[str, Any]) -> bool:
    """A Service whose backends are istiod pods, which the sandbox runs for real.

    The webhook stand-in leaves these alone: their webhooks reach the real istiod.
    """
    return ((svc.get("spec") or {}).get("selector") or {}).get("app") == "istiod"


def split_args(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The pod's args without the flags the sandbox sets, and those flags' pod values."""
    kept: list[str] = []
    found: dict[str, str] = {}
    it = iter(args)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name in OWNED_FLAGS:
            found[name] = value if eq else next(it, "")
            continue
        kept.append(arg)
    return kept, found


def _port_of(addr: str, default: int) -> int:
    tail = addr.rsplit(":", 1)[-1] if addr else ""
    return int(tail) if tail.isdigit() else default


@dataclass
class Running:
    """One istiod process and what the sandbox keeps for its pod."""

    uid: str
    namespace: str
    name: str
    dir: Path
    ports: dict[int, int]                 # container port -> host port on the node IP
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    ready: bool = False
    started_at: str = ""
    last_exit: int | None = None
    next_start: float = 0.0
    next_probe: float = 0.0
    next_volumes: float = 0.0
    volumes: dict[str, pod_fs.VolumeState] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Kubelet:
    """Runs istiod pods of one cluster; see the module docstring."""

    def __init__(self, state_dir: Path, cluster: str, api: Api, node_ip: str, bin_dir: Path,
                 proxy: ServiceProxy) -> None:
        self.state_dir = state_dir
        self.cluster = cluster
        self.api = api
        self.node_ip = node_ip
        self.binary = bin_dir / BINARY
        self.proxy = proxy
        self.source = pod_fs.Source(api)
        self.pods: dict[str, dict[str, Any]] = {}
        self.running: dict[str, Running] = {}
        self.routes: dict[Address, list[Address]] = {}
        self.lock = threading.Lock()
        self.synced = threading.Event()

    def say(self, message: str) -> None:
        print(f"{self.cluster}: istiod: {message}", flush=True)

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
            if discovery(pod) is None:
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
        argv = [str(self.binary), *(pod_fs.expand(a, env) for a in kept),
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
        self.say(f"{run.key}: started pid {run.popen.pid} in {run.root} "
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

    # --- readiness and status ------------------------------------------------------------

    @staticmethod
    def probe_spec(pod: dict[str, Any]) -> dict[str, Any]:
        return dict((discovery(pod) or {}).get("readinessProbe") or {})

    def probe(self, pod: dict[str, Any], run: Running) -> None:
        spec = self.probe_spec(pod)
        run.next_probe = time.monotonic() + float(spec.get("periodSeconds", 3))
        http = spec.get("httpGet")
        ready = True
        if http:
            port = pod_fs.container_port(discovery(pod) or {}, http.get("port", 80))
            host_port = run.ports.get(port or -1)
            url = f"http://{self.node_ip}:{host_port}{http.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=float(spec.get("timeoutSeconds", 1))):
                    ready = True
            except Exception:  # refused, 503 while syncing, timeout: all "not ready"
                ready = False
        if ready != run.ready:
            run.ready = ready
            self.say(f"{run.key}: ready={ready}")
            self.patch_status(pod, run)

    def patch_status(self, pod: dict[str, Any], run: Running | None) -> None:
        """Ready/ContainersReady and container states, as kubelet reports them."""
        status = pod.get("status") or {}
        if status.get("phase") != "Running":
            return  # kwok has not played its stage yet; the next probe patches again
        ready = bool(run and run.ready)
        flag = "True" if ready else "False"
        conditions = [c for c in status.get("conditions") or []
                      if c.get("type") not in ("Ready", "ContainersReady")]
        conditions += [{"type": t, "status": flag, "lastTransitionTime": now()}
                       for t in ("Ready", "ContainersReady")]
        statuses = []
        for c in pod["spec"]["containers"]:
            mine = run is not None and c["name"] == CONTAINER
            state: dict[str, Any] = {"running": {"startedAt": (run.started_at if mine and run
                                                               else now())}}
            if mine and run is not None and run.popen is None:
                state = {"waiting": {"reason": "CrashLoopBackOff",
                                     "message": f"exit code {run.last_exit}"}}
            statuses.append({"name": c["name"], "image": c.get("image", ""), "imageID": "",
                             "ready": ready if mine else run is None or ready,
                             "started": "running" in state,
                             "restartCount": run.restarts if mine and run else 0,
                             "state": state})
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):
            self.api.merge_patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
                                 "/status", {"status": {"conditions": conditions,
                                                        "containerStatuses": statuses}})

    def mark_ready_without_process(self, pod: dict[str, Any]) -> None:
        """An app=istiod pod without a discovery container: Ready, as kwok would mark it."""
        status = pod.get("status") or {}
        if status.get("phase") == "Running" and not any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or []):
            self.patch_status(pod, None)

    # --- kwok's kubelet API and the Service routes ---------------------------------------

    def publish_kwok(self, pod: dict[str, Any], run: Running) -> None:
        """PortForward, Exec and Logs for this pod, owned by it (GC removes them with it)."""
        meta = pod["metadata"]
        owner = [{"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}]
        log = str(self.log_path(run))
        specs = {
            "portforwards": ("PortForward", {"forwards": [
                {"ports": [c], "target": {"port": h, "address": self.node_ip}}
                for c, h in run.ports.items()]}),
            "execs": ("Exec", {"execs": [{"containers": [CONTAINER],
                                          "local": {"workDir": str(run.root)}}]}),
            "logs": ("Logs", {"logs": [{"containers": [CONTAINER], "logsFile": log,
                                        "follow": True}]}),
        }
        for plural, (kind, spec) in specs.items():
            body = {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": kind,
                    "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                                 "ownerReferences": owner}, "spec": spec}
            path = f"{KWOK}/{meta['namespace']}/{plural}"
            try:
                self.api.post(path, body)
            except ApiError as e:
                if e.status != 409:
                    raise
                self.api.request("PUT", f"{path}/{meta['name']}", {
                    **body, "metadata": {**body["metadata"], "resourceVersion": self.api.get(
                        f"{path}/{meta['name']}")["metadata"]["resourceVersion"]}})

    def sync_routes(self, pods: dict[str, dict[str, Any]]) -> None:
        """ClusterIP:port of every Service selecting a running istiod → its ready ports."""
        namespaces = {r.namespace for r in self.running.values()}
        routes: dict[Address, list[Address]] = {}
        for ns in sorted(namespaces):
            for svc in self.api.get(f"/api/v1/namespaces/{ns}/services")["items"]:
                spec = svc.get("spec") or {}
                selector = spec.get("selector") or {}
                ip = spec.get("clusterIP")
                if not selector or not ip or ip == "None":
                    continue
                for run in self.running.values():
                    pod = pods.get(run.uid)
                    labels = (pod or {}).get("metadata", {}).get("labels") or {}
                    if run.namespace != ns or not selector.items() <= labels.items():
                        continue
                    for sp in spec.get("ports") or []:
                        target = pod_fs.container_port(discovery(pod or {}) or {},
                                                       sp.get("targetPort", sp["port"]))
                        backends = routes.setdefault((ip, int(sp["port"])), [])
                        if run.ready and target in run.ports:
                            backends.append((self.node_ip, run.ports[target]))
        if routes != self.routes:
            self.routes = routes
            self.proxy.set_routes(_merge_routes())


# All clusters share one proxy; each Kubelet's table is merged before applying.
KUBELETS: list[Kubelet] = []


def _merge_routes() -> dict[Address, list[Address]]:
    merged: dict[Address, list[Address]] = {}
    for k in KUBELETS:
        for front, backends in k.routes.items():
            merged.setdefault(front, []).extend(backends)
    return merged


def _cri_log(stream: IO[bytes] | None, log: Path) -> None:
    """Write the process's output in the CRI log format kwok's Logs reader parses."""
    if stream is None:
        return
    with open(log, "ab", buffering=0) as out:
        for line in stream:
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
            out.write(stamp + b" stdout F " + line.rstrip(b"\n") + b"\n")


def alive_processes(state_dir: Path, cluster: str) -> list[str]:
    """Pid-file names of this cluster's istiod processes that are running (for status)."""
    return [pf.stem for pf in (state_dir / "pids").glob(f"{cluster}-istiod-*.pid")
            if alive(int(pf.read_text().strip() or 0), state_dir)]
