"""Real workloads in the sandbox: pilot-agent and Istio's echo server, proxyless gRPC.

kwok runs no container, so a Service in the sandbox has no process behind it.  A
workload here is two real processes the sandbox starts on this machine, with a folder
that stands in for the container's root:
- ``pilot-agent proxy sidecar`` with ``DISABLE_ENVOY``: it asks the *real istiod of its
  own cluster* for a certificate (the chain is workload → that cluster's intermediate →
  meshctl's root) and writes it to ``OUTPUT_CERTS``, and it writes the gRPC xDS bootstrap;
- Istio's echo server (``--xds-grpc-server``), which takes its listener, its mTLS
  settings and its certificate from istiod through that bootstrap.  It answers with its
  cluster and version, which is what verify and ``canary --observe`` count.

Each workload has its own loopback address, 127.(20+slot).<cluster index>.(10+k): traffic
never leaves the machine.  Kubernetes refuses loopback addresses in EndpointSlices, so a
workload is registered as a WorkloadEntry (labels ``app``/``version``, its
ServiceAccount, its cluster's network) that an ordinary Service selects; istiods of other
clusters read it through their remote secrets.  The entry is created only after the
server says it is ready and deleted before the server stops, because nothing
health-checks WorkloadEntries.

What this is not: there is no Envoy.  It proves identity, trust across clusters,
discovery through remote secrets and routing by VirtualService/DestinationRule as
proxyless gRPC sees them; it says nothing about the sidecar or east-west gateways.

Processes are tracked like the rest of the sandbox (pid files, logs, ``sandbox.down``
stops them); each workload's record is ``<state>/w/<id>/workload.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meshctl.errors import ClusterError, UsageError
from meshctl.sandbox import procs
from meshctl.sandbox import workload_cluster as wc
from meshctl.sandbox.cluster import free_port, slot
from meshctl.sandbox.lifecycle import Sandbox

Progress = Callable[[str], None]

ROOT = "w"
PORT = 7070            # the echo server's gRPC port, served over xDS
HTTP_PORT, TCP_PORT = 8080, 9090   # the echo server opens these too; bound to its own IP
AGENT, SERVER, CLIENT = "pilot-agent", "echo-server", "echo-client"
BINARIES = (AGENT, SERVER, CLIENT)
CERTS = "var/run/secrets/workload"
PROXY_DIR = "etc/istio/proxy"
BOOTSTRAP = f"{PROXY_DIR}/grpc-bootstrap.json"
SOCKET_LIMIT = 107     # sun_path: the agent's XDS socket lives in PROXY_DIR
START_TIMEOUT = 60.0
#: ``MESHCTL_SANDBOX_WORKLOAD_CERT_TTL`` (e.g. ``2m``) asks istiod for short-lived workload
#: certificates, so tests see them roll; the agent renews at half their life.
TTL_ENV = "MESHCTL_SANDBOX_WORKLOAD_CERT_TTL"


@dataclass(frozen=True)
class Workload:
    """One started workload (or a caller: an agent with no server and no registration)."""

    id: int
    cluster: str
    namespace: str
    service: str
    version: str
    ip: str
    status_port: int
    server: bool
    entry: str = ""

    def root(self, sb: Sandbox) -> Path:
        return sb.state_dir / ROOT / str(self.id)

    def certs(self, sb: Sandbox) -> Path:
        return self.root(sb) / CERTS

    def bootstrap(self, sb: Sandbox) -> Path:
        return self.root(sb) / BOOTSTRAP

    @property
    def lane(self) -> str:
        return f"w{self.id}"


def records(sb: Sandbox) -> list[Workload]:
    """Every workload this sandbox started, from their records."""
    out = []
    for rec in sorted((sb.state_dir / ROOT).glob("*/workload.json")):
        try:
            out.append(Workload(**json.loads(rec.read_text())))
        except (ValueError, TypeError, OSError):
            continue
    return sorted(out, key=lambda w: w.id)


def _cluster_index(sb: Sandbox, cluster: str) -> int:
    try:
        return int(sb.cluster(cluster).ip.rsplit(".", 1)[1]) - 10
    except KeyError:
        names = ", ".join(c.name for c in sb.clusters)
        raise UsageError(f"--cluster {cluster}: no such sandbox cluster (have: {names})") from None


def _allocate(sb: Sandbox, cluster: str, taken: list[Workload]) -> tuple[int, str]:
    """A new workload id and a free loopback address in the cluster's block."""
    index = _cluster_index(sb, cluster)
    ids = {w.id for w in taken}
    used = {w.ip for w in taken}
    new_id = max(ids, default=0) + 1
    for k in range(10, 250):
        ip = f"127.{20 + slot()}.{index}.{k}"
        if ip not in used:
            return new_id, ip
    raise UsageError(f"{cluster}: no free workload address left (240 per cluster)")


