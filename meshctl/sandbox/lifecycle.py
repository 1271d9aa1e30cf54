"""Local clusters with real control planes and simulated nodes, for tests and for users.

docs/testing.md explains why: meshctl changes real clusters, so its tests run against real
API servers, real RBAC and a real scheduler, with kwok standing in for kubelets.  This
module is the one way to get them: ``build`` compiles the pinned Go modules under
``sandbox/`` into a cache keyed by their ``go.mod``/``go.sum``; ``up`` starts N clusters
and writes a kubeconfig plus cluster files (the same format as any cluster file);
``down`` stops every process it started (pid files, process groups) and removes the
state.  What runs now is :mod:`~meshctl.sandbox.status`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from meshctl import envvars, files
from meshctl.errors import ClusterError, UsageError
from meshctl.sandbox import cluster, procs
from meshctl.sandbox.build import (
    REPO,
    RUNTIME,
    SOURCES,
    bin_dir,
    missing_binaries,
)
from meshctl.sandbox.cluster import Shape
from meshctl.sandbox.lb import READY_FILE

Progress = Callable[[str], None]

STAGES = SOURCES / "kwok" / "stages.yaml"
MARKER = ".meshctl-sandbox"
STATE_FILE = "sandbox.json"
LB = "sandbox-lb"
MAX_CLUSTERS = 20
ISTIOD_ENV = "MESHCTL_SANDBOX_ISTIOD"  # on (default) | off: run the real istiod or not


# --- model -----------------------------------------------------------------------------

@dataclass(frozen=True)
class SandboxCluster:
    """One running cluster, as tests and users see it."""

    name: str
    context: str
    server: str
    ip: str
    kubeconfig: Path
    cluster_file: Path
    shape: Shape
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Sandbox:
    """A running sandbox: its folders, its clusters, the binaries it runs."""

    state_dir: Path
    bin_dir: Path
    kubeconfig: Path
    clusters_dir: Path
    clusters: tuple[SandboxCluster, ...]
    lb_pid: int | None = None

    def cluster(self, name: str) -> SandboxCluster:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(name)


def default_state_dir() -> Path:
    """``$MESHCTL_SANDBOX_DIR``, else ``.meshctl/sandbox`` in the current folder."""
    return Path(os.environ.get("MESHCTL_SANDBOX_DIR") or ".meshctl/sandbox")


def resolve_state_dir(state_dir: Path | str | None) -> Path:
    return Path(state_dir or default_state_dir()).expanduser().resolve()


def validate_shape(shape: Shape) -> Shape:
    """Refuse shapes the API server would refuse later, with a one-line reason."""
    from kubernetes.utils import parse_quantity

    if shape.nodes < 1:
        raise UsageError(f"--nodes must be at least 1, got {shape.nodes}")
    if shape.pods < 1:
        raise UsageError(f"--pods must be at least 1, got {shape.pods}")
    for flag, value in (("--cpu", shape.cpu), ("--memory", shape.memory)):
        try:
            quantity = parse_quantity(value)
        except (ValueError, TypeError):
            raise UsageError(f"{flag} {value!r} is not a Kubernetes quantity",
                             hint="e.g. --cpu 4 or 3500m, --memory 8Gi") from None
        if quantity <= 0:
            raise UsageError(f"{flag} must be positive, got {value!r}")
    return shape


def shapes(clusters: int | Sequence[Shape], *, nodes: int = 3, cpu: str = "4",
           memory: str = "8Gi", pods: int = 110) -> tuple[Shape, ...]:
    """N clusters of one shape, or an explicit list of shapes; validated."""
    if isinstance(clusters, int):
        if not 1 <= clusters <= MAX_CLUSTERS:
            raise UsageError(f"--clusters must be between 1 and {MAX_CLUSTERS}, got {clusters}")
        listed = [Shape(nodes=nodes, cpu=str(cpu), memory=str(memory), pods=pods)] * clusters
    else:
        listed = list(clusters)
        if not 1 <= len(listed) <= MAX_CLUSTERS:
            raise UsageError(f"between 1 and {MAX_CLUSTERS} clusters, got {len(listed)}")
    return tuple(validate_shape(s) for s in listed)


# --- up --------------------------------------------------------------------------------

def up(state_dir: Path | str | None = None, *, clusters: int | Sequence[Shape] = 2,
       nodes: int = 3, cpu: str = "4", memory: str = "8Gi", pods: int = 110,
       binaries: Path | None = None, progress: Progress | None = None,
       istiod: bool | None = None) -> Sandbox:
    """Start the clusters in parallel and wait until each is usable; write their files.

    ``istiod`` (default: ``$MESHCTL_SANDBOX_ISTIOD`` != "off"): run the real istiod for
    istiod pods (``sandbox.istiod``); off, istiod pods are only marked Ready and the
    webhook stand-in answers every webhook (lighter, and proves less).

    On any failure (or Ctrl-C) everything already started is stopped and only the logs
    are kept, so the error's pointer to a log still leads somewhere.
    """
    say = progress or (lambda _m: None)
    # every environment variable first: a typo is one line before anything starts
    if istiod is None:
        istiod = envvars.choice(ISTIOD_ENV, ("on", "off"), default="on") == "on"
    procs.gogc()
    cluster.slot()
    state = resolve_state_dir(state_dir)
    wanted = shapes(clusters, nodes=nodes, cpu=cpu, memory=memory, pods=pods)
    bins = binaries or bin_dir()
    if missing := missing_binaries(bins, RUNTIME):
        raise UsageError(f"sandbox binaries missing in {bins}: {', '.join(missing)}",
                         hint="run 'meshctl sandbox.build' (or set MESHCTL_SANDBOX_BIN)")
    if not STAGES.is_file():
        raise UsageError(f"kwok stages not found at {STAGES}",
                         hint="run meshctl from a source checkout")
    _claim(state)
    try:
        plans = [cluster.plan(state, i, shape) for i, shape in enumerate(wanted, start=1)]
        creds = {p.name: _prepare(p) for p in plans}
        say(f"starting {len(plans)} cluster(s) in {state}")
        _start_all(plans, bins, say)
        sandbox = _write_outputs(state, bins, plans, creds)
        lb_pid = _start_lb(state, plans, bins, istiod)
        sandbox = replace(sandbox, lb_pid=lb_pid)
        # The record for status/down/load; pid files stay the truth for stopping.
        files.write_atomic(state / STATE_FILE, json.dumps(_to_json(sandbox), indent=2))
        return load(state)
    except BaseException:
        procs.stop_all(state)
        _scrub_keep_logs(state)
        raise


def _claim(state: Path) -> None:
    """Refuse a live sandbox; clear a stale one (processes gone, e.g. after a reboot)."""
    if state.exists():
        if not (state / MARKER).exists():
            if any(state.iterdir()):
                raise UsageError(f"{state} exists and is not a sandbox state folder",
                                 hint="pick another folder with MESHCTL_SANDBOX_DIR")
        elif any(procs.alive(pid, state) for pid in procs.read_pids(state).values()):
            raise UsageError(f"sandbox already up in {state}",
                             hint="'meshctl sandbox.status' shows it; 'sandbox.down' stops it")
        else:
            shutil.rmtree(state)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    (state / MARKER).write_text("state of a meshctl sandbox; 'meshctl sandbox.down' removes it\n")


def _prepare(p: cluster.ClusterPlan) -> dict[str, cluster.Credential]:
    clients = cluster.write_pki(p)
    cluster.write_component_kubeconfigs(p, clients)
    return clients


def _start_all(plans: list[cluster.ClusterPlan], bins: Path, say: Progress) -> None:
    """Start every cluster at once (each waits mostly on its own API server).

    The first failure (or Ctrl-C) cancels the other starts, so the caller's cleanup
    runs after every thread has stopped spawning.
    """
    started = time.monotonic()
    cancel = threading.Event()
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=len(plans), thread_name_prefix="sandbox") as pool:
        futures = {pool.submit(cluster.start, p, bins, STAGES, cancel): p.name for p in plans}
        try:
            for fut in as_completed(futures):
                try:
                    fut.result()
                    say(f"{futures[fut]} ready after {time.monotonic() - started:.1f}s")
                except Exception as e:
                    cancel.set()
                    errors.append(e)
        except BaseException:
            cancel.set()
            raise
    if errors:
        # The root cause, not the "cancelled" errors it caused in the other clusters.
        first = next((e for e in errors if "cancelled" not in str(e)), errors[0])
        if isinstance(first, ClusterError):
            raise first
        raise ClusterError(f"sandbox start failed: {type(first).__name__}: {first}") from first


def _write_outputs(state: Path, bins: Path, plans: list[cluster.ClusterPlan],
                   creds: dict[str, dict[str, cluster.Credential]]) -> Sandbox:
    """The user-facing files: one kubeconfig for all clusters, cluster files, mesh.yaml."""
    kubeconfig = state / "kubeconfig"
    contexts = [cluster.KubeContext(p.name, p.server, p.path("pki/ca.crt").read_bytes(),
                                    creds[p.name]["admin"]) for p in plans]
    files.write_atomic(kubeconfig, yaml.safe_dump(
        cluster.kubeconfig(contexts, plans[0].name), sort_keys=False), mode=files.PRIVATE)
    clusters_dir = state / "clusters"
    out = []
    for p in plans:
        path = clusters_dir / f"{p.name}.yaml"
        files.write_atomic(path, yaml.safe_dump(cluster_file(p, kubeconfig), sort_keys=False))
        ports = {"etcd": p.etcd_port, "etcd-peer": p.peer_port, "kube-apiserver": p.api_port,
                 "kwok-kubelet": p.kubelet_port}
        out.append(SandboxCluster(name=p.name, context=p.name, server=p.server, ip=p.ip,
                                  kubeconfig=kubeconfig, cluster_file=path, shape=p.shape,
                                  ports=ports, pids=_cluster_pids(state, p.name)))
    files.write_atomic(clusters_dir / "mesh.yaml",
                       yaml.safe_dump(mesh_file(state), sort_keys=False))
    return Sandbox(state_dir=state, bin_dir=bins, kubeconfig=kubeconfig,
                   clusters_dir=clusters_dir, clusters=tuple(out))


def cluster_file(p: cluster.ClusterPlan, kubeconfig: Path) -> dict[str, Any]:
    """A cluster file for this sandbox cluster; apiServer is loopback, set explicitly."""
    return {"name": p.name, "context": p.name, "kubeconfig": str(kubeconfig),
            "network": f"network{p.index}", "role": "primary", "apiServer": p.server,
            "injectNamespaces": ["default"]}


def mesh_file(state: Path) -> dict[str, Any]:
    """mesh.yaml with an ECDSA root under the state folder (fast to generate in tests)."""
    return {"meshID": "mesh1", "trustDomain": "cluster.local",
            "ca": {"dir": str(state / "ca"), "key": "ecdsa-p256", "rootDays": 3650,
                   "intermediateDays": 730, "organization": "meshctl"}}


def _start_lb(state: Path, plans: list[cluster.ClusterPlan], bins: Path,
              istiod: bool = True) -> int:
    """Start the controller process (LoadBalancer loop, istiod's kubelet, webhook stand-in)
    for all clusters and wait for its first full sync."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    argv = [sys.executable, "-m", "meshctl.sandbox.lb", str(state), f"--bin={bins}",
            *([] if istiod else ["--no-istiod"]), *[f"{p.name}={p.server}" for p in plans]]
    proc = procs.spawn(state, "sandbox", "lb", argv, env=env)
    try:
        procs.wait_for("LoadBalancer loop", lambda: (state / READY_FILE).exists(),
                       timeout=60, abort=lambda: None if procs.alive(proc.pid) else "exited")
    except procs.WaitTimeout as e:
        raise ClusterError(f"{LB} did not come up ({e}); log {proc.log}: "
                           f"{procs.tail(proc.log, 3)}") from None
    return proc.pid


