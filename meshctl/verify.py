"""``verify``: does the mesh really span the clusters?  Facts from the live clusters only.

Two halves, each a list of :class:`Check` (one per JUnit testcase):

- static: for every link of the plan, the target holds the source's remote secret and
  that secret's kubeconfig reaches the source's API server *with its own token*
  (``GET /version``, then a SelfSubjectReview that only an authenticated caller can
  make; the token stays in memory, never in a message); every cluster's ``cacerts``
  chains to one root (``cert_status``); east-west gateways have addresses where the
  plan needs them; istiod is Available on every primary.
- traffic: Istio's helloworld (v1 on the main, v2 on every remote) and a curl client
  in an injected ``sample`` namespace; wait for them; then N requests from the client
  through the pods/exec API, counting answers by version and cluster.  Success needs
  an answer from every cluster.

A request that was not seen is never counted: when exec is impossible (the sandbox
has simulated nodes, no container runs, so the API server cannot reach a kubelet)
the traffic check FAILs with "traffic was NOT checked" and why, after reporting every
step reached.  In the sandbox Istio's admission webhooks are answered by a stand-in
that admits everything unchanged, so NO sidecar is injected; the sidecar check says
so from what the pods contain.  When the static half fails, the traffic half is
skipped (a broken mesh cannot carry it) and says why.

Data here; rendering in :mod:`meshctl.report`; :func:`junit_xml` is pure.
"""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as kube_config
from kubernetes.stream import stream
from kubernetes.stream.ws_client import ERROR_CHANNEL

from meshctl import cert_status, install, kube, manifests, remote_secret
from meshctl.config import Config
from meshctl.errors import MeshctlError, one_line
from meshctl.topology import Link, Plan

SCHEMA = "meshctl.verify/v1"
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
SAMPLE_NS = "sample"
TARGET = f"helloworld.{SAMPLE_NS}:5000/hello"
READY_TIMEOUT = 180.0
EXEC_TIMEOUT = 60.0
ANSWER = re.compile(r"Hello version: (?P<version>[\w.-]+), instance: (?P<instance>[\w.-]+)")

Progress = Callable[[str, str], None]  # (cluster, message)


def _quiet(cluster: str, message: str) -> None:
    del cluster, message


@dataclass(frozen=True)
class Check:
    """One verdict, one JUnit testcase.  ``group`` is static/traffic, ``name`` the check."""

    group: str
    name: str
    cluster: str | None
    status: str  # PASS | FAIL | SKIP
    message: str
    hint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "name": self.name, "cluster": self.cluster,
                "status": self.status, "message": self.message, "hint": self.hint}


@dataclass(frozen=True)
class Answer:
    version: str
    cluster: str  # the cluster whose pod answered, or "unknown"
    count: int


@dataclass(frozen=True)
class Traffic:
    """What the requests showed.  ``checked`` is False unless requests really ran."""

    checked: bool
    client: str | None  # cluster/pod the requests came from
    requests: int  # asked for
    sent: int  # actually sent (0 when exec was impossible)
    answers: tuple[Answer, ...] = ()
    errors: int = 0
    reason: str | None = None  # why traffic was not checked

    def to_json(self) -> dict[str, Any]:
        return {"checked": self.checked, "client": self.client, "requests": self.requests,
                "sent": self.sent, "errors": self.errors, "reason": self.reason,
                "answers": [{"version": a.version, "cluster": a.cluster, "count": a.count}
                            for a in self.answers]}