def _binaries(sb: Sandbox) -> Path:
    """Links to the workload binaries under the state folder.

    ``sandbox.down`` stops only processes whose command line names the state folder
    (pid-reuse safety), so the processes are started through these links.
    """
    links = sb.state_dir / ROOT / "bin"
    links.mkdir(parents=True, exist_ok=True)
    for name in BINARIES:
        real = sb.bin_dir / name
        if not os.access(real, os.X_OK):
            raise UsageError(f"{real} is missing: the workload binaries come with "
                             "'meshctl sandbox.build'")
        link = links / name
        if not link.exists():
            link.symlink_to(real)
    return links


def _env(facts: wc.MeshFacts, w: Workload, root: Path, *, ttl: str) -> dict[str, str]:
    """pilot-agent's environment, as Istio's injector would give a proxyless pod."""
    proxy = {"discoveryAddress": facts.discovery, "configPath": str(root / PROXY_DIR),
             "statusPort": w.status_port}
    env = {
        **dict(facts.proxy_metadata),  # as the injector does; the settings below win
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root),
        "CLOUD_PLATFORM": "none",          # never probe a cloud metadata address
        "DISABLE_ENVOY": "true", "ISTIO_META_GENERATOR": "grpc",
        "OUTPUT_CERTS": str(root / CERTS), "GRPC_XDS_BOOTSTRAP": str(root / BOOTSTRAP),
        "PROXY_CONFIG": json.dumps(proxy),
        "POD_NAME": f"{w.service}-{w.version or 'caller'}-{w.id}",
        "POD_NAMESPACE": w.namespace, "SERVICE_ACCOUNT": w.service,
        "INSTANCE_IP": w.ip, "ISTIO_META_CLUSTER_ID": facts.cluster_id,
        "ISTIO_META_NETWORK": facts.network, "ISTIO_META_MESH_ID": facts.mesh_id,
        "TRUST_DOMAIN": facts.trust_domain, "ISTIOD_SAN": facts.istiod_san,
        "ISTIO_META_ISTIO_VERSION": "", "ISTIO_META_WORKLOAD_NAME": w.service,
        "ISTIO_METAJSON_LABELS": json.dumps(wc.labels(w.service, w.version)),
    }
    if ttl:
        env["SECRET_TTL"] = ttl
    return env


def _prepare_root(root: Path, token: str, root_cert: str) -> None:
    (root / PROXY_DIR).mkdir(parents=True, exist_ok=True)
    (root / CERTS).mkdir(parents=True, exist_ok=True)
    tokens = root / "var/run/secrets/tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    (tokens / "istio-token").write_text(token)
    (tokens / "istio-token").chmod(0o600)
    istio = root / "var/run/secrets/istio"
    istio.mkdir(parents=True, exist_ok=True)
    (istio / "root-cert.pem").write_text(root_cert)


def _wait(what: str, check: Callable[[], bool], proc: procs.Proc, timeout: float) -> None:
    def abort() -> str | None:
        if not procs.alive(proc.pid):
            return f"{proc.component} exited: {procs.tail(proc.log)}"
        return None
    try:
        procs.wait_for(what, lambda: check() or None, timeout=timeout, interval=0.1,
                       abort=abort)
    except procs.WaitTimeout as e:
        raise ClusterError(f"{e} (log: {proc.log})") from None


def _start_one(sb: Sandbox, w: Workload, facts: wc.MeshFacts, api: Any, links: Path,
               ttl: str) -> Workload:
    root = w.root(sb)
    if len(str(root / PROXY_DIR / "XDS")) > SOCKET_LIMIT:
        raise UsageError(f"sandbox state folder {sb.state_dir} is too long for the agent's "
                         "unix socket; set MESHCTL_SANDBOX_DIR to a shorter path")
    root.mkdir(parents=True, exist_ok=True)
    token = wc.token(api, w.namespace, w.service)
    _prepare_root(root, token, wc.root_cert(api, w.namespace))
    (root / "workload.json").write_text(json.dumps(asdict(w)))
    env = _env(facts, w, root, ttl=ttl)
    agent = procs.spawn(sb.state_dir, w.cluster, f"{w.lane}-agent",
                        [str(links / AGENT), "proxy", "sidecar"], env=env, cwd=root)
    _wait(f"{w.cluster}: workload certificate of {w.namespace}/{w.service}",
          lambda: (root / CERTS / "cert-chain.pem").exists()
          and (root / BOOTSTRAP).exists(), agent, START_TIMEOUT)
    if not w.server:
        return w
    ports = f"{PORT},{HTTP_PORT},{TCP_PORT}"
    server = procs.spawn(sb.state_dir, w.cluster, f"{w.lane}-server", [
        str(links / SERVER), f"--grpc={PORT}", f"--xds-grpc-server={PORT}",
        f"--port={HTTP_PORT}", f"--tcp={TCP_PORT}", f"--bind-ip={ports}",
        f"--version={w.version}", f"--cluster={w.cluster}"],
        env={**env, "INSTANCE_IP": w.ip}, cwd=root)
    # grpc-go's own word that istiod's listener arrived.  Not the echo server's "ready"
    # line: its self-check calls in plaintext, which a STRICT mesh refuses.
    serving = f'Listener "{w.ip}:{PORT}" entering mode: "SERVING"'
    refused = f'Listener "{w.ip}:{PORT}" entering mode: "NOT_SERVING"'
    what = f"{w.cluster}: echo server of {w.namespace}/{w.service} {w.version} serving"
    _wait(what, lambda: any(s in server.log.read_text(errors="replace")
                            for s in (serving, refused)), server, START_TIMEOUT)
    if serving not in server.log.read_text(errors="replace"):
        # Some istiod builds (the previous Istio that upgrade tests start from) send a
        # proxyless server no inbound listener until a Service selects it: register
        # first, then wait for SERVING.  Start it before callers need it.
        wc.register(api, w, facts)
        _wait(what, lambda: serving in server.log.read_text(errors="replace"), server,
              START_TIMEOUT)
        return w
    wc.register(api, w, facts)
    return w


