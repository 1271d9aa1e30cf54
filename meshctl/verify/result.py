"""What ``verify`` found, as data: checks, the traffic tally, JSON and JUnit.

Pure: nothing here talks to a cluster.  ``--json`` prints :meth:`Result.to_json`, schema
``meshctl.verify/v1`` (keys only added within v1)::

    {"schema": "meshctl.verify/v1", "main", "remotes": [...], "passed", "staticPassed",
     "trafficChecked", "summary": {"PASS", "FAIL", "SKIP"}, "namespace",
     "checks": [{"group", "name", "cluster", "status", "message", "hint"}],
     "traffic": {"checked", "client", "requests",       # asked for
                 "sent",                                # attempted, as the client reported
                 "errors",                              # attempted and not answered
                 "answers": [{"version", "cluster", "count"}],
                 "failures": [{"reason", "count"}],     # curl's words / HTTP status
                 "reason",                              # why traffic was not checked
                 "endpoints",                           # (cluster, version) pairs expected
                 "missChance"},                         # see below
     "kept", "cleanup": [...],
     "cleanupKept": [...],                              # see below
     "probe": {"name", "limits"}}                       # what carried the traffic

Added within v1 (no key changed meaning): ``traffic.endpoints`` and
``traffic.missChance``, the probability (0 to 1) that ``requests`` uniform requests miss
one of ``endpoints`` equally likely endpoints on a healthy mesh (with ``callers`` > 1,
the workload probe's callers, the chance that any of them misses one)
(:func:`meshctl.verify.sizing.miss_chance`; ``requests`` is sized so that it is at most
0.1 % unless ``--requests`` was given); ``cleanupKept``: what cleanup left in place,
each with the reason (a namespace holding objects verify did not make, a cluster it
could not read); ``probe``: what carried the traffic half (sidecar pods, or on sandbox
clusters the sandbox's proxyless workloads) and what a result through it does not prove.
With a workload probe ``traffic.client`` names the probe and its callers' clusters,
``traffic.requests`` counts the calls from every primary, and ``failures`` give each
cause in words.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshctl.verdicts import FAIL, PASS, SKIP
from meshctl.verify import sizing

SCHEMA = "meshctl.verify/v1"
DEFAULT_NAMESPACE = "meshctl-verify"
READY_TIMEOUT = 180.0


def target(namespace: str) -> str:
    """The helloworld URL the client asks, through the mesh (the Service's short name)."""
    return f"helloworld.{namespace}:5000/hello"

Progress = Callable[[str, str], None]  # (cluster, message)


def quiet(cluster: str, message: str) -> None:
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
    endpoints: int = 0  # (cluster, version) pairs that must each answer; 0: unknown
    callers: int = 1  # callers that must each see every endpoint (workload probe: 1 a primary)

    @property
    def miss_chance(self) -> float | None:
        """P(a healthy mesh fails by bad luck: some caller misses an endpoint), ``sizing``."""
        if self.endpoints < 1:
            return None
        each = self.requests // max(self.callers, 1)
        return float(sizing.run_miss_chance(self.endpoints, each, self.callers))

    def luck_line(self) -> str | None:
        """The "sent N requests: chance …" sentence, once requests really ran, else None."""
        if not self.checked or self.endpoints < 1:
            return None
        return sizing.luck_line(self.sent, self.endpoints, self.callers)

    def to_json(self) -> dict[str, Any]:
        return {"checked": self.checked, "client": self.client, "requests": self.requests,
                "sent": self.sent, "errors": self.errors, "reason": self.reason,
                "endpoints": self.endpoints, "missChance": self.miss_chance,
                "callers": self.callers,
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
    cleanup_kept: tuple[str, ...] = ()  # what cleanup left in place, with the reason
    probe: str = "sidecar pods (helloworld + curl)"  # what carried the traffic half
    probe_limits: str = ""  # what a result through that probe does not prove

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
                "cleanup": list(self.cleanup), "namespace": self.namespace,
                "cleanupKept": list(self.cleanup_kept),
                "probe": {"name": self.probe, "limits": self.probe_limits}}

    def notes(self) -> list[str]:
        """Lines printed under the table before the summary: the requests' luck, and what
        cleanup kept."""
        line = self.traffic.luck_line()
        probe = [f"traffic probe: {self.probe}" + (f"; not proven: {self.probe_limits}"
                                                   if self.probe_limits else "")]
        return probe + ([line] if line else []) + [f"kept {k}" for k in self.cleanup_kept]


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
