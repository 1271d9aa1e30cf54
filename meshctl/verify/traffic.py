"""verify's traffic half: the sample apps, their readiness, sidecars, then requests.

The samples live in verify's own namespace: every write goes through the run's
:class:`~meshctl.verify.ledger.Ledger`, which refuses a namespace or object that is not
verify's for this mesh ID and records what it writes, so that
:func:`meshctl.verify.ledger.cleanup` removes exactly that.
"""

from __future__ import annotations

from typing import Any

import yaml

from meshctl import istio, kube, manifests
from meshctl.config import Config
from meshctl.errors import MeshctlError
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
from meshctl.verify.ledger import Ledger
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

    Every one carries meshctl's ownership labels, the namespace first (it also carries
    verify's purpose label, :data:`meshctl.verify.ledger.PURPOSE`).
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


def expected_answers(plan: Plan) -> dict[str, str]:
    """``{cluster: version}`` that must each answer at least once: v1 on the main, v2 on
    every remote.  Its size is the endpoint count the requests are sized for
    (:mod:`meshctl.verify.sizing`)."""
    return {n: "v1" if n == plan.main else "v2" for n in plan.names}


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
                   requests: int, ledger: Ledger, timeout: float = READY_TIMEOUT,
                   progress: Progress = quiet) -> tuple[list[Check], Traffic]:
    """Deploy (through ``ledger``), wait, check sidecars, send requests.  Stops at the
    first step that fails; cleanup is the caller's, in a ``finally``."""
    steps = _Steps()
    not_checked = "traffic was NOT checked"
    ns = ledger.namespace
    objs = sample_manifests(config, plan, ns)
    expected = expected_answers(plan)
    endpoints = len(expected)
    try:
        for name in plan.names:
            kube.wait_for(f"{name}: namespace {ns} gone",
                          lambda name=name: _namespace_gone(clients[name], ns),
                          timeout=timeout, interval=2.0)
            # checked again right before each write: the namespace, then every object
            changed = [ledger.ensure(clients[name], o) for o in objs[name]]
            progress(name, f"sample apps in namespace {ns}: "
                           f"{sum(a != 'unchanged' for a in changed)} objects written")
    except MeshctlError as e:
        steps.add("deploy samples", FAIL, e.message, hint=e.hint)
        return steps.checks, Traffic(False, None, requests, 0, endpoints=endpoints,
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
        return steps.checks, Traffic(False, None, requests, 0, endpoints=endpoints,
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
        return steps.checks, Traffic(False, None, requests, 0, endpoints=endpoints,
                                     reason="no curl pod")
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
        return steps.checks, Traffic(False, client, requests, 0, endpoints=endpoints,
                                     reason=reason)
    tally = count_requests(output.stdout, instances)
    status, message = judge_traffic(tally, requests=requests, expected=expected,
                                    client=client)
    steps.add("requests", status, message,
              hint=None if status == PASS else
              "cross-cluster traffic needs remote secrets, a common root and, across "
              "networks, east-west gateways (see the static checks)")
    return steps.checks, Traffic(True, client, requests, tally.sent, tally.answers,
                                 tally.errors, failures=tally.failures, endpoints=endpoints)