def start(sb: Sandbox, *, cluster: str, namespace: str, service: str, version: str,
          replicas: int = 1, progress: Progress | None = None) -> list[Workload]:
    """Start ``replicas`` servers of ``service`` ``version`` in ``cluster``.

    Creates the namespace, ServiceAccount and Service when missing (labelled as the
    sandbox's, so ``delete`` removes only those), and registers each server once it is
    ready.  The namespace must already have Istio's root ConfigMap (istiod writes it).
    """
    say = progress or (lambda _m: None)
    wc.check_names(namespace=namespace, service=service, version=version, replicas=replicas)
    _cluster_index(sb, cluster)
    links = _binaries(sb)
    api = wc.api(sb, cluster)
    facts = wc.mesh_facts(api, namespace)
    wc.ensure_service(api, namespace, service, port=PORT)
    started = []
    for _ in range(replicas):
        wid, ip = _allocate(sb, cluster, records(sb))
        w = Workload(id=wid, cluster=cluster, namespace=namespace, service=service,
                     version=version, ip=ip, status_port=free_port("0.0.0.0"), server=True,
                     entry=f"{service}-{version}-{wid}")
        t0 = time.monotonic()
        try:
            started.append(_start_one(sb, w, facts, api, links, os.environ.get(TTL_ENV, "")))
        except BaseException:
            stop(sb, w, api)
            raise
        say(f"{cluster}: {namespace}/{service} {version} at {ip}:{PORT} serving "
            f"({time.monotonic() - t0:.1f}s)")
    return started


def start_caller(sb: Sandbox, *, cluster: str, namespace: str, service_account: str,
                 progress: Progress | None = None) -> Workload:
    """An agent alone: an identity (``service_account``) and routes for echo-client calls."""
    wc.check_names(namespace=namespace, service=service_account, version="", replicas=1)
    links = _binaries(sb)
    api = wc.api(sb, cluster)
    facts = wc.mesh_facts(api, namespace)
    wc.ensure_service_account(api, namespace, service_account)
    wid, ip = _allocate(sb, cluster, records(sb))
    w = Workload(id=wid, cluster=cluster, namespace=namespace, service=service_account,
                 version="", ip=ip, status_port=free_port("0.0.0.0"), server=False)
    try:
        _start_one(sb, w, facts, api, links, os.environ.get(TTL_ENV, ""))
    except BaseException:
        stop(sb, w, api)
        raise
    if progress:
        progress(f"{cluster}: caller {namespace}/{service_account} at {ip}")
    return w


def stop(sb: Sandbox, w: Workload, api: Any) -> None:
    """Deregister first (nothing health-checks the entry), then stop, then forget."""
    if w.entry:
        wc.unregister(api, w)
    for part in ("server", "agent"):
        pf = procs.pid_file(sb.state_dir, w.cluster, f"{w.lane}-{part}")
        try:
            pid = int(pf.read_text().strip())
        except (OSError, ValueError):
            continue
        if procs.alive(pid, sb.state_dir):
            procs.stop_group({pf.stem: pid}, 5.0)
        pf.unlink(missing_ok=True)
    shutil.rmtree(w.root(sb), ignore_errors=True)


def delete(sb: Sandbox, *, cluster: str, namespace: str, service: str,
           version: str = "") -> list[Workload]:
    """Stop matching workloads (every version when ``version`` is empty).

    The Service and ServiceAccount go too when ``start`` created them and no workload
    of this sandbox uses them any more.
    """
    api = wc.api(sb, cluster)
    gone = [w for w in records(sb) if w.cluster == cluster and w.namespace == namespace
            and w.service == service and (not version or w.version == version)]
    for w in gone:
        stop(sb, w, api)
    left = [w for w in records(sb) if w.cluster == cluster and w.namespace == namespace]
    if not any(w.service == service for w in left):
        wc.delete_created(api, namespace, service)
    return gone
