"""verify's traffic half: the sample apps, their readiness, sidecars, then requests.

The samples live in a namespace meshctl owns; one it did not make is refused before any
write, and :func:`cleanup` removes only what carries meshctl's label.
"""

from __future__ import annotations

from typing import Any

import yaml

from meshctl import istio, kube, manifests, ownership
from meshctl.config import Config
from meshctl.errors import CheckFailed, MeshctlError
from meshctl.mesh import install
from meshctl.topology import Plan
from meshctl.verdicts import FAIL, PASS
from meshctl.verify.curl import (
    CURL_MAX_TIME,
    ExecFailed,
    count_requests,
    curl_script,
    exec_in_pod,
    judge_traffic,
)
from meshctl.verify.result import (
    DEFAULT_NAMESPACE,
    READY_TIMEOUT,
    Check,
    Progress,
    Traffic,
    quiet,
    target,
)

# --- traffic half ------------------------------------------------------------------------


def sample_manifests(config: Config, plan: Plan,
                     namespace: str = DEFAULT_NAMESPACE) -> dict[str, list[dict[str, Any]]]:
    """Per cluster, the objects the traffic half applies (pure): main v1 + curl, remotes v2.

    Every one carries meshctl's ownership labels, the namespace first.
    """
    out = {}
    mesh_id = config.mesh.mesh_id
    for c in plan.clusters:
        text = manifests.render("sample-namespace.yaml.j2", namespace=namespace,
                                revision=config.mesh.istio.revision, mesh_id=mesh_id)
        text += "\n---\n" + manifests.render(
            "helloworld.yaml.j2", namespace=namespace, mesh_id=mesh_id,
            versions=["v1"] if c.name == plan.main else ["v2"])
        if c.name == plan.main:
            text += "\n---\n" + manifests.render("curl.yaml.j2", namespace=namespace,
                                                 mesh_id=mesh_id)
        out[c.name] = [d for d in yaml.safe_load_all(text) if d]
    return out


def foreign_namespace(k: kube.Kube, namespace: str) -> str | None:
    """Why verify must not use ``namespace`` on this cluster (it exists and meshctl did not
    make it), or ``None``.  A cluster that cannot be read says nothing here: the static
    checks report it, and the traffic half does not run."""
    try:
        ns = k.get(f"/api/v1/namespaces/{namespace}", what=f"read Namespace {namespace}")
    except MeshctlError:
        return None
    if ns is None or ownership.is_managed(ns):
        return None
    return f"{k.cluster}: Namespace {namespace} exists and was not made by meshctl"


def refuse_foreign(clients: dict[str, kube.Kube], namespace: str) -> None:
    """Facts first: a namespace of that name that meshctl does not own on any cluster
    stops verify before it writes anything anywhere (exit 1)."""
    found = [why for k in clients.values() if (why := foreign_namespace(k, namespace))]
    if found:
        raise CheckFailed("; ".join(found) + "; verify deploys its sample only into a "
                          "namespace it owns and leaves this one as it is",
                          hint="pick another name with --namespace (default "
                               f"{DEFAULT_NAMESPACE})")


def _namespace_gone(k: kube.Kube, namespace: str) -> str | None:
    ns = k.get(f"/api/v1/namespaces/{namespace}", what=f"read Namespace {namespace}")
    if ns is not None and (ns.get("status") or {}).get("phase") == "Terminating":
        return f"{k.cluster}: namespace {namespace} still terminating (from an earlier run)"
    return None


def _pods(k: kube.Kube, namespace: str, selector: str) -> list[dict[str, Any]]:
    return list(k.items(f"/api/v1/namespaces/{namespace}/pods",
                        query={"labelSelector": selector}))



