"""``verify``: does the mesh really span the clusters?  Facts from the live clusters only.

Two halves, each a list of :class:`Check` (one per JUnit testcase):

- static: for every link of the plan, the target holds the source's remote secret and
  that secret's kubeconfig reaches the source's API server *with its own token*
  (``GET /version``, then a SelfSubjectReview that only an authenticated caller can
  make; the token stays in memory, never in a message); every cluster's ``cacerts``
  chains to one root (``cert_status``); east-west gateways have addresses where the
  plan needs them; istiod is Available on every primary.
- traffic: Istio's helloworld (v1 on the main, v2 on every remote) and a curl client
  in an injected namespace that meshctl owns (``meshctl-verify``, ``--namespace``; an
  existing namespace of that name that meshctl did not make is refused before anything
  is written); wait for them; then N requests from the client through the pods/exec
  API.  Each request reports its own curl exit status and HTTP code between markers
  (:func:`curl_script`), so "sent" is what was attempted and every failure is an error
  with curl's own reason.  PASS needs every request answered and an answer from every
  expected version and cluster.  Cleanup removes only meshctl's objects.

A request that was not seen is never counted: when exec is impossible (the sandbox
has simulated nodes, no container runs, so the API server cannot reach a kubelet)
the traffic check FAILs with "traffic was NOT checked" and why, after reporting every
step reached.  In the sandbox Istio's admission webhooks are answered by a stand-in
that admits everything unchanged, so NO sidecar is injected; the sidecar check says
so from what the pods contain.  When the static half fails, the traffic half is
skipped (a broken mesh cannot carry it) and says why.

A remote secret's kubeconfig is read through :mod:`meshctl.remote_kubeconfig`'s
allow-list and the client is built from its values by hand: a Secret that names an
exec plugin, a file or another credential is a FAIL naming the Secret and the field,
and nothing of it runs.

Data here; rendering in :mod:`meshctl.report`; :func:`junit_xml` is pure.

``--json`` prints :meth:`Result.to_json`, schema ``meshctl.verify/v1`` (keys only added
within v1)::

    {"schema": "meshctl.verify/v1", "main", "remotes": [...], "passed", "staticPassed",
     "trafficChecked", "summary": {"PASS", "FAIL", "SKIP"}, "namespace",
     "checks": [{"group", "name", "cluster", "status", "message", "hint"}],
     "traffic": {"checked", "client", "requests",       # asked for
                 "sent",                                # attempted, as the client reported
                 "errors",                              # attempted and not answered
                 "answers": [{"version", "cluster", "count"}],
                 "failures": [{"reason", "count"}],     # curl's words / HTTP status
                 "reason"},                             # why traffic was not checked
     "kept", "cleanup": [...]}
"""

from __future__ import annotations

import json
import re
import shlex
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.stream import stream
from kubernetes.stream.ws_client import ERROR_CHANNEL

from meshctl import kube, manifests, ownership
from meshctl.ca import status as cert_status
from meshctl.config import Config
from meshctl.errors import CheckFailed, MeshctlError, one_line
from meshctl.kube import remote_kubeconfig
from meshctl.mesh import install, remote_secret
from meshctl.topology import Link, Plan
from meshctl.verify import control_plane as verify_control_plane

SCHEMA = "meshctl.verify/v1"
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
DEFAULT_NAMESPACE = "meshctl-verify"
READY_TIMEOUT = 180.0
CURL_MAX_TIME = 5  # seconds per request
ANSWER = re.compile(r"Hello version: (?P<version>[\w.-]+), instance: (?P<instance>[\w.-]+)")
# per-request markers the curl script prints around each request (see curl_script)
BEGIN, HTTP_CODE, EXIT = "@@meshctl-request ", "@@meshctl-http ", "@@meshctl-exit "


def target(namespace: str) -> str:
    """The helloworld URL the client asks, through the mesh (the Service's short name)."""
    return f"helloworld.{namespace}:5000/hello"

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
class Failure:
    """Requests that failed the same way; ``reason`` is curl's own words (or the HTTP
    status and the start of the body), from the first such request."""

    reason: str
    count: int


