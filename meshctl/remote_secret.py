"""Remote secrets: how a primary's istiod reads another cluster's API.

``istioctl create-remote-secret`` runs against the remote cluster and prints a Secret
whose kubeconfig carries the token of ``istio-reader-service-account`` (read-only
ClusterRole: never the operator's own credentials).  meshctl keeps that output in
memory, checks it before anything is applied (one Secret, the multicluster label,
the cluster annotation, the server it points at, no loopback address unless the
cluster file asked for it) and applies it to the main through the API.  The token
never touches disk, logs or error messages; ``repr`` of a :class:`RemoteSecret`
shows names only.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from meshctl import istio, kube
from meshctl.config import Cluster
from meshctl.errors import ClusterError, UsageError

NAMESPACE = "istio-system"
LABEL = "istio/multiCluster"
ANNOTATION = "networking.istio.io/cluster"


def secret_name(source: str) -> str:
    return f"istio-remote-secret-{source}"


def secret_path(source: str) -> str:
    return f"/api/v1/namespaces/{NAMESPACE}/secrets/{secret_name(source)}"


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Server:
    """The API server URL written into a remote secret, and whether the user chose it."""

    url: str
    explicit: bool


def server_for(remote: Cluster, kubeconfig_server: str, flag: str | None = None) -> Server:
    """``--server``, else the cluster file's ``apiServer``, else the kubeconfig's server.

    The kubeconfig's server is refused when it is a loopback address: another
    cluster's istiod would dial its own loopback (the seed's ``127.0.0.1`` trap).
    """
    if flag:
        if urlsplit(flag).scheme != "https":
            raise UsageError(f"--server {flag}: not an https URL")
        return Server(flag.rstrip("/"), True)
    if remote.api_server:
        return Server(remote.api_server, True)
    if is_loopback(kubeconfig_server):
        raise UsageError(
            f"{remote.name}: the kubeconfig's API server {kubeconfig_server} is a loopback "
            "address that other clusters cannot reach",
            hint=f"set apiServer in {remote.source} or pass --server")
    return Server(kubeconfig_server.rstrip("/"), False)


@dataclass(frozen=True)
class RemoteSecret:
    """A checked remote secret for ``source``; ``body`` holds the token: never print it."""

    source: str
    server: str
    user: str
    body: dict[str, Any] = field(repr=False)

    def kubeconfig(self) -> dict[str, Any]:
        """The decoded kubeconfig (with its token) for checks that must use it."""
        return yaml.safe_load(base64.b64decode(self.body["data"][self.source]))


def parse(text: str, *, source: str, server: Server) -> RemoteSecret:
    """Check istioctl's output and turn it into an API-ready Secret (``data``, base64).

    Every failure message names what was wrong, never the content.
    """
    where = f"{source}: create-remote-secret output"
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError:
        raise ClusterError(f"{where} is not YAML") from None
    if len(docs) != 1 or docs[0].get("kind") != "Secret":
        kinds = ", ".join(str(d.get("kind")) for d in docs) or "nothing"
        raise ClusterError(f"{where}: expected one Secret, got {kinds}")
    secret = docs[0]
    meta = secret.get("metadata") or {}
    if (meta.get("labels") or {}).get(LABEL) != "true":
        raise ClusterError(f"{where}: label {LABEL}=true missing")
    if (meta.get("annotations") or {}).get(ANNOTATION) != source:
        raise ClusterError(f"{where}: annotation {ANNOTATION} is not {source!r}")
    raw = (secret.get("stringData") or {}).get(source)
    if raw is None and source in (secret.get("data") or {}):
        raw = base64.b64decode(secret["data"][source]).decode()
    if raw is None:
        raise ClusterError(f"{where}: no kubeconfig under key {source!r}")
    try:
        config = yaml.safe_load(raw)
        servers = [c["cluster"]["server"] for c in config["clusters"]]
        users = config["users"]
    except (yaml.YAMLError, KeyError, TypeError):
        raise ClusterError(f"{where}: the kubeconfig inside is malformed") from None
    if servers != [server.url]:
        raise ClusterError(f"{where}: kubeconfig points at {', '.join(servers)}, "
                           f"expected {server.url}")
    if is_loopback(server.url) and not server.explicit:
        raise UsageError(f"{where}: kubeconfig points at loopback {server.url}",
                         hint="set apiServer in the cluster file or pass --server")
    if len(users) != 1 or not (users[0].get("user") or {}).get("token"):
        raise ClusterError(f"{where}: expected one user with a service account token")
    user_fields = set(users[0]["user"])
    if user_fields - {"token"}:
        # client certificates or exec plugins would be the operator's own credentials
        raise ClusterError(f"{where}: the kubeconfig carries credentials other than a "
                           f"service account token ({', '.join(sorted(user_fields))})")
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": secret.get("type", "Opaque"),
        "metadata": {"name": secret_name(source), "namespace": NAMESPACE,
                     "labels": {**(meta.get("labels") or {}),
                                "app.kubernetes.io/managed-by": "meshctl"},
                     "annotations": meta.get("annotations") or {}},
        "data": {source: base64.b64encode(raw.encode()).decode()},
    }
    return RemoteSecret(source=source, server=server.url, user=users[0].get("name", ""),
                        body=body)


def create(istioctl: istio.Istioctl, remote: Cluster, server: Server) -> RemoteSecret:
    """Run ``istioctl create-remote-secret`` against ``remote``; output stays in memory."""
    out = istio.run(istioctl, remote, ["create-remote-secret", "--name", remote.name,
                                       "--server", server.url],
                    what="create-remote-secret", timeout=120)
    return parse(out, source=remote.name, server=server)


def apply(main: kube.Kube, secret: RemoteSecret) -> str:
    """Create or update the secret on the main; ``unchanged`` makes no write."""
    return kube.ensure(main, secret.body)


def read(main: kube.Kube, source: str) -> dict | None:
    return main.get(secret_path(source), what=f"read Secret {NAMESPACE}/{secret_name(source)}")


def remove(main: kube.Kube, source: str) -> bool:
    return kube.delete(main, {"apiVersion": "v1", "kind": "Secret",
                              "metadata": {"name": secret_name(source),
                                           "namespace": NAMESPACE}})
