"""One sandbox cluster: its plan, its files, the command line of each component, its start.

A cluster is etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok,
all bound to the cluster's own loopback address (127.0.0.(10+i)) on free ports, so
several clusters (and several sandboxes) share one machine without clashing and
nothing ever listens on, or dials, a non-loopback address: even the Service range is
a loopback /16, so a webhook or aggregated API the API server calls through a
ClusterIP fails fast with "connection refused" instead of leaving the machine.

Builders here are pure (plans, kubeconfigs, node bodies, argv lists); ``start`` is the
one function with side effects, and it raises :class:`ComponentFailed` naming the
component and its log when anything does not come up.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshctl import files
from meshctl.ca import pki
from meshctl.errors import ClusterError, UsageError
from meshctl.sandbox import procs
from meshctl.sandbox.api import Api
from meshctl.sandbox.kwok import established, install_crds, kwok_argv, node_body
from meshctl.sandbox.procs import Proc, WaitTimeout, alive, exit_code, spawn, tail, wait_for

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
PKI_KEY = "ecdsa-p256"
CERT_DAYS = 365

ETCD_TIMEOUT = 60.0
API_TIMEOUT = 180.0
READY_TIMEOUT = 180.0


@dataclass(frozen=True)
class Shape:
    """What each cluster's nodes look like: count, and allocatable cpu / memory / pods."""

    nodes: int = 3
    cpu: str = "4"
    memory: str = "8Gi"
    pods: int = 110


@dataclass(frozen=True)
class ClusterPlan:
    """Everything decided before a cluster starts: name, address, ports, folders."""

    index: int
    state_dir: Path
    shape: Shape
    etcd_port: int
    peer_port: int
    api_port: int
    kubelet_port: int = 0  # kwok's kubelet API (port-forward, exec, logs)

    @property
    def name(self) -> str:
        return f"cluster{self.index}"

    @property
    def ip(self) -> str:
        return node_ip(self.index)

    @property
    def server(self) -> str:
        return f"https://{self.ip}:{self.api_port}"

    @property
    def service_cidr(self) -> str:
        return f"127.{100 + 10 * slot() + self.index}.0.0/16"

    @property
    def service_ip(self) -> str:
        """The ``kubernetes`` Service's ClusterIP: the first address of the range."""
        return f"127.{100 + 10 * slot() + self.index}.0.1"

    @property
    def pod_cidr(self) -> str:
        """kwok hands pod IPs out of this; EndpointSlices refuse loopback, so it is 10/8.

        Nothing ever dials these addresses: there are no containers behind them.
        """
        return f"10.{self.index}.0.1/16"

    @property
    def dir(self) -> Path:
        return self.state_dir / self.name

    def path(self, name: str) -> Path:
        return self.dir / name

    def api(self) -> Api:
        return Api(self.server, self.path("pki/ca.crt"), self.path("pki/admin.crt"),
                   self.path("pki/admin.key"))


def free_port(ip: str) -> int:
    """A port nothing listens on at ``ip`` right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def slot() -> int:
    """``$MESHCTL_SANDBOX_SLOT`` (0-9, default 0): which loopback addresses a sandbox uses.

    Cluster *i* of slot *s* listens on 127.0.s.(10+i) and has the Service range
    127.(100+10s+i).0.0/16, so sandboxes in different slots (two developers, or two test
    runs, on one machine) never bind the same ClusterIP or node address.
    """
    raw = os.environ.get("MESHCTL_SANDBOX_SLOT", "0")
    if not raw.isdigit() or int(raw) > 9:
        raise UsageError(f"MESHCTL_SANDBOX_SLOT={raw!r}: expected a number from 0 to 9")
    return int(raw)


def node_ip(index: int) -> str:
    """Cluster ``index``'s own loopback address (API server, LoadBalancer, kubelet)."""
    return f"127.0.{slot()}.{10 + index}"


