"""Preflight: can each cluster take the mesh?  Checks → results, before anything changes.

The most common first failure of a multi-cluster Istio setup is a cluster started
too small: istiod or the injected pods stay Pending and nothing says why.  Preflight
says it up front, with numbers, and ``bootstrap`` runs it first and stops on FAIL::

    reports = preflight.run(config, ["cluster1", "cluster2"], plan=plan)
    if preflight.failed(reports): ...

Layout: ``preflight.facts`` reads each cluster once (the only I/O; clusters are read
concurrently, one thread each), ``preflight.checks``, ``preflight.resources`` and
``preflight.ownership`` (an Istio meshctl did not install; ``preflight.found`` folds
what is found) turn facts into :class:`Result` values, ``preflight.capacity`` is the
placement arithmetic; this module wires them and defines the JSON document.
:func:`foreign_istio` runs the ownership checks alone, for bootstrap.

An unreachable cluster is a FAIL for that cluster and the others are still checked;
:func:`exit_code` is 3 only when no cluster could be reached at all, else 1 on any
FAIL, else 0.

JSON document (``--json``), schema ``meshctl.preflight/v1``; keys are only ever
added, never renamed or removed, within v1::

    {
      "schema": "meshctl.preflight/v1",
      "status": "PASS" | "WARN" | "FAIL",      # the worst result over all clusters
      "exitCode": 0 | 1 | 3,
      "summary": {"PASS": int, "WARN": int, "FAIL": int},
      "clusters": [
        {
          "cluster": str,                        # cluster file name
          "reachable": bool,                     # context loaded and API answered
          "status": "PASS" | "WARN" | "FAIL",    # the worst of its results
          "requests": int,                       # API requests preflight sent it
          "seconds": float,                      # wall time of its reads
          "results": [
            {
              "cluster": str,
              "check": str,                      # one of CHECKS below
              "status": "PASS" | "WARN" | "FAIL",
              "message": str,                    # one line
              "numbers": {str: number | str | null | [str] | {str: int}},
              "hint": str | null                 # the fix, on WARN/FAIL
            }
          ]
        }
      ]
    }

Check ids and their main ``numbers`` (CPU in millicores, memory in bytes):
``context``; ``api``; ``kubernetes-version`` (kubernetesMinor,
minSupportedMinor, maxTestedMinor); ``istioctl``; ``permissions`` (missing,
missingPermissions [str]);
``nodes`` (total, ready, schedulable); ``resources`` (eligibleNodes, freeCpuMilli,
freeMemoryBytes, freePods, demandCpuMilli, demandMemoryBytes, demandPods, sidecars,
shortCpuMilli, shortMemoryBytes, shortPods, unplaced {item: pods}); ``istio``
(istiod, versions, revisions, skew; or found [str] when an istiod is not meshctl's);
``istio-helm``, ``istio-operator``, ``istio-ca``, ``injector-webhook`` (found [str]:
each Istio object meshctl did not install, see ``preflight.ownership``);
``mesh-config`` (checked [str], drift [str]); ``cacerts``; ``inject-namespaces`` (namespaces,
missing, podSecurityBlocked); ``api-server-address``; ``east-west-address``;
``unique``.  A check that does not apply to a cluster (or could not run because the
cluster is unreachable) is absent from its results.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from meshctl import istio, topology
from meshctl.config import Cluster, Config
from meshctl.errors import MeshctlError, UsageError
from meshctl.preflight import checks, resources
from meshctl.preflight import facts as facts_mod
from meshctl.preflight import ownership as ownership_checks
from meshctl.preflight.checks import Result
from meshctl.preflight.facts import Facts, Footprint
from meshctl.topology import Plan
from meshctl.verdicts import FAIL, PASS, WARN, worst

SCHEMA = "meshctl.preflight/v1"
CHECKS = ("context", "api", "kubernetes-version", "istioctl", "permissions", "nodes",
          "resources", "istio", "istio-helm", "istio-operator", "istio-ca",
          "injector-webhook", "mesh-config", "cacerts", "inject-namespaces", "api-server-address",
          "east-west-address", "unique")
MAX_THREADS = 8

__all__ = ["CHECKS", "FAIL", "PASS", "SCHEMA", "WARN", "ClusterReport", "Result", "document",
           "exit_code", "failed", "foreign_istio", "run", "summary"]


@dataclass(frozen=True)
class ClusterReport:
    """Every result for one cluster, and what it cost to get them."""

    cluster: str
    reachable: bool
    results: tuple[Result, ...]
    requests: int = 0
    seconds: float = 0.0

    @property
    def status(self) -> str:
        return worst(r.status for r in self.results)


# --- the public API ----------------------------------------------------------------------


def run(config: Config, names: Sequence[str], *, plan: Plan | None = None,
        istioctl: istio.Istioctl | None = None) -> list[ClusterReport]:
    """Check ``names`` (cluster files of ``config``); one report per cluster, in order.

    ``plan`` says what goes where (gateways, links); without it preflight plans as
    bootstrap would with the first primary as main.  ``istioctl`` defaults to
    :func:`meshctl.istio.find`; not finding it is a FAIL, not an exception.  Raises
    only :class:`UsageError` (unknown or repeated cluster names).
    """
    clusters = _select(config, names)
    plan = plan if plan is not None else _default_plan(config, clusters)
    istioctl, istioctl_error = _istioctl(istioctl)
    timed = _gather_all([(c, footprint(c, plan)) for c in clusters])
    local_root = checks.local_root_fingerprint(config)
    everyone = [f for f, _ in timed]
    roots = {f.cluster.name: _roots(f) for f in everyone}
    reports = []
    for facts, seconds in timed:
        others = {n: r for n, r in roots.items() if n != facts.cluster.name}
        results = _check(facts, everyone, config, istioctl, istioctl_error, local_root, others)
        reports.append(ClusterReport(cluster=facts.cluster.name, reachable=facts.reachable,
                                     results=tuple(results),
                                     requests=sum(facts.requests.values()),
                                     seconds=round(seconds, 3)))
    return reports


def foreign_istio(config: Config, names: Sequence[str] = (), *, plan: Plan | None = None,
                  istioctl: istio.Istioctl | None = None) -> list[Result]:
    """Only the ownership checks, on every cluster at once: what bootstrap reads before
    its first write, also under ``--skip-preflight``.

    Clusters are ``names``, else the plan's, else every cluster file.  Returns every
    result (PASS and FAIL), cluster by cluster in that order: for a reachable cluster
    one per ownership check (``ownership.CHECKS``; ``mesh-config`` only
    where meshctl's install record is), for one that could not be read its
    ``context`` or ``api`` FAIL.  Any FAIL means: write nothing anywhere.  Costs about
    eight requests per cluster, whatever its size.  ``istioctl`` is accepted for
    symmetry with :func:`run`; these checks do not need it.  Raises only
    :class:`UsageError`.
    """
    chosen = list(names) or (list(plan.names) if plan is not None else [])
    clusters = _select(config, chosen)
    plan = plan if plan is not None else _default_plan(config, clusters)
    work = [(c, footprint(c, plan)) for c in clusters]
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(work)) or 1,
                            thread_name_prefix="ownership") as pool:
        gathered = list(pool.map(lambda item: facts_mod.gather(*item, only_istio=True), work))
    out: list[Result] = []
    for facts in gathered:
        if not facts.reachable:
            out += [r for r in (checks.context(facts), checks.api(facts))
                    if r is not None and r.status == FAIL]
        else:
            out += ownership_checks.checks(facts, config.mesh)
    return out


def failed(reports: Sequence[ClusterReport]) -> bool:
    """True when any check FAILed: bootstrap stops here."""
    return any(r.status == FAIL for r in reports)


def exit_code(reports: Sequence[ClusterReport]) -> int:
    """3 when no cluster could be reached at all, 1 on any FAIL, else 0."""
    if reports and not any(r.reachable for r in reports):
        return 3
    return 1 if failed(reports) else 0


def document(reports: Sequence[ClusterReport]) -> dict:
    """The ``--json`` document (schema in the module docstring)."""
    results = [res for rep in reports for res in rep.results]
    return {
        "schema": SCHEMA,
        "status": worst(r.status for r in results),
        "exitCode": exit_code(reports),
        "summary": {s: sum(1 for r in results if r.status == s) for s in (PASS, WARN, FAIL)},
        "clusters": [{"cluster": rep.cluster, "reachable": rep.reachable,
                      "status": rep.status, "requests": rep.requests,
                      "seconds": rep.seconds,
                      "results": [res.to_dict() for res in rep.results]}
                     for rep in reports],
    }


# --- wiring ------------------------------------------------------------------------------


def _select(config: Config, names: Sequence[str]) -> list[Cluster]:
    if not names:
        names = sorted(config.clusters)
        if not names:
            raise UsageError(f"no cluster files in {config.dir}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UsageError(f"--cluster {name} is given twice")
        seen.add(name)
    return [config.cluster(name) for name in names]


def _default_plan(config: Config, clusters: list[Cluster]) -> Plan | None:
    """Plan as bootstrap would (first primary as main); None for a lone cluster."""
    primaries = [c for c in clusters if c.is_primary]
    if len(clusters) < 2 or not primaries:
        return None
    main = primaries[0].name
    return topology.plan(config, main, [c.name for c in clusters if c.name != main])


def footprint(cluster: Cluster, plan: Plan | None) -> Footprint:
    """What the mesh puts on ``cluster``; without a plan, what it would as a lone member."""
    if plan is None or cluster.name not in plan.names:
        return Footprint(istiod=cluster.is_primary, ingress_gateway=cluster.is_primary,
                         east_west_gateway=False, istio_gateways=False, link_source=True)
    cp = plan.get(cluster.name)
    primary = cp.istio_role == "primary"
    return Footprint(istiod=primary, ingress_gateway=primary,
                     east_west_gateway=cp.east_west_gateway,
                     istio_gateways=cp.expose_services or cp.expose_istiod,
                     link_source=any(link.source == cluster.name for link in plan.links))


def _istioctl(given: istio.Istioctl | None) -> tuple[istio.Istioctl | None, str]:
    if given is not None:
        return given, ""
    try:
        return istio.find(), ""
    except MeshctlError as e:
        return None, str(e)


def _gather_all(work: list[tuple[Cluster, Footprint]]) -> list[tuple[Facts, float]]:
    """Read every cluster at once; each thread waits mostly on its own API server."""

    def timed(item: tuple[Cluster, Footprint]) -> tuple[Facts, float]:
        start = time.monotonic()
        got = facts_mod.gather(*item)
        return got, time.monotonic() - start

    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(work)) or 1,
                            thread_name_prefix="preflight") as pool:
        return list(pool.map(timed, work))


def _roots(facts: Facts) -> set[str]:
    from meshctl.ca import pki

    bundle = facts.cacerts
    return {pki.fingerprint(r) for r in bundle.roots} if bundle is not None else set()


def _check(facts: Facts, everyone: list[Facts], config: Config,
           istioctl: istio.Istioctl | None, istioctl_error: str, local_root: str | None,
           other_roots: dict[str, set[str]]) -> list[Result]:
    """Every check that applies, in CHECKS order; only config-level ones if unreachable."""
    out: list[Result | None] = [checks.context(facts), checks.api(facts)]
    if facts.reachable:
        out.append(checks.kubernetes_version(facts, istioctl))
    out.append(checks.istioctl_present(facts, istioctl, istioctl_error))
    if facts.reachable:
        owned = ownership_checks.checks(facts, config.mesh)
        # a foreign istiod is the "istio" verdict; otherwise versions and skew are
        istio_result = (owned[0] if owned[0].status == FAIL else
                        checks.existing_istio(facts, istioctl, config.mesh.istio.revision))
        out += [checks.permissions(facts), checks.nodes(facts),
                resources.check(facts, config), istio_result, *owned[1:],
                checks.ca_roots(facts, local_root, other_roots),
                checks.inject_namespaces(facts, config.mesh.istio.values)]
    out.append(checks.api_server_address(facts))
    if facts.reachable:
        out.append(checks.east_west_address(facts))
    out.append(checks.unique(facts, everyone))
    return [r for r in out if r is not None]


def summary(reports: Sequence[ClusterReport]) -> str:
    """One line for an error message: every FAIL as ``cluster check: message``."""
    fails = [f"{r.cluster} {r.check}: {r.message}" for rep in reports for r in rep.results
             if r.status == FAIL]
    return ("preflight failed: " + "; ".join(fails)) if fails else "preflight passed"
