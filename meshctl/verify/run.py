"""``verify``: does the mesh really span the clusters?  Facts from the live clusters only.

Two halves, each a list of :class:`Check` (one per JUnit testcase):

- static: for every link of the plan, the target holds the source's remote secret and
  that secret's kubeconfig reaches the source's API server *with its own token*
  (``GET /version``, then a SelfSubjectReview that only an authenticated caller can
  make; the token stays in memory, never in a message); every cluster's ``cacerts``
  chains to one root (``cert_status``); east-west gateways have addresses where the
  plan needs them; istiod is Available on every primary.
- traffic: Istio's helloworld (v1 on the main, v2 on every remote) and a curl client
  in verify's own injected namespace (``meshctl-verify``, ``--namespace``; an existing
  namespace of that name that is not verify's for this mesh ID is refused before
  anything is written, :mod:`~meshctl.verify.ledger`); wait for them; then N requests
  from the client through the pods/exec API, N sized from the number of clusters so
  that a healthy mesh fails by bad luck in under 0.1 % of runs
  (:mod:`~meshctl.verify.sizing`).  Each request reports its own curl exit status and
  HTTP code between markers (:func:`curl_script`), so "sent" is what was attempted and
  every failure is an error with curl's own reason.  PASS needs every request answered
  and an answer from every expected version and cluster.
- cleanup, in a ``finally`` (errors and Ctrl-C included, not with ``--keep``): only the
  objects this run recorded writing, and the namespace only when it is verify's, this
  run's, and holds nothing else.

A request that was not seen is never counted: when exec is impossible (the sandbox
has simulated nodes, no container runs, so the API server cannot reach a kubelet)
the traffic check FAILs with "traffic was NOT checked" and why, after reporting every
step reached.  Whether a sidecar was injected is judged from what the pods contain
(the sandbox runs the real istiod, whose injector adds it on primaries; a remote-role
cluster's webhooks are answered by a stand-in that injects nothing).  When the static
half fails, the traffic half is skipped (a broken mesh cannot carry it) and says why.

A remote secret's kubeconfig is read through :mod:`meshctl.kube.remote_kubeconfig`'s
allow-list and the client is built from its values by hand: a Secret that names an
exec plugin, a file or another credential is a FAIL naming the Secret and the field,
and nothing of it runs.

Data here; rendering in :mod:`meshctl.report`; :func:`junit_xml` is pure.

The parts: :mod:`~meshctl.verify.result` (the data, ``--json``, JUnit),
:mod:`~meshctl.verify.static`, :mod:`~meshctl.verify.traffic` (with
:mod:`~meshctl.verify.curl` and :mod:`~meshctl.verify.sizing`),
:mod:`~meshctl.verify.ledger`, :mod:`~meshctl.verify.control_plane`.
"""

from __future__ import annotations

from meshctl import kube, probes
from meshctl.config import Config
from meshctl.topology import Plan
from meshctl.verdicts import PASS, SKIP
from meshctl.verify import control_plane as control_plane
from meshctl.verify import ledger as tidy
from meshctl.verify import sizing, workloads
from meshctl.verify.result import (
    DEFAULT_NAMESPACE,
    READY_TIMEOUT,
    Check,
    Progress,
    Result,
    Traffic,
    quiet,
)
from meshctl.verify.static import static_checks
from meshctl.verify.traffic import expected_answers, traffic_checks

# --- the whole run -----------------------------------------------------------------------


def run(config: Config, plan: Plan, *, requests: int | None = None, keep: bool = False,
        namespace: str = DEFAULT_NAMESPACE, timeout: float = READY_TIMEOUT,
        progress: Progress = quiet, probe: probes.Probe | None = None) -> Result:
    """Static half, then (only when it passed) the traffic half, then cleanup.

    A ``namespace`` that is not verify's for this mesh ID on any cluster stops verify
    at once (:class:`CheckFailed`, exit 1), before anything is written.  Cleanup runs in
    a ``finally``: after an error or Ctrl-C too (not with ``keep``).  ``requests``:
    ``None`` sizes the count from the number of expected endpoints
    (:mod:`meshctl.verify.sizing`).  ``probe``: real workloads instead of the sidecar
    pods (the sandbox's, handed in by the task on sandbox clusters;
    :mod:`meshctl.verify.workloads`); with ``keep`` its workloads keep running.
    """
    clients = {n: kube.client(config.clusters[n], deadline=min(30.0, kube.DEFAULT_DEADLINE))
               for n in plan.names}
    ledger = tidy.claim(clients, namespace, config.mesh.mesh_id)
    endpoints = len(expected_answers(plan))
    # the workload probe calls from every primary, and each must see every endpoint
    callers = sum(1 for c in plan.clusters if config.clusters[c.name].is_primary) \
        if probe is not None else 1
    count = sizing.request_count(endpoints, requests, callers=callers)
    named = {"probe": probe.name, "probe_limits": probe.limits} if probe is not None else {}
    progress(plan.main, "static checks …")
    checks = static_checks(config, plan, clients)
    if not all(c.status == PASS for c in checks):
        # control-plane half (control_plane): istiod's own view, without the sample
        checks += control_plane.checks(config, plan, clients)
        reason = "traffic was NOT checked: the static checks failed, so no sample was deployed"
        checks.append(Check("traffic", "requests", None, SKIP, reason))
        return Result(plan.main, plan.remotes, tuple(checks),
                      Traffic(False, None, count, 0, reason=reason, endpoints=endpoints),
                      namespace=namespace, **named)
    tidied = tidy.Tidied()
    try:
        if probe is not None:
            progress(plan.main, f"traffic through {probe.name}")
            traffic_list, traffic = workloads.probe_checks(
                config, plan, clients, probe, requests=count, ledger=ledger,
                progress=progress)
        else:
            traffic_list, traffic = traffic_checks(config, plan, clients, requests=count,
                                                   ledger=ledger, timeout=timeout,
                                                   progress=progress)
        # control-plane half (control_plane): each primary's istiod, sample deployed
        progress(plan.main, "asking each istiod what it sees …")
        traffic_list += control_plane.checks(
            config, plan, clients, namespace=namespace,
            sample=workloads.SERVICE if probe is not None else control_plane.SAMPLE)
    finally:
        if probe is not None and not keep:
            probe.close()  # its registrations and processes first, then the ledger's
        if not keep:
            tidied = tidy.cleanup(clients, ledger, progress)
    return Result(plan.main, plan.remotes, tuple(checks + traffic_list), traffic, kept=keep,
                  cleanup=tidied.removed, namespace=namespace, cleanup_kept=tidied.kept,
                  **named)