@dataclass(frozen=True)
class Traffic:
    """What the requests showed.  ``checked`` is False unless requests really ran."""

    checked: bool
    client: str | None  # cluster/pod the requests came from
    requests: int  # asked for
    sent: int  # attempted, as the client reported them (0 when exec was impossible)
    answers: tuple[Answer, ...] = ()
    errors: int = 0  # attempted requests that got no helloworld answer
    reason: str | None = None  # why traffic was not checked
    failures: tuple[Failure, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"checked": self.checked, "client": self.client, "requests": self.requests,
                "sent": self.sent, "errors": self.errors, "reason": self.reason,
                "answers": [{"version": a.version, "cluster": a.cluster, "count": a.count}
                            for a in self.answers],
                "failures": [{"reason": f.reason, "count": f.count} for f in self.failures]}


@dataclass(frozen=True)
class Result:
    main: str
    remotes: tuple[str, ...]
    checks: tuple[Check, ...]
    traffic: Traffic
    kept: bool = False  # --keep: the sample apps were left in place
    cleanup: tuple[str, ...] = field(default=())  # what was removed afterwards
    namespace: str = DEFAULT_NAMESPACE

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
                "cleanup": list(self.cleanup), "namespace": self.namespace}


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
                namespace: str, timeout: float) -> ExecOutput:
    """``kubectl exec`` through the API (pods/exec over a websocket), on a fresh client.

    A fresh ApiClient because ``kubernetes.stream`` swaps the client's request method
    for the websocket while it runs; sharing would race with other threads' calls.
    """
    cfg = k.api.configuration
    api = k8s.ApiClient(configuration=cfg)
    try:
        ws = stream(k8s.CoreV1Api(api).connect_get_namespaced_pod_exec, pod, namespace,
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


# --- counting requests -------------------------------------------------------------------


def curl_script(url: str, requests: int, *, max_time: float = CURL_MAX_TIME) -> str:
    """The shell loop run in the curl pod (POSIX sh: busybox in curlimages/curl).

    Each request is framed by markers on their own lines: ``BEGIN n`` before it, curl's
    body and its stderr (``2>&1``, so in order), ``HTTP_CODE`` from ``-w``, then
    ``EXIT`` with curl's exit status.  A request counts as sent when its BEGIN line
    arrived; one whose EXIT line never came is an error, never an answer.
    """
    return (f'i=0; while [ "$i" -lt {int(requests)} ]; do i=$((i+1)); '
            f'echo "{BEGIN}$i"; '
            f"curl -sS --max-time {max_time:g} -w '\\n{HTTP_CODE}%{{http_code}}\\n' "
            f"{shlex.quote(url)} 2>&1; "
            f'echo "{EXIT}$?"; done')


@dataclass(frozen=True)
class Tally:
    """What the client's output says happened, request by request."""

    sent: int
    answers: tuple[Answer, ...]
    failures: tuple[Failure, ...]

    @property
    def errors(self) -> int:
        return sum(f.count for f in self.failures)


def _why(exit_code: int | None, http: str | None, lines: list[str]) -> str | None:
    """``None`` for a helloworld answer, else the reason this request failed, in words."""
    if exit_code is None:
        return "no result: the output ended during the request"
    if exit_code != 0:
        said = next((ln for ln in lines if ln.startswith("curl: (")), None)
        return one_line(said or f"curl exited {exit_code}", 200)
    if http != "200":
        body = next((ln for ln in lines if ln), "")
        return one_line(f"HTTP {http or '?'}" + (f": {body[:80]}" if body else ""), 200)
    if not any(ANSWER.search(ln) for ln in lines):
        body = next((ln for ln in lines if ln), "(empty body)")
        return one_line(f"HTTP 200 but not a helloworld answer: {body[:80]}", 200)
    return None


def count_requests(stdout: str, instances: dict[str, str]) -> Tally:
    """Per request: an answer (by version and the cluster of the pod that gave it) or a
    failure with its reason.  Lines before the first marker are ignored."""
    answers: Counter[tuple[str, str]] = Counter()
    failures: Counter[str] = Counter()
    first_seen: dict[str, str] = {}
    sent = 0
    current: dict[str, Any] | None = None

    def close(req: dict[str, Any] | None) -> None:
        if req is None:
            return
        why = _why(req["exit"], req["http"], req["lines"])
        if why is None:
            m = next(m for ln in req["lines"] if (m := ANSWER.search(ln)))
            answers[(m["version"], instances.get(m["instance"], "unknown"))] += 1
        else:
            key = re.sub(r"\d+", "N", why)  # "after 5002 ms" and "after 5001 ms" are one
            first_seen.setdefault(key, why)
            failures[key] += 1

    for raw in stdout.splitlines():
        line = raw.rstrip("\r")
        if line.startswith(BEGIN):
            close(current)
            sent += 1
            current = {"exit": None, "http": None, "lines": []}
        elif current is None:
            continue
        elif line.startswith(HTTP_CODE):
            current["http"] = line[len(HTTP_CODE):].strip()
        elif line.startswith(EXIT):
            code = line[len(EXIT):].strip()
            current["exit"] = int(code) if code.isdigit() else 255
            close(current)
            current = None
        else:
            current["lines"].append(line.strip())
    close(current)
    return Tally(sent=sent,
                 answers=tuple(Answer(v, c, n) for (v, c), n in sorted(answers.items())),
                 failures=tuple(Failure(first_seen[k], n) for k, n in failures.most_common()))


def judge_traffic(tally: Tally, *, requests: int, expected: dict[str, str],
                  client: str) -> tuple[str, str]:
    """(PASS|FAIL, message): PASS only when every request was sent and answered and every
    expected (cluster -> version) answered."""
    summary = ", ".join(f"{a.version}@{a.cluster}: {a.count}" for a in tally.answers) or "none"
    failed = "; ".join(f"{f.count}× {f.reason}" for f in tally.failures)
    seen = {(a.cluster, a.version) for a in tally.answers}
    missing = [f"{version}@{cluster}" for cluster, version in expected.items()
               if (cluster, version) not in seen]
    head = (f"{tally.sent} of {requests} requests sent from {client}: answers {summary}; "
            f"{tally.errors} errors" + (f" ({failed})" if failed else ""))
    problems = []
    if tally.sent < requests:
        problems.append(f"only {tally.sent} of {requests} requests were attempted")
    if tally.errors:
        problems.append(f"{tally.errors} request(s) got no answer")
    if missing:
        problems.append(f"no answer from {', '.join(missing)}")
    if problems:
        return FAIL, f"{head}; " + "; ".join(problems)
    return PASS, f"{head}; every request answered, every cluster and version answered"


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
                   progress: Progress = _quiet) -> tuple[list[Check], Traffic]:
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
            if not _has_sidecar(p)]
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