class _Steps:
    """Collects the traffic half's checks as it goes, so every step reached is reported."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, name: str, status: str, message: str, cluster: str | None = None,
            hint: str | None = None) -> Check:
        check = Check("traffic", name, cluster, status, message, hint)
        self.checks.append(check)
        return check


def traffic_checks(config: Config, plan: Plan, clients: dict[str, kube.Kube], *,
                   requests: int, namespace: str = DEFAULT_NAMESPACE,
                   timeout: float = READY_TIMEOUT,
                   progress: Progress = quiet) -> tuple[list[Check], Traffic]:
    """Deploy, wait, check sidecars, send requests.  Stops at the first step that fails."""
    steps = _Steps()
    not_checked = "traffic was NOT checked"
    ns = namespace
    objs = sample_manifests(config, plan, ns)
    try:
        refuse_foreign(clients, ns)  # again, right before the first write
        for name in plan.names:
            kube.wait_for(f"{name}: namespace {ns} gone",
                          lambda name=name: _namespace_gone(clients[name], ns),
                          timeout=timeout, interval=2.0)
            changed = [kube.ensure(clients[name], o) for o in objs[name]]
            progress(name, f"sample apps in namespace {ns}: "
                           f"{sum(a != 'unchanged' for a in changed)} objects written")
    except MeshctlError as e:
        steps.add("deploy samples", FAIL, e.message, hint=e.hint)
        return steps.checks, Traffic(False, None, requests, 0,
                                     reason=f"{not_checked}: the samples could not be deployed")
    deployments = {n: [o["metadata"]["name"] for o in objs[n] if o["kind"] == "Deployment"]
                   for n in plan.names}
    steps.add("deploy samples", PASS, "; ".join(
        f"{n}: {', '.join(deployments[n])}" for n in plan.names)
        + f" in namespace {ns} (injection label set)")

    try:
        for name in plan.names:
            for dep in deployments[name]:
                kube.wait_for(f"{name}: Deployment {ns}/{dep} Available",
                              lambda name=name, dep=dep: install.deployment_problem(
                                  clients[name], dep, namespace=ns),
                              timeout=timeout, interval=2.0)
    except MeshctlError as e:
        steps.add("samples ready", FAIL, e.message,
                  hint=f"kubectl -n {ns} get pods,events on that cluster")
        return steps.checks, Traffic(False, None, requests, 0,
                                     reason=f"{not_checked}: the samples never became ready")
    pods = {n: _pods(clients[n], ns, "app in (helloworld,curl)") for n in plan.names}
    steps.add("samples ready", PASS, "; ".join(
        f"{n}: {len(pods[n])} pods Ready" for n in plan.names))
    progress(plan.main, "sample apps Ready")

    bare = [f"{n}/{p['metadata']['name']}" for n in plan.names for p in pods[n]
            if not istio.has_proxy(p)]
    if bare:
        steps.add("sidecars injected", FAIL,
                  f"no istio-proxy container in {len(bare)} pod(s) ({', '.join(bare[:4])}"
                  f"{', …' if len(bare) > 4 else ''}) although namespace {ns} is "
                  "labelled for injection: the sidecar injector webhook did not inject",
                  hint="check the MutatingWebhookConfiguration istio-sidecar-injector and "
                       "istiod's logs")
    else:
        steps.add("sidecars injected", PASS, "every sample pod has an istio-proxy sidecar")

    clients_pods = [p for p in pods[plan.main]
                    if (p["metadata"].get("labels") or {}).get("app") == "curl"]
    instances = {p["metadata"]["name"]: n for n in plan.names for p in pods[n]}
    if not clients_pods:
        steps.add("requests", FAIL, f"{not_checked}: no curl pod found on {plan.main}")
        return steps.checks, Traffic(False, None, requests, 0, reason="no curl pod")
    pod = clients_pods[0]["metadata"]["name"]
    client = f"{plan.main}/{ns}/{pod}"
    url = target(ns)
    progress(plan.main, f"{requests} requests from {pod} to {url} (pods/exec)")
    try:
        output = exec_in_pod(clients[plan.main], pod, "curl",
                             ["sh", "-c", curl_script(url, requests)], namespace=ns,
                             timeout=requests * (CURL_MAX_TIME + 1) + 30)
    except ExecFailed as e:
        reason = (f"{not_checked}: could not run curl in {client} through the pods/exec "
                  f"API ({e}); no request was sent, so no answer is reported")
        steps.add("requests", FAIL, reason,
                  hint="verify needs pods that run containers and an API server that can "
                       "reach each node's kubelet for exec")
        return steps.checks, Traffic(False, client, requests, 0, reason=reason)
    tally = count_requests(output.stdout, instances)
    expected = {n: "v1" if n == plan.main else "v2" for n in plan.names}
    status, message = judge_traffic(tally, requests=requests, expected=expected,
                                    client=client)
    steps.add("requests", status, message,
              hint=None if status == PASS else
              "cross-cluster traffic needs remote secrets, a common root and, across "
              "networks, east-west gateways (see the static checks)")
    return steps.checks, Traffic(True, client, requests, tally.sent, tally.answers,
                                 tally.errors, failures=tally.failures)


def cleanup(config: Config, plan: Plan, clients: dict[str, kube.Kube],
            namespace: str = DEFAULT_NAMESPACE) -> list[str]:
    """Remove what the traffic half deployed: only objects carrying meshctl's label, and
    the namespace only when meshctl made it (``kube.delete`` asks both times)."""
    removed = []
    for name, objs in sample_manifests(config, plan, namespace).items():
        k = clients[name]
        ns = k.get(f"/api/v1/namespaces/{namespace}", what=f"read Namespace {namespace}")
        if ns is None:
            continue
        for obj in reversed(objs):
            if obj["kind"] == "Namespace" and not ownership.is_managed(ns):
                continue
            if kube.delete(k, obj):
                removed.append(f"{name}: {kube.describe(obj)}")
    return removed


