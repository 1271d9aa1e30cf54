"""The Kubernetes side of a sandbox workload: what a kubelet and Istio's injector would give it.

A proxyless pod gets its cluster ID, network, mesh ID and trust domain from Istio's
injector, its istiod address from the mesh config, a ``istio-ca`` token from the kubelet
and the mesh root from the ``istio-ca-root-cert`` ConfigMap.  The sandbox plays both
parts, reading the same objects from the live cluster, so a workload is configured by
whatever meshctl (or anyone) installed there, never by meshctl's own plan.

Objects it creates (namespace, ServiceAccount, Service, WorkloadEntries) carry
``meshctl.io/sandbox-workload``; it deletes only objects with that label.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from meshctl import names
from meshctl.errors import ClusterError, UsageError
from meshctl.sandbox.api import Api, ApiError
from meshctl.sandbox.lifecycle import Sandbox
from meshctl.sandbox.procs import WaitTimeout, wait_for

LABEL = "meshctl.io/sandbox-workload"
TOKEN_SECONDS = 86400
WE_PATH = "/apis/networking.istio.io/v1/namespaces/{ns}/workloadentries"
MAX_REPLICAS = 20


@dataclass(frozen=True)
class MeshFacts:
    """What Istio's injector would put into a proxyless pod of this cluster."""

    cluster_id: str
    network: str
    mesh_id: str
    trust_domain: str
    discovery: str     # ClusterIP:port of the istiod the namespace's revision uses
    istiod_san: str
    # mesh config defaultConfig.proxyMetadata: the injector makes each an env var of the
    # proxy (meshctl sets ISTIO_MULTIROOT_MESH there, which root rotation relies on)
    proxy_metadata: tuple[tuple[str, str], ...] = ()


def check_names(*, namespace: str, service: str, version: str, replicas: int) -> None:
    """Refuse bad names before anything starts (one line, exit 2)."""
    for flag, value in (("--namespace", namespace), ("--service", service)):
        if not names.dns_label(value or ""):
            raise UsageError(f"{flag} {value!r} is not a DNS-1123 label")
    if version and not names.label_value(version):
        raise UsageError(f"--version {version!r} is not a valid label value")
    if not 1 <= replicas <= MAX_REPLICAS:
        raise UsageError(f"--replicas must be from 1 to {MAX_REPLICAS}, got {replicas}")


def api(sb: Sandbox, cluster: str) -> Api:
    pki = sb.state_dir / cluster / "pki"
    return Api(sb.cluster(cluster).server, pki / "ca.crt", pki / "admin.crt", pki / "admin.key")


def get(api: Api, path: str) -> dict[str, Any] | None:
    try:
        return api.get(path)
    except ApiError as e:
        if e.status == 404:
            return None
        raise ClusterError(f"{api.server}: GET {path}: {e}") from None


def mesh_facts(api: Api, namespace: str) -> MeshFacts:
    """Read the injector's values and the mesh config of the namespace's revision."""
    ns = get(api, f"/api/v1/namespaces/{namespace}") or {}
    rev = (ns.get("metadata", {}).get("labels") or {}).get("istio.io/rev", "")
    suffix = "" if rev in ("", "default") else f"-{rev}"
    base = "/api/v1/namespaces/istio-system/configmaps"
    injector = get(api, f"{base}/istio-sidecar-injector{suffix}")
    mesh_cm = get(api, f"{base}/istio{suffix}")
    if injector is None or mesh_cm is None:
        raise UsageError(f"{api.server}: no Istio of revision {rev or 'default'} here "
                         "(istio-sidecar-injector / istio ConfigMap missing)",
                         hint="bootstrap the sandbox clusters first")
    try:
        values = json.loads(injector["data"]["values"])["global"]
        mesh = yaml.safe_load(mesh_cm["data"]["mesh"]) or {}
        address = str(mesh["defaultConfig"]["discoveryAddress"])
        cluster_id = str(values["multiCluster"]["clusterName"])
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        raise ClusterError(f"{api.server}: Istio's injector values or mesh config cannot "
                           f"be read ({type(e).__name__}: {e})") from None
    host, _, port = address.rpartition(":")
    parts = host.split(".")
    svc = get(api, f"/api/v1/namespaces/{parts[1] if len(parts) > 1 else 'istio-system'}"
                    f"/services/{parts[0]}")
    ip = (svc or {}).get("spec", {}).get("clusterIP")
    if not ip or ip == "None":
        raise ClusterError(f"{api.server}: istiod Service {host} has no ClusterIP; workloads "
                           "on remote-profile clusters are not supported by the sandbox")
    return MeshFacts(cluster_id=cluster_id, network=str(values.get("network") or ""),
                     mesh_id=str(values.get("meshID") or mesh.get("defaultConfig", {})
                                 .get("meshId") or ""),
                     trust_domain=str(mesh.get("trustDomain") or "cluster.local"),
                     discovery=f"{ip}:{port}", istiod_san=host,
                     proxy_metadata=_metadata(mesh))