def _scrub_keep_logs(state: Path) -> None:
    """After a failed up: remove keys, data and configs, keep logs/ for the error's pointer."""
    if not (state / MARKER).exists():
        return
    for entry in state.iterdir():
        if entry.name in ("logs", MARKER):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


# --- state, down, status ---------------------------------------------------------------

def _to_json(sb: Sandbox) -> dict[str, Any]:
    data = asdict(sb)
    return json.loads(json.dumps(data, default=str))


def load(state_dir: Path | str | None = None) -> Sandbox:
    """The sandbox recorded in a state folder (UsageError if there is none)."""
    state = resolve_state_dir(state_dir)
    try:
        raw = json.loads((state / STATE_FILE).read_text())
    except FileNotFoundError:
        raise UsageError(f"no sandbox in {state}", hint="'meshctl sandbox.up' starts one") from None
    clusters = tuple(
        SandboxCluster(name=c["name"], context=c["context"], server=c["server"], ip=c["ip"],
                       kubeconfig=Path(c["kubeconfig"]), cluster_file=Path(c["cluster_file"]),
                       shape=Shape(**c["shape"]), ports=c.get("ports", {}),
                       pids=_cluster_pids(state, c["name"]))
        for c in raw["clusters"])
    return Sandbox(state_dir=state, bin_dir=Path(raw["bin_dir"]),
                   kubeconfig=Path(raw["kubeconfig"]), clusters_dir=Path(raw["clusters_dir"]),
                   clusters=clusters, lb_pid=procs.read_pids(state).get("sandbox-lb"))


def _cluster_pids(state: Path, name: str) -> dict[str, int]:
    """``{component: pid}`` of one cluster, from its pid files."""
    return {k.split("-", 1)[1]: v for k, v in procs.read_pids(state).items()
            if k.startswith(name + "-")}


@dataclass(frozen=True)
class DownResult:
    state_dir: Path
    stopped: int
    killed: tuple[str, ...]
    removed: bool


def down(state_dir: Path | str | None = None) -> DownResult:
    """Stop every process of the sandbox (TERM, then KILL) and remove its state folder."""
    state = resolve_state_dir(state_dir)
    if not state.exists():
        return DownResult(state, 0, (), False)
    if not (state / MARKER).exists():
        raise UsageError(f"{state} is not a sandbox state folder; refusing to remove it")
    running = sum(1 for pid in procs.read_pids(state).values() if procs.alive(pid, state))
    killed = procs.stop_all(state)
    shutil.rmtree(state)
    return DownResult(state, running, tuple(killed), True)