def plan(state_dir: Path, index: int, shape: Shape) -> ClusterPlan:
    ip = node_ip(index)
    ports: list[int] = []
    while len(ports) < 4:
        port = free_port(ip)
        if port not in ports:
            ports.append(port)
    return ClusterPlan(index=index, state_dir=state_dir, shape=shape, etcd_port=ports[0],
                       peer_port=ports[1], api_port=ports[2], kubelet_port=ports[3])


# --- PKI and kubeconfigs ---------------------------------------------------------------

@dataclass(frozen=True)
class Credential:
    """A client identity: certificate and key PEM (kept in memory, written 0600)."""

    cert: bytes
    key: bytes


def write_pki(p: ClusterPlan) -> dict[str, Credential]:
    """Cluster CA, API serving cert, SA signing key, and client certs for each identity.

    Returns the client credentials by role (admin, controller-manager, scheduler).
    """
    ca_key = pki.generate_key(PKI_KEY)
    ca_name = pki.name(common_name=f"meshctl-sandbox-{p.name}-ca", organization="meshctl")
    ca = pki.self_signed_ca(subject=ca_name, key=ca_key, days=CERT_DAYS)

    def leaf(cn: str, *, org: str | None = None, server: bool = False,
             dns: Sequence[str] = (), ips: Sequence[str] = ()) -> Credential:
        key = pki.generate_key(PKI_KEY)
        cert = pki.sign(subject=pki.name(common_name=cn, organization=org),
                        public_key=key.public_key(), issuer_name=ca_name, issuer_key=ca_key,
                        usage=pki.Usage(server=server, client=not server), days=CERT_DAYS,
                        dns=dns, ips=ips, issuer_cert=ca)
        return Credential(pki.cert_pem(cert), pki.key_pem(key))

    serving = leaf("kube-apiserver", server=True,
                   dns=["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                        "kubernetes.default.svc.cluster.local", "localhost"],
                   ips=[p.ip, p.service_ip, "127.0.0.1"])
    # kwok serves the kubelet API (port-forward, exec, logs) on the node address with
    # this certificate; the API server checks it against the cluster CA.
    kubelet = leaf("kwok-kubelet", server=True, ips=[p.ip])
    kubelet_client = leaf("kube-apiserver-kubelet-client", org="system:masters")
    clients = {
        "admin": leaf("meshctl-sandbox-admin", org="system:masters"),
        "controller-manager": leaf("system:kube-controller-manager"),
        "scheduler": leaf("system:kube-scheduler"),
    }
    out = p.path("pki")
    files.write_atomic(out / "ca.crt", pki.cert_pem(ca))
    files.write_atomic(out / "ca.key", pki.key_pem(ca_key), mode=files.PRIVATE)
    files.write_atomic(out / "apiserver.crt", serving.cert)
    files.write_atomic(out / "apiserver.key", serving.key, mode=files.PRIVATE)
    for stem, cred in (("kubelet", kubelet), ("kubelet-client", kubelet_client)):
        files.write_atomic(out / f"{stem}.crt", cred.cert)
        files.write_atomic(out / f"{stem}.key", cred.key, mode=files.PRIVATE)
    files.write_atomic(out / "admin.crt", clients["admin"].cert)
    files.write_atomic(out / "admin.key", clients["admin"].key, mode=files.PRIVATE)
    # RSA for ServiceAccount tokens (RS256), what every JWT consumer understands.
    files.write_atomic(out / "sa.key", pki.key_pem(pki.generate_key("rsa-2048")),
                       mode=files.PRIVATE)
    return clients


@dataclass(frozen=True)
class KubeContext:
    """One context of a kubeconfig: its name, the server and CA, a client credential."""

    name: str
    server: str
    ca: bytes
    credential: Credential


def kubeconfig(contexts: Sequence[KubeContext], current: str) -> dict[str, Any]:
    """A kubeconfig with certificates embedded, so the file works wherever it is copied."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": current,
        "clusters": [{"name": c.name, "cluster": {"server": c.server,
                                                  "certificate-authority-data": b64(c.ca)}}
                     for c in contexts],
        "users": [{"name": c.name, "user": {"client-certificate-data": b64(c.credential.cert),
                                            "client-key-data": b64(c.credential.key)}}
                  for c in contexts],
        "contexts": [{"name": c.name, "context": {"cluster": c.name, "user": c.name}}
                     for c in contexts],
        "preferences": {},
    }


def write_component_kubeconfigs(p: ClusterPlan, clients: dict[str, Credential]) -> None:
    """One kubeconfig per component identity, under the cluster's folder, mode 0600."""
    ca = p.path("pki/ca.crt").read_bytes()
    for role, cred in clients.items():
        doc = kubeconfig([KubeContext(p.name, p.server, ca, cred)], p.name)
        files.write_atomic(p.path(f"{role}.kubeconfig"), json.dumps(doc, indent=1),
                           mode=files.PRIVATE)


# --- command lines ---------------------------------------------------------------------

def etcd_argv(p: ClusterPlan, bin_dir: Path) -> list[str]:
    client = f"http://{p.ip}:{p.etcd_port}"
    peer = f"http://{p.ip}:{p.peer_port}"
    return [str(bin_dir / "etcd"), f"--name={p.name}", f"--data-dir={p.path('etcd')}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={p.name}={peer}", "--initial-cluster-state=new",
            # Throwaway data: skipping fsync makes every API write much faster.
            "--unsafe-no-fsync", "--log-level=warn"]


def apiserver_argv(p: ClusterPlan, bin_dir: Path) -> list[str]:
    pk = p.path("pki")
    return [str(bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://{p.ip}:{p.etcd_port}",
            f"--bind-address={p.ip}", f"--advertise-address={p.ip}",
            f"--secure-port={p.api_port}",
            f"--tls-cert-file={pk / 'apiserver.crt'}",
            f"--tls-private-key-file={pk / 'apiserver.key'}",
            f"--client-ca-file={pk / 'ca.crt'}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pk / 'sa.key'}",
            f"--service-account-signing-key-file={pk / 'sa.key'}",
            f"--service-cluster-ip-range={p.service_cidr}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            # The kubernetes Service's Endpoints would hold our loopback address, which
            # Endpoints validation refuses; nothing in the sandbox dials that Service.
            "--endpoint-reconciler-type=none",
            # kwok's nodes report their name as Hostname, which nothing resolves: reach
            # the kubelet API (kwok's server) by the node's InternalIP, and verify it.
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-certificate-authority={pk / 'ca.crt'}",
            f"--kubelet-client-certificate={pk / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pk / 'kubelet-client.key'}",
            "--profiling=false"]


def controller_manager_argv(p: ClusterPlan, bin_dir: Path) -> list[str]:
    pk = p.path("pki")
    return [str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={p.path('controller-manager.kubeconfig')}",
            "--secure-port=0", "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pk / 'sa.key'}",
            f"--root-ca-file={pk / 'ca.crt'}",
            f"--cluster-signing-cert-file={pk / 'ca.crt'}",
            f"--cluster-signing-key-file={pk / 'ca.key'}",
            f"--cluster-name={p.name}",
            f"--service-cluster-ip-range={p.service_cidr}",
            "--controllers=*", "--profiling=false"]


def scheduler_argv(p: ClusterPlan, bin_dir: Path) -> list[str]:
    return [str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={p.path('scheduler.kubeconfig')}",
            "--secure-port=0", "--leader-elect=false", "--profiling=false"]


# --- start -----------------------------------------------------------------------------

class ComponentFailed(ClusterError):
    """A component did not come up; the message names it and quotes its log's last lines."""


def _etcd_healthy(p: ClusterPlan) -> bool:
    url = f"http://{p.ip}:{p.etcd_port}/health"
    with urllib.request.urlopen(url, timeout=3) as resp:
        return bool(json.loads(resp.read()).get("health") == "true")


def _nodes_ready(api: Api, want: int) -> bool:
    nodes = api.get("/api/v1/nodes")["items"]
    ready = [n for n in nodes
             if any(c["type"] == "Ready" and c["status"] == "True"
                    for c in n.get("status", {}).get("conditions", []))]
    return len(ready) >= want


class _Starter:
    """Starts one cluster's components in order and watches them while it waits."""

    def __init__(self, p: ClusterPlan, bin_dir: Path, stages: Path,
                 cancel: threading.Event) -> None:
        self.p = p
        self.bin_dir = bin_dir
        self.stages = stages
        self.cancel = cancel
        self.procs: list[Proc] = []
        self.exited: Proc | None = None

    def spawn(self, component: str, argv: list[str]) -> Proc:
        if self.cancel.is_set():  # another cluster failed or Ctrl-C: start nothing more
            raise ComponentFailed(f"{self.p.name}: start cancelled before {component}")
        proc = spawn(self.p.state_dir, self.p.name, component, argv, env=procs.go_env())
        self.procs.append(proc)
        return proc

    def dead(self) -> str | None:
        """Why waiting is pointless: cancelled, or the first component that exited."""
        if self.cancel.is_set():
            return "start cancelled"
        for proc in self.procs:
            if not alive(proc.pid):
                self.exited = proc
                return f"{proc.component} exited (code {exit_code(proc.pid)})"
        return None

    def fail(self, component: str, reason: str) -> ComponentFailed:
        """The error for a failed wait, blaming the component that exited if one did."""
        if self.exited is not None:
            component = self.exited.component
        log = self.p.state_dir / "logs" / f"{self.p.name}-{component}.log"
        return ComponentFailed(f"{self.p.name}: {component} did not come up ({reason}); "
                               f"log {log}: {tail(log, 3)}")

    def wait(self, component: str, what: str, check: Any, timeout: float) -> None:
        try:
            wait_for(f"{self.p.name} {what}", check, timeout=timeout, abort=self.dead)
        except WaitTimeout as e:
            raise self.fail(component, str(e)) from None

    def run(self) -> list[Proc]:
        p = self.p
        self.spawn("etcd", etcd_argv(p, self.bin_dir))
        self.wait("etcd", "etcd health", lambda: _etcd_healthy(p), ETCD_TIMEOUT)
        self.spawn("kube-apiserver", apiserver_argv(p, self.bin_dir))
        api = p.api()
        self.wait("kube-apiserver", "API server /readyz", api.ready, API_TIMEOUT)
        self.spawn("kube-controller-manager", controller_manager_argv(p, self.bin_dir))
        self.spawn("kube-scheduler", scheduler_argv(p, self.bin_dir))
        crds = install_crds(api, self.stages.parent / "crds.yaml")
        self.wait("kube-apiserver", "kwok's CRDs established",
                  lambda: all(established(api, name) for name in crds), API_TIMEOUT)
        self.spawn("kwok", kwok_argv(p, self.bin_dir, self.stages))
        for number in range(1, p.shape.nodes + 1):
            api.post("/api/v1/nodes", node_body(p, number))
        self.wait("kwok", f"{p.shape.nodes} nodes Ready",
                  lambda: _nodes_ready(api, p.shape.nodes), READY_TIMEOUT)
        self.wait("kube-controller-manager", "ServiceAccount default/default",
                  lambda: api.get("/api/v1/namespaces/default/serviceaccounts/default"),
                  READY_TIMEOUT)
        return self.procs


def start(p: ClusterPlan, bin_dir: Path, stages: Path,
          cancel: threading.Event | None = None) -> list[Proc]:
    """Start one planned cluster and wait until it is usable; files must exist already.

    Usable means: API ready, every node Ready, and the ``default`` ServiceAccount made
    by the controller manager (so pods can be created at once).  Setting ``cancel``
    (from another thread) stops the sequence at its next step.
    """
    return _Starter(p, bin_dir, stages, cancel or threading.Event()).run()
