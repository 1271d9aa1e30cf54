"""verify's control-plane half: ask each primary's istiod what it sees, as istioctl does.

The static half proves objects exist (secrets, cacerts, Deployments); it cannot prove
that istiod *used* them.  Upstream users have no tool for that question ("is my remote
secret working?").  istiod answers it itself on its debug endpoints, which istioctl
reads through a port-forward to the istiod pod via the API server (``istioctl
remote-clusters``); meshctl does the same, so this works on any real cluster the
operator can port-forward on, and nothing here is sandbox-specific:
- ``/debug/clusterz``: every cluster whose remote secret this istiod loaded, with its
  sync status.  Each cluster the plan links to this primary must be ``synced``;
- ``/debug/endpointShardz``: endpoints per service per source cluster.  The sample
  service verify deploys must have endpoints from every cluster that runs it.

A FAIL names the cluster and the likeliest cause, checked rather than guessed: the
remote secret is missing; istiod did not load it; the secret's token is refused by the
remote API server; that API server is unreachable (from where meshctl runs, which says
nothing about istiod's network, and the message says so); or istiod's sync timed out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from meshctl import kube
from meshctl.config import Config
from meshctl.errors import ClusterError
from meshctl.kube import remote_kubeconfig
from meshctl.kube.istiod import (  # noqa: F401  (verify's names for them, kept)
    ISTIO_NAMESPACE,
    MONITORING_PORT,
    REQUEST_TIMEOUT,
    istiod_get,
    istiod_pods,
    monitoring_port,
)
from meshctl.mesh import remote_secret
from meshctl.topology import Plan
from meshctl.verdicts import FAIL, PASS
from meshctl.verify.result import Check

GROUP = "control-plane"
SAMPLE = "helloworld"
ENDPOINTS_TIMEOUT = 60.0
SYNC_TIMEOUT = 30.0  # istiod's own PILOT_REMOTE_CLUSTER_TIMEOUT default is 30 s


def _check(name: str, cluster: str, status: str, message: str,
           hint: str | None = None) -> Check:
    return Check(GROUP, name, cluster, status, message, hint)


# --- clusterz ---------------------------------------------------------------------------

def synced_clusters(clusterz: Any) -> dict[str, str]:
    """``{cluster id: sync status}`` from ``/debug/clusterz``."""
    return {str(e.get("id") or e.get("ID")): str(e.get("syncStatus") or e.get("SyncStatus"))
            for e in clusterz or [] if isinstance(e, dict)}


def _why_not_synced(config: Config, main: kube.Kube, source: str, status: str | None) -> str:
    """The likeliest cause, checked from here with the secret's own credentials."""
    secret = main.get(remote_secret.secret_path(source))
    if secret is None:
        return (f"remote secret {ISTIO_NAMESPACE}/{remote_secret.secret_name(source)} "
                f"is missing on {main.cluster}")
    if status is None:
        return (f"istiod on {main.cluster} did not load remote secret "
                f"{remote_secret.secret_name(source)} (see istiod's log)")
    try:
        parsed = remote_kubeconfig.from_secret(secret, source,
                                               f"{main.cluster}: remote secret for {source}")
        remote = kube.client_from(source, server=parsed.server, ca_pem=parsed.ca_pem,
                                  token=parsed.token,
                                  tls_server_name=getattr(parsed, "tls_server_name", None),
                                  deadline=10)
        remote.request("GET", "/version")
        remote.request("GET", "/api/v1/namespaces", query={"limit": 1})
    except kube.ApiError as e:
        if getattr(e, "status", None) in (401, 403):
            return f"the token in the remote secret for {source} is refused by its API server"
        return f"{source}'s API server answers the secret's token with: {str(e)[:120]}"
    except ClusterError as e:
        return (f"{source}'s API server is unreachable from here too ({str(e)[:160]}); "
                f"istiod on {main.cluster} cannot sync it")
    if status == "timeout":
        return f"istiod on {main.cluster} timed out syncing {source}"
    return f"istiod on {main.cluster} reports {source} {status!r}, not synced"