@dataclass(frozen=True)
class Result:
    main: str
    remotes: tuple[str, ...]
    checks: tuple[Check, ...]
    traffic: Traffic
    kept: bool = False  # --keep: the sample apps were left in place
    cleanup: tuple[str, ...] = field(default=())  # what was removed afterwards

    @property
    def passed(self) -> bool:
        return self.traffic.checked and all(c.status == PASS for c in self.checks)

    @property
    def static_passed(self) -> bool:
        return all(c.status == PASS for c in self.checks if c.group == "static")

    def to_json(self) -> dict[str, Any]:
        counts = Counter(c.status for c in self.checks)
        return {"schema": SCHEMA, "main": self.main, "remotes": list(self.remotes),
                "passed": self.passed, "staticPassed": self.static_passed,
                "trafficChecked": self.traffic.checked,
                "summary": {s: counts.get(s, 0) for s in (PASS, FAIL, SKIP)},
                "checks": [c.to_json() for c in self.checks],
                "traffic": self.traffic.to_json(), "kept": self.kept,
                "cleanup": list(self.cleanup)}


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
        raw = (secret.get("data") or {}).get(link.source)
        try:
            kubeconfig = yaml.safe_load(base64.b64decode(raw or ""))
            server = kubeconfig["clusters"][0]["cluster"]["server"]
            api = kube_config.new_client_from_config_dict(kubeconfig)
        except Exception:  # never echo the content: it holds the token
            return result(FAIL, f"{where}: no readable kubeconfig under key {link.source!r}",
                          fix)
        api.configuration.retries = False
        via = kube.Kube(cluster=f"{link.source} (as {link.target}'s istiod)", api=api,
                        deadline=15)
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
            api.close()
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
    name = install.istiod_name(config)

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


# --- traffic half ------------------------------------------------------------------------


def sample_manifests(config: Config, plan: Plan) -> dict[str, list[dict[str, Any]]]:
    """Per cluster, the objects the traffic half applies (pure): main v1 + curl, remotes v2."""
    out = {}
    for c in plan.clusters:
        text = manifests.render("sample-namespace.yaml.j2", namespace=SAMPLE_NS,
                                revision=config.mesh.istio.revision)
        text += "\n---\n" + manifests.render(
            "helloworld.yaml.j2", namespace=SAMPLE_NS,
            versions=["v1"] if c.name == plan.main else ["v2"])
        if c.name == plan.main:
            text += "\n---\n" + manifests.render("curl.yaml.j2", namespace=SAMPLE_NS)
        out[c.name] = [d for d in yaml.safe_load_all(text) if d]
    return out


def _namespace_gone(k: kube.Kube) -> str | None:
    ns = k.get(f"/api/v1/namespaces/{SAMPLE_NS}", what=f"read Namespace {SAMPLE_NS}")
    if ns is not None and (ns.get("status") or {}).get("phase") == "Terminating":
        return f"{k.cluster}: namespace {SAMPLE_NS} still terminating (from an earlier run)"
    return None


def _pods(k: kube.Kube, selector: str) -> list[dict[str, Any]]:
    return list(k.items(f"/api/v1/namespaces/{SAMPLE_NS}/pods",
                        query={"labelSelector": selector}))


