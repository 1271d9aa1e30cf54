"""verify's static half: links, one root, east-west addresses, istiod Available.

Each check reads the live clusters only and returns one :class:`~meshctl.verify.result.Check`;
a remote secret's kubeconfig goes through the allow-list and its own token is used.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from meshctl import istio, kube
from meshctl.ca import status as cert_status
from meshctl.config import Config
from meshctl.errors import MeshctlError
from meshctl.kube import remote_kubeconfig
from meshctl.mesh import install, remote_secret
from meshctl.topology import Link, Plan
from meshctl.verdicts import FAIL, PASS
from meshctl.verify.result import Check

# --- static half -------------------------------------------------------------------------


def _static(group_check: Callable[..., Check], fn: Callable[[], Check]) -> Check:
    """Run one check; a cluster error becomes that check's FAIL, not the end of verify."""
    try:
        return fn()
    except MeshctlError as e:
        return group_check(FAIL, e.message, e.hint)


def check_link(config: Config, clients: dict[str, kube.Kube], link: Link) -> Check:
    """``link.target`` holds ``link.source``'s remote secret and its token reaches the API."""
    name = f"remote secret {link.source} on {link.target}"

    def result(status: str, message: str, hint: str | None = None) -> Check:
        return Check("static", name, link.target, status, message, hint)

    def run() -> Check:
        fix = f"meshctl bootstrap --main {link.target} --remote {link.source}"
        where = f"{link.target}: Secret istio-system/{remote_secret.secret_name(link.source)}"
        secret = remote_secret.read(clients[link.target], link.source)
        if secret is None:
            return result(FAIL, f"{where} not found: {link.target}'s istiod does not see "
                                f"{link.source}'s services and endpoints", fix)
        labels = secret["metadata"].get("labels") or {}
        if labels.get(remote_secret.LABEL) != "true":
            return result(FAIL, f"{where} lacks label {remote_secret.LABEL}=true, so istiod "
                                "ignores it", fix)
        try:
            parsed = remote_kubeconfig.from_secret(secret, link.source, where)
        except remote_kubeconfig.Refused as e:  # names the field, never its value
            return result(FAIL, e.message, fix)
        server = parsed.server
        via = kube.client_from(f"{link.source} (as {link.target}'s istiod)",
                               server=server, ca_pem=parsed.ca_pem, token=parsed.token,
                               tls_server_name=parsed.tls_server_name, deadline=15)
        try:
            via.request("GET", "/version", what=f"GET {server}/version")
            review = via.request(
                "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
                what="authenticate with the secret's token")
        except kube.Forbidden as e:
            return result(FAIL, f"{where}: {server} rejects the secret's token "
                                f"({e.reason})", fix)
        except MeshctlError as e:
            return result(FAIL, f"{where}: its kubeconfig does not reach {server}: "
                                f"{e.message}")
        finally:
            via.api.close()
        user = (((review or {}).get("status") or {}).get("userInfo") or {}).get("username", "?")
        return result(PASS, f"{where} present; its token reaches {server} as {user}")

    return _static(result, run)


def check_cacerts(config: Config, names: tuple[str, ...]) -> list[Check]:
    """Every cluster holds ``cacerts`` and all of them chain to one root."""
    def result(status: str, message: str, hint: str | None = None) -> Check:
        return Check("static", "cacerts share one root", None, status, message, hint)

    try:
        status = cert_status.collect(config, names)
    except MeshctlError as e:
        return [result(FAIL, e.message, e.hint)]
    out = []
    for c in status.clusters:
        name = f"cacerts on {c.name}"
        if not c.present:
            out.append(Check("static", name, c.name, FAIL, "; ".join(
                ch.message for ch in c.checks if ch.level == cert_status.FAIL)))
        else:
            serial = c.intermediate.serial[:16] if c.intermediate else "?"
            out.append(Check("static", name, c.name, PASS,
                             f"{c.name}: intermediate {serial} issued by root "
                             f"{(c.signing_root or '?')[:23]}…"))
    fails = [ch.message for ch in status.checks if ch.level == cert_status.FAIL]
    present = [c for c in status.clusters if c.present]
    if fails:
        out.append(result(FAIL, "; ".join(fails),
                          "certs.status shows each cluster's roots; certs.issue re-issues"))
    elif len(present) == len(status.clusters) and status.common_root:
        out.append(result(PASS, f"all {len(present)} clusters chain to root "
                                f"{status.common_root[:23]}… and trust each other's "
                                "intermediates"))
    else:
        out.append(result(FAIL, "not every cluster holds cacerts, so no common root"))
    return out


def check_east_west(config: Config, clients: dict[str, kube.Kube], cluster: str) -> Check:
    def result(status: str, message: str, hint: str | None = None) -> Check:
        return Check("static", f"east-west gateway on {cluster}", cluster, status, message,
                     hint)

    def run() -> Check:
        c = config.clusters[cluster]
        address = install.east_west_address(clients[cluster], c)
        if address:
            source = "eastWestAddress in the cluster file" if c.east_west_address else \
                "LoadBalancer"
            return result(PASS, f"{cluster}: Service istio-system/{install.EASTWEST} "
                                f"address {address} ({source})")
        return result(FAIL, f"{cluster}: the east-west gateway has no address (Service "
                            f"istio-system/{install.EASTWEST} without a LoadBalancer "
                            "ingress): other networks cannot reach this cluster's pods",
                      f"give the cluster a LoadBalancer implementation, or set "
                      f"eastWestAddress in {c.source}")

    return _static(result, run)


def check_istiod(config: Config, clients: dict[str, kube.Kube], cluster: str) -> Check:
    name = istio.istiod_name(config.mesh.istio.revision)

    def result(status: str, message: str, hint: str | None = None) -> Check:
        return Check("static", f"istiod on {cluster}", cluster, status, message, hint)

    def run() -> Check:
        problem = install.deployment_problem(clients[cluster], name)
        if problem:
            return result(FAIL, f"{cluster}: {problem}",
                          f"meshctl bootstrap re-installs it; kubectl -n istio-system "
                          f"describe deployment {name}")
        return result(PASS, f"{cluster}: Deployment istio-system/{name} Available")

    return _static(result, run)


def static_checks(config: Config, plan: Plan, clients: dict[str, kube.Kube]) -> list[Check]:
    """The static half, in a stable order: links, cacerts, east-west, istiod."""
    jobs: list[Callable[[], list[Check]]] = [
        *(lambda link=link: [check_link(config, clients, link)] for link in plan.links),
        lambda: check_cacerts(config, plan.names),
        *(lambda c=c: [check_east_west(config, clients, c.name)]
          for c in plan.clusters if c.east_west_gateway),
        *(lambda c=c: [check_istiod(config, clients, c.name)]
          for c in plan.clusters if c.istio_role == "primary"),
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return [check for group in pool.map(lambda job: job(), jobs) for check in group]