def clusterz_checks(config: Config, plan: Plan, clients: dict[str, kube.Kube],
                    primary: str, pod: str, port: int, *,
                    timeout: float = SYNC_TIMEOUT) -> list[Any]:
    """Each cluster linked to ``primary`` is ``synced`` in its istiod, judged after up
    to ``timeout`` seconds: istiod re-syncs a cluster whenever its secret changes."""
    sources = sorted({link.source for link in plan.links if link.target == primary})
    if not sources:
        return []
    deadline = time.monotonic() + timeout
    while True:
        try:
            seen = synced_clusters(istiod_get(clients[primary], pod, port, "/debug/clusterz"))
        except ClusterError as e:
            return [_check(f"{primary} sees {s}", primary, FAIL, str(e),
                           "kubectl port-forward needs the pods/portforward permission")
                    for s in sources]
        if all(seen.get(s) == "synced" for s in sources) or time.monotonic() >= deadline:
            break
        time.sleep(2.0)
    out = []
    for source in sources:
        status = seen.get(source)
        name = f"{primary} sees {source}"
        if status == "synced":
            out.append(_check(name, primary, PASS,
                              f"istiod {pod} on {primary}: cluster {source} synced"))
            continue
        why = _why_not_synced(config, clients[primary], source, status)
        out.append(_check(name, primary, FAIL, f"{primary}: {why}",
                          f"meshctl link --main {primary} --remote {source} re-creates it"))
    return out


# --- endpoints of the sample ---------------------------------------------------------------

def shard_counts(shardz: Any, host: str, namespace: str) -> dict[str, int]:
    """``{cluster id: endpoint count}`` for one service from ``/debug/endpointShardz``."""
    shards = ((shardz or {}).get(host) or {}).get(namespace) or {}
    out: dict[str, int] = {}
    for key, endpoints in (shards.get("Shards") or {}).items():
        cluster = key.split("/", 1)[-1]
        out[cluster] = out.get(cluster, 0) + len(endpoints or [])
    return out


def endpoint_check(clients: dict[str, kube.Kube], primary: str, pod: str, port: int,
                   namespace: str, running: tuple[str, ...], *,
                   timeout: float = ENDPOINTS_TIMEOUT, sample: str = SAMPLE) -> Any:
    """istiod on ``primary`` holds endpoints of the sample from each cluster in ``running``."""
    host = f"{sample}.{namespace}.svc.cluster.local"
    name = f"{primary} endpoints of {sample}"
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while True:
        try:
            counts = shard_counts(istiod_get(clients[primary], pod, port,
                                             "/debug/endpointShardz"), host, namespace)
        except ClusterError as e:
            return _check(name, primary, FAIL, str(e))
        missing = [c for c in running if counts.get(c, 0) == 0]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(2.0)
    shown = ", ".join(f"{c}: {counts.get(c, 0)}" for c in running)
    if missing:
        return _check(name, primary, FAIL,
                      f"istiod {pod} on {primary} has no endpoints of {host} from "
                      f"{', '.join(missing)} ({shown})",
                      "meshctl verify's static half checks the remote secrets; "
                      "istioctl remote-clusters shows istiod's view")
    return _check(name, primary, PASS, f"istiod {pod} on {primary} holds endpoints of "
                                       f"{host} from each cluster ({shown})")


# --- the half ----------------------------------------------------------------------------

def checks(config: Config, plan: Plan, clients: dict[str, kube.Kube], *,
           namespace: str | None = None, running: tuple[str, ...] | None = None,
           timeout: float = ENDPOINTS_TIMEOUT, sample: str = SAMPLE) -> list[Any]:
    """Every primary's istiod: remote clusters synced; with ``namespace``, sample endpoints.

    ``running``: the clusters that run the sample (default: every cluster of the plan).
    """
    primaries = [c.name for c in plan.clusters if c.istio_role == "primary"]
    revision = config.mesh.istio.revision or ""

    def one(primary: str) -> list[Any]:
        try:
            pods = istiod_pods(clients[primary], revision)
        except ClusterError as e:
            return [_check(f"istiod on {primary} answers", primary, FAIL, str(e))]
        if not pods:
            return [_check(f"istiod on {primary} answers", primary, FAIL,
                           f"{primary}: no running istiod pod in {ISTIO_NAMESPACE}",
                           f"kubectl -n {ISTIO_NAMESPACE} get pods -l app=istiod")]
        pod = pods[0]["metadata"]["name"]
        port = monitoring_port(pods[0])
        out = clusterz_checks(config, plan, clients, primary, pod, port)
        if namespace is not None:
            out.append(endpoint_check(clients, primary, pod, port, namespace,
                                      running or plan.names, timeout=timeout, sample=sample))
        return out

    jobs: list[Callable[[], list[Any]]] = [lambda p=p: one(p) for p in primaries]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return [c for group in pool.map(lambda job: job(), jobs) for c in group]