def _has_sidecar(pod: dict[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    return any(c.get("name") == "istio-proxy"
               for c in (spec.get("containers") or []) + (spec.get("initContainers") or []))


@dataclass(frozen=True)
class ExecOutput:
    stdout: str
    exit_code: int


class ExecFailed(Exception):
    """The API server could not run a command in the pod; ``str`` says why, in one line."""


def exec_in_pod(k: kube.Kube, pod: str, container: str, command: list[str], *,
                timeout: float = EXEC_TIMEOUT) -> ExecOutput:
    """``kubectl exec`` through the API (pods/exec over a websocket), on a fresh client.

    A fresh ApiClient because ``kubernetes.stream`` swaps the client's request method
    for the websocket while it runs; sharing would race with other threads' calls.
    """
    cfg = k.api.configuration
    api = k8s.ApiClient(configuration=cfg)
    try:
        ws = stream(k8s.CoreV1Api(api).connect_get_namespaced_pod_exec, pod, SAMPLE_NS,
                    container=container, command=command, stdin=False, stdout=True,
                    stderr=True, tty=False, _preload_content=False,
                    _request_timeout=timeout)
        ws.run_forever(timeout=timeout)
        stdout = ws.read_stdout() or ""
        status_text = ws.read_channel(ERROR_CHANNEL) or ""
        ws.close()
    except k8s.ApiException as e:
        raise ExecFailed(one_line(f"pods/exec refused: HTTP {e.status} {e.reason}", 300)) \
            from None
    except Exception as e:  # websocket/TLS/socket errors: the reason is all we need
        raise ExecFailed(one_line(f"pods/exec failed: {type(e).__name__}: "
                                  f"{_short_urls(str(e))}", 300)) from None
    finally:
        api.close()
    return ExecOutput(stdout, _exit_code(status_text))


def _short_urls(text: str) -> str:
    """Cut URLs to scheme://host:port/first-segment: the rest repeats the command."""
    return re.sub(r'"?(https?://[^/"\s]+)(/[^/"\s?]*)[^"\s]*"?', r"\1\2/…", text)


def _exit_code(status_text: str) -> int:
    """The exit code from the exec error channel (a v1 Status), or ExecFailed."""
    if not status_text:
        raise ExecFailed("pods/exec ended without a status: the command may not have run")
    try:
        status = json.loads(status_text)
    except ValueError:
        raise ExecFailed(one_line(f"pods/exec failed: {_short_urls(status_text)}", 300)) \
            from None
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", "1"))
    raise ExecFailed(one_line(
        f"pods/exec failed: {_short_urls(str(status.get('message', status_text)))}", 300))


def count_answers(stdout: str, instances: dict[str, str]) -> tuple[tuple[Answer, ...], int]:
    """Answers by (version, cluster) from helloworld's replies, and the lines that were not."""
    counts: Counter[tuple[str, str]] = Counter()
    errors = 0
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        m = ANSWER.search(line)
        if not m:
            errors += 1
            continue
        counts[(m["version"], instances.get(m["instance"], "unknown"))] += 1
    return tuple(Answer(v, c, n) for (v, c), n in sorted(counts.items())), errors


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
                   requests: int, timeout: float = READY_TIMEOUT,
                   progress: Progress = _quiet) -> tuple[list[Check], Traffic]:
    """Deploy, wait, check sidecars, send requests.  Stops at the first step that fails."""
    steps = _Steps()
    not_checked = "traffic was NOT checked"
    objs = sample_manifests(config, plan)
    try:
        for name in plan.names:
            kube.wait_for(f"{name}: namespace {SAMPLE_NS} gone",
                          lambda name=name: _namespace_gone(clients[name]), timeout=timeout,
                          interval=2.0)
            changed = [kube.ensure(clients[name], o) for o in objs[name]]
            progress(name, f"sample apps in namespace {SAMPLE_NS}: "
                           f"{sum(a != 'unchanged' for a in changed)} objects written")
    except MeshctlError as e:
        steps.add("deploy samples", FAIL, e.message, hint=e.hint)
        return steps.checks, Traffic(False, None, requests, 0,
                                     reason=f"{not_checked}: the samples could not be deployed")
    deployments = {n: [o["metadata"]["name"] for o in objs[n] if o["kind"] == "Deployment"]
                   for n in plan.names}
    steps.add("deploy samples", PASS, "; ".join(
        f"{n}: {', '.join(deployments[n])}" for n in plan.names)
        + f" in namespace {SAMPLE_NS} (injection label set)")

    try:
        for name in plan.names:
            for dep in deployments[name]:
                kube.wait_for(f"{name}: Deployment {SAMPLE_NS}/{dep} Available",
                              lambda name=name, dep=dep: install.deployment_problem(
                                  clients[name], dep, namespace=SAMPLE_NS),
                              timeout=timeout, interval=2.0)
    except MeshctlError as e:
        steps.add("samples ready", FAIL, e.message,
                  hint=f"kubectl -n {SAMPLE_NS} get pods,events on that cluster")
        return steps.checks, Traffic(False, None, requests, 0,
                                     reason=f"{not_checked}: the samples never became ready")
    pods = {n: _pods(clients[n], "app in (helloworld,curl)") for n in plan.names}
    steps.add("samples ready", PASS, "; ".join(
        f"{n}: {len(pods[n])} pods Ready" for n in plan.names))
    progress(plan.main, "sample apps Ready")

    bare = [f"{n}/{p['metadata']['name']}" for n in plan.names for p in pods[n]
            if not _has_sidecar(p)]
    if bare:
        steps.add("sidecars injected", FAIL,
                  f"no istio-proxy container in {len(bare)} pod(s) ({', '.join(bare[:4])}"
                  f"{', …' if len(bare) > 4 else ''}) although namespace {SAMPLE_NS} is "
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
    client = f"{plan.main}/{SAMPLE_NS}/{pod}"
    script = (f"for i in $(seq {requests}); do curl -sS --max-time 5 {TARGET}; echo; done")
    progress(plan.main, f"{requests} requests from {pod} to {TARGET} (pods/exec)")
    try:
        output = exec_in_pod(clients[plan.main], pod, "curl", ["sh", "-c", script])
    except ExecFailed as e:
        reason = (f"{not_checked}: could not run curl in {client} through the pods/exec "
                  f"API ({e}); no request was sent, so no answer is reported")
        steps.add("requests", FAIL, reason,
                  hint="verify needs pods that run containers and an API server that can "
                       "reach each node's kubelet for exec")
        return steps.checks, Traffic(False, client, requests, 0, reason=reason)
    answers, errors = count_answers(output.stdout, instances)
    answered = {a.cluster for a in answers}
    missing = [n for n in plan.names if n not in answered]
    traffic = Traffic(True, client, requests, requests, answers, errors)
    summary = ", ".join(f"{a.version}@{a.cluster}: {a.count}" for a in answers) or "none"
    if missing:
        steps.add("requests", FAIL, f"{requests} requests from {client}: answers {summary}, "
                                    f"{errors} errors; no answer from {', '.join(missing)}",
                  hint="cross-cluster traffic needs remote secrets, a common root and, "
                       "across networks, east-west gateways (see the static checks)")
    else:
        steps.add("requests", PASS, f"{requests} requests from {client}: answers {summary}, "
                                    f"{errors} errors; every cluster answered")
    return steps.checks, traffic


def cleanup(config: Config, plan: Plan, clients: dict[str, kube.Kube]) -> list[str]:
    """Remove what the traffic half deployed; the namespace only if meshctl made it."""
    removed = []
    for name, objs in sample_manifests(config, plan).items():
        k = clients[name]
        ns = k.get(f"/api/v1/namespaces/{SAMPLE_NS}", what=f"read Namespace {SAMPLE_NS}")
        if ns is None:
            continue
        managed = (ns["metadata"].get("labels") or {}).get(
            "app.kubernetes.io/managed-by") == "meshctl"
        for obj in reversed(objs):
            if obj["kind"] == "Namespace" and not managed:
                continue
            if kube.delete(k, obj):
                removed.append(f"{name}: {kube.describe(obj)}")
    return removed


# --- the whole run -----------------------------------------------------------------------


def run(config: Config, plan: Plan, *, requests: int = 10, keep: bool = False,
        timeout: float = READY_TIMEOUT, progress: Progress = _quiet) -> Result:
    """Static half, then (only when it passed) the traffic half, then cleanup."""
    clients = {n: kube.client(config.clusters[n], deadline=30) for n in plan.names}
    progress(plan.main, "static checks …")
    checks = static_checks(config, plan, clients)
    if not all(c.status == PASS for c in checks):
        reason = "traffic was NOT checked: the static checks failed, so no sample was deployed"
        checks.append(Check("traffic", "requests", None, SKIP, reason))
        return Result(plan.main, plan.remotes, tuple(checks),
                      Traffic(False, None, requests, 0, reason=reason))
    traffic_list, traffic = traffic_checks(config, plan, clients, requests=requests,
                                           timeout=timeout, progress=progress)
    removed: list[str] = []
    if not keep:
        removed = cleanup(config, plan, clients)
        progress(plan.main, f"removed {len(removed)} sample objects")
    return Result(plan.main, plan.remotes, tuple(checks + traffic_list), traffic, kept=keep,
                  cleanup=tuple(removed))


# --- JUnit -------------------------------------------------------------------------------


def junit_xml(result: Result) -> str:
    """A JUnit XML report: one testsuite, one testcase per check (FAIL → failure)."""
    counts = Counter(c.status for c in result.checks)
    suite = ET.Element("testsuite", {
        "name": "meshctl.verify", "tests": str(len(result.checks)),
        "failures": str(counts.get(FAIL, 0)), "errors": "0",
        "skipped": str(counts.get(SKIP, 0))})
    for c in result.checks:
        case = ET.SubElement(suite, "testcase", {"classname": f"meshctl.verify.{c.group}",
                                                 "name": c.name})
        text = c.message + (f" (hint: {c.hint})" if c.hint else "")
        if c.status == FAIL:
            ET.SubElement(case, "failure", {"message": c.message}).text = text
        elif c.status == SKIP:
            ET.SubElement(case, "skipped", {"message": c.message})
        else:
            ET.SubElement(case, "system-out").text = text
    root = ET.Element("testsuites", {"name": "meshctl verify",
                                     "tests": suite.get("tests", "0"),
                                     "failures": suite.get("failures", "0")})
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
