"""Remote secrets: how a primary's istiod reads another cluster's API.

``istioctl create-remote-secret`` runs against the remote cluster and prints a Secret
whose kubeconfig carries the token of ``istio-reader-service-account`` (read-only
ClusterRole: never the operator's own credentials).  meshctl keeps that output in
memory, checks it before anything is applied (one Secret, the multicluster label,
the cluster annotation, the server it points at, no loopback address unless the
cluster file asked for it; the kubeconfig inside passes the allow-list of
:mod:`meshctl.kube.remote_kubeconfig`: one server and its CA, one inline token, nothing
that runs a command or reads a file) and applies it to the main through the API.
The token never touches disk, logs or error messages; ``repr`` of a
:class:`RemoteSecret` shows names only.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from meshctl import istio, kube, ownership
from meshctl.config import Cluster
from meshctl.errors import ClusterError, UsageError
from meshctl.kube import connection, remote_kubeconfig

NAMESPACE = "istio-system"
LABEL = "istio/multiCluster"
ANNOTATION = "networking.istio.io/cluster"


def secret_name(source: str) -> str:
    return f"istio-remote-secret-{source}"


def secret_path(source: str) -> str:
    return f"/api/v1/namespaces/{NAMESPACE}/secrets/{secret_name(source)}"




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
    if connection.is_loopback(kubeconfig_server):
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
    body: dict[str, Any] = field(repr=False)


def parse(text: str, *, source: str, server: Server,
          mesh_id: str | None = None) -> RemoteSecret:
    """Check istioctl's output and turn it into an API-ready Secret (``data``, base64).

    The kubeconfig inside goes through :mod:`meshctl.kube.remote_kubeconfig`'s allow-list,
    the same one ``verify`` and ``status`` use on what they read back.  Every failure
    message names what was wrong, never the content.
    """
    where = f"{source}: create-remote-secret output"
    docs = remote_kubeconfig.load_yaml_all(text, where)
    if len(docs) != 1 or not isinstance(docs[0], dict) or docs[0].get("kind") != "Secret":
        kinds = ", ".join(str(d.get("kind")) if isinstance(d, dict) else type(d).__name__
                          for d in docs) or "nothing"
        raise ClusterError(f"{where}: expected one Secret, got {kinds}")
    secret = docs[0]
    meta = secret.get("metadata") or {}
    if not isinstance(meta, dict) or (meta.get("labels") or {}).get(LABEL) != "true":
        raise ClusterError(f"{where}: label {LABEL}=true missing")
    if (meta.get("annotations") or {}).get(ANNOTATION) != source:
        raise ClusterError(f"{where}: annotation {ANNOTATION} is not {source!r}")
    where = f"{where} (Secret {NAMESPACE}/{secret_name(source)})"
    string_data = secret.get("stringData") or {}
    data = secret.get("data") or {}
    if not isinstance(string_data, dict) or not isinstance(data, dict):
        raise ClusterError(f"{where}: stringData/data is not a mapping")
    keys = sorted(str(k) for k in {**string_data, **data})
    if keys != [source]:
        extra = [k for k in keys if k != source]
        raise ClusterError(f"{where}: expected one kubeconfig under key {source!r}, found "
                           f"{', '.join(repr(k[:40]) for k in extra) or 'none'}")
    text = string_data.get(source)
    if text is None:
        try:
            raw = base64.b64decode(str(data[source]), validate=True)
        except ValueError:
            raise ClusterError(f"{where}: data key {source!r} is not base64") from None
    elif isinstance(text, str):
        raw = text.encode()
    else:
        raise ClusterError(f"{where}: stringData key {source!r} is not text")
    config = remote_kubeconfig.parse(raw, f"{where} key {source}")
    if config.server != server.url:
        raise ClusterError(f"{where}: kubeconfig points at {config.server}, "
                           f"expected {server.url}")
    if connection.is_loopback(server.url) and not server.explicit:
        raise UsageError(f"{where}: kubeconfig points at loopback {server.url}",
                         hint="set apiServer in the cluster file or pass --server")
    labels = {**{k: v for k, v in (meta.get("labels") or {}).items()
                 if isinstance(k, str) and isinstance(v, str)},
              **(ownership.labels(mesh_id) if mesh_id else
                 {ownership.MANAGED_BY: ownership.MANAGER})}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if isinstance(k, str) and isinstance(v, str)}
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": secret.get("type", "Opaque") if isinstance(secret.get("type"), str)
        else "Opaque",
        "metadata": {"name": secret_name(source), "namespace": NAMESPACE,
                     "labels": labels, "annotations": annotations},
        "data": {source: base64.b64encode(raw).decode()},
    }
    return RemoteSecret(source=source, server=server.url, body=body)


def create(istioctl: istio.Istioctl, remote: Cluster, server: Server, *,
           mesh_id: str | None = None) -> RemoteSecret:
    """Run ``istioctl create-remote-secret`` against ``remote``; output stays in memory."""
    out = istio.run(istioctl, remote, ["create-remote-secret", "--name", remote.name,
                                       "--server", server.url],
                    what="create-remote-secret", timeout=120)
    return parse(out, source=remote.name, server=server, mesh_id=mesh_id)


def apply(main: kube.Kube, secret: RemoteSecret) -> str:
    """Create or update the secret on the main; ``unchanged`` makes no write.

    A remote secret that carries meshctl's label is meshctl's through and through: its
    content is what istioctl derived from the remote cluster a moment ago.  When another
    writer changed it (a tampered kubeconfig that would make istiod, or a careless
    operator, talk to the wrong place), a plain re-run puts meshctl's content back and
    the result says whose fields it took over; it is never silent.  A Secret of that
    name without meshctl's label is someone else's and stays a refusal (exit 1).
    """
    path = secret_path(secret.source)
    live = main.get(path, what=f"read Secret {NAMESPACE}/{secret_name(secret.source)}")
    # meshctl's for *this* mesh only: another mesh's remote secret of that name is not
    # put back by force (kube.ensure refuses it as not ours)
    return kube.ensure(main, secret.body, live=live,
                       force=live is not None and ownership.is_managed(
                           live, ownership.mesh_of(secret.body)))


def read(main: kube.Kube, source: str) -> dict | None:
    return main.get(secret_path(source), what=f"read Secret {NAMESPACE}/{secret_name(source)}")


def remove(main: kube.Kube, source: str, *, mesh_id: str | None = None) -> bool:
    """Delete the remote secret of ``source`` when it is meshctl's for ``mesh_id``."""
    labels = ownership.labels(mesh_id) if mesh_id else {}
    return kube.delete(main, {"apiVersion": "v1", "kind": "Secret",
                              "metadata": {"name": secret_name(source),
                                           "namespace": NAMESPACE, "labels": labels}})
