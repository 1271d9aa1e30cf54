"""istiod pods as kubelet reports them: readiness, status, kwok's kubelet API, Service routes.

The half of ``sandbox.istiod`` that tells the cluster about the processes it runs: the
pod's ``Ready`` from its own readiness probe, container states and restarts in the pod
status, kwok ``PortForward``/``Exec``/``Logs`` objects so the API server's
port-forward, exec and logs reach the process, and the Service ClusterIP routes that
``sandbox.proxy`` serves.  Shared helpers and the per-pod record live here too.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from meshctl.sandbox import build
from meshctl.sandbox import pod as pod_fs
from meshctl.sandbox.api import Api, ApiError
from meshctl.sandbox.proxy import Address, ServiceProxy

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


def image_tag(image: str) -> str:
    """``1.31-dev.20260827`` from ``registry.istio.io/testing/pilot:1.31-dev.20260827``
    ('' without a tag; a registry's port and a ``@sha256:`` digest are not tags)."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.rsplit(":", 1)[1] if ":" in name else ""


def binary_for(pod: dict[str, Any], bin_dir: Path) -> tuple[Path, str | None]:
    """The pilot-discovery build that rendered this pod, and a note when it is not that.

    istioctl stamps its build's version as the image tag (``build.ISTIOD_BINARIES``),
    and an istiod of one snapshot cannot serve another's chart (an older injector fails
    on fields the newer chart sets), so each revision's pod runs its own build.  Any
    other tag (an unstamped build, someone else's image) runs the current build, as
    does a known tag whose build is not in ``bin_dir``; the note says so for the log.
    """
    tag = image_tag(str((discovery(pod) or {}).get("image", "")))
    name = build.ISTIOD_BINARIES.get(tag)
    if name == BINARY:
        return bin_dir / BINARY, None
    if name is None:
        known = ", ".join(sorted(build.ISTIOD_BINARIES))
        return bin_dir / BINARY, (f"image tag {tag or '(none)'!r} is no sandbox build's "
                                  f"({known}): running {BINARY}")
    if not os.access(bin_dir / name, os.X_OK):
        return bin_dir / BINARY, (f"image tag {tag!r} is {name}'s, not built in {bin_dir}: "
                                  f"running {BINARY} ('meshctl sandbox.build' builds it)")
    return bin_dir / name, None


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



class Reporting:
    """Status, kubelet API objects and routes for a :class:`Kubelet` (mixed into it)."""

    api: Api
    cluster: str
    node_ip: str
    proxy: ServiceProxy
    running: dict[str, Running]
    routes: dict[Address, list[Address]]

    def say(self, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
        print(f"{stamp} {self.cluster}: istiod: {message}", flush=True)

    def log_path(self, run: Running) -> Path:
        raise NotImplementedError

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
        ready = run.ready if run is not None else True  # no process: Ready as kwok marks
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
KUBELETS: list[Reporting] = []


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