# --- the whole run -----------------------------------------------------------------------


def run(config: Config, plan: Plan, *, requests: int = 10, keep: bool = False,
        namespace: str = DEFAULT_NAMESPACE, timeout: float = READY_TIMEOUT,
        progress: Progress = _quiet) -> Result:
    """Static half, then (only when it passed) the traffic half, then cleanup.

    A ``namespace`` that exists on any cluster without meshctl's label stops verify
    at once (:class:`CheckFailed`, exit 1), before anything is written.
    """
    clients = {n: kube.client(config.clusters[n], deadline=30) for n in plan.names}
    refuse_foreign(clients, namespace)
    progress(plan.main, "static checks …")
    checks = static_checks(config, plan, clients)
    if not all(c.status == PASS for c in checks):
        # control-plane half (verify_control_plane): istiod's own view, without the sample
        checks += verify_control_plane.checks(config, plan, clients)
        reason = "traffic was NOT checked: the static checks failed, so no sample was deployed"
        checks.append(Check("traffic", "requests", None, SKIP, reason))
        return Result(plan.main, plan.remotes, tuple(checks),
                      Traffic(False, None, requests, 0, reason=reason), namespace=namespace)
    traffic_list, traffic = traffic_checks(config, plan, clients, requests=requests,
                                           namespace=namespace, timeout=timeout,
                                           progress=progress)
    # control-plane half (verify_control_plane): each primary's istiod, sample deployed
    progress(plan.main, "asking each istiod what it sees …")
    traffic_list += verify_control_plane.checks(config, plan, clients, namespace=namespace)
    removed: list[str] = []
    if not keep:
        removed = cleanup(config, plan, clients, namespace)
        progress(plan.main, f"removed {len(removed)} sample objects")
    return Result(plan.main, plan.remotes, tuple(checks + traffic_list), traffic, kept=keep,
                  cleanup=tuple(removed), namespace=namespace)


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
