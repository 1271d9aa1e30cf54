"""Asking istiod itself, through an API-server port-forward to one of its pods.

istiod answers questions about what it *uses* (remote clusters loaded, endpoints held,
proxies connected) only on its debug endpoints.  istioctl reads them through a
port-forward to the istiod pod via the API server (``istioctl remote-clusters``,
``proxy-status``); meshctl does the same, so this works on any cluster the operator may
port-forward on, and nothing here is sandbox-specific.  It lives in ``kube`` because the
port-forward is one more API-server request: verify's control-plane half, ``status``
(proxies per revision) and upgrades all ask istiod this one way.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

from meshctl.errors import ClusterError
from meshctl.kube.client import Kube

ISTIO_NAMESPACE = "istio-system"
MONITORING_PORT = 15014
REQUEST_TIMEOUT = 20.0


def istiod_pods(k: Kube, revision: str = "") -> list[dict[str, Any]]:
    """Running istiod pods of the revision, as ``istioctl`` finds them (``app=istiod``)."""
    selector = "app=istiod" + (f",istio.io/rev={revision}" if revision else "")
    return [p for p in k.items(f"/api/v1/namespaces/{ISTIO_NAMESPACE}/pods",
                                query={"labelSelector": selector,
                                       "fieldSelector": "status.phase=Running"})]


def monitoring_port(pod: dict[str, Any]) -> int:
    """The port of ``--monitoringAddr`` in the discovery container's args (istioctl's rule)."""
    for c in pod.get("spec", {}).get("containers") or []:
        if c.get("name") != "discovery":
            continue
        args = c.get("args") or []
        for i, arg in enumerate(args):
            value = arg.split("=", 1)[1] if arg.startswith("--monitoringAddr=") else (
                args[i + 1] if arg == "--monitoringAddr" and i + 1 < len(args) else None)
            if value and value.rsplit(":", 1)[-1].isdigit():
                return int(value.rsplit(":", 1)[-1])
    return MONITORING_PORT


def istiod_get(k: Kube, pod: str, port: int, path: str) -> Any:
    """GET ``path`` from an istiod pod through an API-server port-forward; JSON out.

    The forwarded stream is read as HTTP (Content-Length or chunked), never until EOF:
    a tunnel may keep the stream open after istiod has answered.  The tunnel is closed
    in a ``finally``: a request that fails half-way must not leave the websocket and the
    client's proxy thread open for the rest of the run.
    """
    from kubernetes import client as k8s
    from kubernetes.stream import portforward

    pf = None
    try:
        pf = portforward(k8s.CoreV1Api(k.api).connect_get_namespaced_pod_portforward,
                         pod, ISTIO_NAMESPACE, ports=str(port))
        sock = pf.socket(port)
        sock.settimeout(REQUEST_TIMEOUT)
        conn = http.client.HTTPConnection("localhost", port, timeout=REQUEST_TIMEOUT)
        conn.sock = sock
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    except Exception as e:  # the client raises many kinds; all mean "could not ask istiod"
        raise ClusterError(f"{k.cluster}: port-forward to {ISTIO_NAMESPACE}/{pod}:{port} "
                           f"{path}: {type(e).__name__}: {str(e)[:200]}") from None
    finally:
        if pf is not None:
            pf.close()  # its proxy thread ends once every local socket is closed
    if resp.status != 200:
        raise ClusterError(f"{k.cluster}: {ISTIO_NAMESPACE}/{pod}:{port}{path}: "
                           f"HTTP {resp.status}")
    return json.loads(body or b"null")
