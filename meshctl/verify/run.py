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
:mod:`~meshctl.verify.curl`), :mod:`~meshctl.verify.control_plane`.
"""

from __future__ import annotations

from meshctl import kube
from meshctl.config import Config
from meshctl.topology import Plan
from meshctl.verdicts import PASS, SKIP
from meshctl.verify import control_plane as control_plane
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
from meshctl.verify.traffic import cleanup, refuse_foreign, traffic_checks

# --- the whole run -----------------------------------------------------------------------


def run(config: Config, plan: Plan, *, requests: int = 10, keep: bool = False,
        namespace: str = DEFAULT_NAMESPACE, timeout: float = READY_TIMEOUT,
        progress: Progress = quiet) -> Result:
    """Static half, then (only when it passed) the traffic half, then cleanup.

    A ``namespace`` that exists on any cluster without meshctl's label stops verify
    at once (:class:`CheckFailed`, exit 1), before anything is written.
    """
    clients = {n: kube.client(config.clusters[n], deadline=min(30.0, kube.DEFAULT_DEADLINE))
               for n in plan.names}
    refuse_foreign(clients, namespace)
    progress(plan.main, "static checks …")
    checks = static_checks(config, plan, clients)
    if not all(c.status == PASS for c in checks):
        # control-plane half (control_plane): istiod's own view, without the sample
        checks += control_plane.checks(config, plan, clients)
        reason = "traffic was NOT checked: the static checks failed, so no sample was deployed"
        checks.append(Check("traffic", "requests", None, SKIP, reason))
        return Result(plan.main, plan.remotes, tuple(checks),
                      Traffic(False, None, requests, 0, reason=reason), namespace=namespace)
    traffic_list, traffic = traffic_checks(config, plan, clients, requests=requests,
                                           namespace=namespace, timeout=timeout,
                                           progress=progress)
    # control-plane half (control_plane): each primary's istiod, sample deployed
    progress(plan.main, "asking each istiod what it sees …")
    traffic_list += control_plane.checks(config, plan, clients, namespace=namespace)
    removed: list[str] = []
    if not keep:
        removed = cleanup(config, plan, clients, namespace)
        progress(plan.main, f"removed {len(removed)} sample objects")
    return Result(plan.main, plan.remotes, tuple(checks + traffic_list), traffic, kept=keep,
                  cleanup=tuple(removed), namespace=namespace)