def _metadata(mesh: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    raw = (mesh.get("defaultConfig") or {}).get("proxyMetadata") or {}
    if not isinstance(raw, dict):
        return ()
    return tuple((str(k), str(v)) for k, v in sorted(raw.items())
                 if re.fullmatch(r"[A-Z_][A-Z0-9_]*", str(k)))


def _create(api: Api, path: str, body: dict[str, Any]) -> bool:
    """POST unless it exists; True when this call created it."""
    try:
        api.post(path, body)
        return True
    except ApiError as e:
        if e.status == 409:
            return False
        raise ClusterError(f"{api.server}: create {body['kind']} "
                           f"{body['metadata'].get('name')}: {e}") from None


def _meta(name: str, namespace: str | None = None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {LABEL: "true", **labels}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def ensure_service_account(api: Api, namespace: str, name: str) -> None:
    _create(api, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                        "metadata": _meta(namespace)})
    _create(api, f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, namespace)})


def ensure_service(api: Api, namespace: str, name: str, *, port: int) -> None:
    """The ServiceAccount and a Service selecting ``app=<name>`` on the gRPC port."""
    ensure_service_account(api, namespace, name)
    _create(api, f"/api/v1/namespaces/{namespace}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(name, namespace, app=name),
        "spec": {"selector": {"app": name},
                 "ports": [{"name": "grpc", "port": port, "targetPort": port,
                            "appProtocol": "grpc"}]}})


def token(api: Api, namespace: str, service_account: str) -> str:
    """A bound token with audience ``istio-ca``, as the kubelet projects for istio-proxy."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": ["istio-ca"], "expirationSeconds": TOKEN_SECONDS}}
    try:
        out = api.post(f"/api/v1/namespaces/{namespace}/serviceaccounts/"
                       f"{service_account}/token", body)
        return str(out["status"]["token"])
    except (ApiError, KeyError, TypeError) as e:
        raise ClusterError(f"{api.server}: token for {namespace}/{service_account}: "
                           f"{type(e).__name__}") from None


def root_cert(api: Api, namespace: str, timeout: float = 30.0) -> str:
    """The mesh root istiod publishes in every namespace (``istio-ca-root-cert``)."""
    path = f"/api/v1/namespaces/{namespace}/configmaps/istio-ca-root-cert"
    try:
        return wait_for(f"{namespace}/istio-ca-root-cert",
                        lambda: (get(api, path) or {}).get("data", {}).get("root-cert.pem"),
                        timeout=timeout, interval=0.3)
    except WaitTimeout as e:
        raise ClusterError(f"{api.server}: {e}; is istiod running?") from None


def labels(service: str, version: str) -> dict[str, str]:
    """The workload's labels, as Istio's injector leaves them on a pod.

    ``security.istio.io/tlsMode: istio`` is the injector's mark of a mesh workload; for a
    proxyless gRPC server istiod turns PERMISSIVE into STRICT on it (gRPC has no
    permissive mode), so callers that ask for Istio mTLS reach it in a default mesh.
    """
    out = {"app": service, "security.istio.io/tlsMode": "istio"}
    if version:
        out["version"] = version
    return out


def register(api: Api, w: Any, facts: MeshFacts) -> None:
    """The WorkloadEntry that puts a ready server behind its Service."""
    entry_labels = labels(w.service, w.version)
    _create(api, WE_PATH.format(ns=w.namespace), {
        "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
        "metadata": _meta(w.entry, w.namespace, **entry_labels),
        "spec": {"address": w.ip, "labels": entry_labels, "serviceAccount": w.service,
                 "network": facts.network}})


def _delete(api: Api, path: str) -> None:
    try:
        api.request("DELETE", path)
    except ApiError as e:
        if e.status != 404:
            raise ClusterError(f"{api.server}: DELETE {path}: {e}") from None


def unregister(api: Api, w: Any) -> None:
    _delete(api, f"{WE_PATH.format(ns=w.namespace)}/{w.entry}")


def _ours(api: Api, path: str) -> bool:
    obj = get(api, path)
    return bool(obj) and (obj.get("metadata", {}).get("labels") or {}).get(LABEL) == "true"


def delete_created(api: Api, namespace: str, service: str) -> None:
    """Remove the Service and ServiceAccount that ``start`` created.

    A namespace it created stays: others (verify, canary, the user) may have put
    objects there since.
    """
    for path in (f"/api/v1/namespaces/{namespace}/services/{service}",
                 f"/api/v1/namespaces/{namespace}/serviceaccounts/{service}"):
        if _ours(api, path):
            _delete(api, path)
