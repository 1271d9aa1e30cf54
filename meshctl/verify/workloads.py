"""verify's traffic half through a probe of real workloads (the sandbox's, on sandbox clusters).

Where no container runs, helloworld and curl pods cannot answer; a probe
(:class:`meshctl.probes.Probe`) that runs real workloads can.  The task layer hands one in
on sandbox clusters.  Then:

1. verify's namespace and a DestinationRule asking for Istio mTLS for its service are
   written on every cluster through the run's ledger (so cleanup removes exactly them);
2. the probe starts a server of ``echo`` per cluster: v1 on the main, v2 on every
   remote (:func:`meshctl.verify.traffic.expected_answers`), so the service's endpoints
   span every cluster;
3. from every primary, N calls (N sized by :mod:`meshctl.verify.sizing`), counted by the
   cluster and version that answered, failures by cause;
4. from every primary, one TLS handshake with the server in every other cluster: the
   SPIFFE ID the server presented and whether its chain leads to this mesh's root
   (meshctl's root in ``ca.dir``, or a staged rotation's pending one).

PASS needs every call answered, every (cluster, version) answering from every primary,
and every peer chain under the mesh root.  Every row names the probe; the notes say what
it cannot prove.  Cleanup (the probe's own processes and registrations, then the ledger)
is the caller's, in a ``finally``.
"""

from __future__ import annotations

from typing import Any

import yaml
from cryptography import x509

from meshctl import manifests, probes
from meshctl.ca import pki, rotation_state, validity
from meshctl.config import Config
from meshctl.errors import MeshctlError
from meshctl.topology import Plan
from meshctl.verdicts import FAIL, PASS
from meshctl.verify.ledger import Ledger
from meshctl.verify.result import Answer, Check, Failure, Progress, Traffic, quiet
from meshctl.verify.traffic import expected_answers

SERVICE = "echo"
PACE = 10  # calls per second from each caller


def _check(name: str, cluster: str | None, status: str, message: str,
           hint: str | None = None) -> Check:
    return Check("traffic", name, cluster, status, message, hint)


def mesh_roots(config: Config) -> dict[str, x509.Certificate]:
    """This machine's roots for the mesh, by SHA-256 fingerprint (current, pending)."""
    return {pki.fingerprint(c): c for c in rotation_state.trusted_roots(config.mesh.ca)}


def spiffe_id(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "(no SAN)"
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return next((u for u in uris if u.startswith("spiffe://")), "(no SPIFFE ID)")


def judge_chain(chain_pem: list[bytes], roots: dict[str, x509.Certificate],
                server_cluster: str) -> tuple[str, str]:
    """(PASS|FAIL, words): does the presented chain lead to one of ``roots``?"""
    if not chain_pem:
        return FAIL, f"{server_cluster}'s workload presented no certificate (handshake failed)"
    chain = [c for pem in chain_pem for c in pki.load_certs(pem)]
    path = [chain[0]]  # leaf, then each certificate that issued the one before
    for cert in chain[1:]:
        if validity.issued_by(path[-1], cert) and cert != path[-1]:
            path.append(cert)
    who = spiffe_id(chain[0])
    issuer = path[1].subject.rfc4514_string() if len(path) > 1 else "?"
    for fp, root in roots.items():
        if any(pki.fingerprint(c) == fp or validity.issued_by(c, root) for c in path):
            return PASS, (f"{server_cluster} presented {who}, issued by '{issuer}', "
                          f"chains to this mesh's root {fp[:23]}…")
    top = chain[-1]
    return FAIL, (f"{server_cluster}'s workload certificate ({who}) does not chain to this "
                  f"mesh's root: its chain ends at '{top.subject.rfc4514_string()}' "
                  f"{pki.fingerprint(top)[:23]}…")


def _dr(config: Config, namespace: str, host: str) -> dict[str, Any]:
    text = manifests.render("destination-rule.yaml.j2", name=f"{SERVICE}-mtls",
                            namespace=namespace, host=host, subsets=["v1", "v2"],
                            mesh_id=config.mesh.mesh_id)
    return yaml.safe_load(text)


def probe_checks(config: Config, plan: Plan, clients: dict[str, Any], probe: probes.Probe, *,
                 requests: int, ledger: Ledger, progress: Progress = quiet
                 ) -> tuple[list[Check], Traffic]:
    """Deploy through ``probe``, call from every primary, judge (see the module docstring)."""
    ns = ledger.namespace
    host = f"{SERVICE}.{ns}.svc.{config.mesh.cluster_domain}"
    expected = expected_answers(plan)
    primaries = [c.name for c in plan.clusters if config.clusters[c.name].is_primary]
    checks: list[Check] = []
    try:
        for name in plan.names:
            text = manifests.render("sample-namespace.yaml.j2", namespace=ns,
                                    revision=config.mesh.istio.revision,
                                    mesh_id=config.mesh.mesh_id)
            ledger.ensure(clients[name], yaml.safe_load(text))
            if name in primaries:
                ledger.ensure(clients[name], _dr(config, ns, host))
        for cluster, version in expected.items():
            probe.deploy(cluster, ns, SERVICE, version)
            progress(cluster, f"{probe.name}: {SERVICE} {version} serving in {ns}")
    except MeshctlError as e:
        checks.append(_check("deploy workloads", None, FAIL, e.message, e.hint))
        return checks, Traffic(False, None, requests, 0, endpoints=len(expected),
                               reason=f"traffic was NOT checked: {e.message}")
    checks.append(_check("deploy workloads", None, PASS, "; ".join(
        f"{c}: {SERVICE} {v}" for c, v in expected.items()) + f" in {ns}, via {probe.name}"))
    port = probe.port(plan.main, ns, SERVICE) or 0
    probe.settle()
    answers: dict[tuple[str, str], int] = {}
    causes: dict[str, int] = {}
    sent = 0
    for src in primaries:
        progress(src, f"{requests} calls to {host}:{port}")
        # paced: a fresh gRPC client sends everything to the first endpoint it connects
        # to until the others are READY, so a burst would not be uniform
        got = probe.send(src, ns, host, port, requests, qps=PACE)
        sent += got.sent
        for key, n in got.answered.items():
            answers[key] = answers.get(key, 0) + n
        for cause, n in got.causes.items():
            causes[cause] = causes.get(cause, 0) + n
        seen = {(c, v) for (c, v), n in got.answered.items() if n}
        missing = [f"{v}@{c}" for c, v in expected.items() if (c, v) not in seen]
        summary = ", ".join(f"{v}@{c}: {n}" for (c, v), n in sorted(got.answered.items()))
        failed = "; ".join(f"{n}× {cause}" for cause, n in got.causes.items())
        problems = ([f"{got.failed} call(s) failed ({failed})"] if got.failed else []) + (
            [f"no answer from {', '.join(missing)}"] if missing else [])
        checks.append(_check(
            f"calls from {src}", src, FAIL if problems else PASS,
            f"{got.ok} of {got.sent} calls answered ({summary or 'none'})"
            + ("; " + "; ".join(problems) if problems else
               "; every cluster and version answered")))
    roots = mesh_roots(config)
    for src in primaries:
        for dst in plan.names:
            if dst == src:
                continue
            try:
                status, words = judge_chain(probe.peer_chain(src, ns, dst, SERVICE), roots, dst)
            except (MeshctlError, ValueError) as e:
                status, words = FAIL, f"TLS handshake with {dst}'s workload: {e}"
            checks.append(_check(f"peer identity {src}->{dst}", src, status, words))
    client = f"{probe.name} on {', '.join(primaries)}"
    errors = sum(causes.values())
    return checks, Traffic(True, client, requests * len(primaries), sent,
                           tuple(Answer(v, c, n) for (c, v), n in sorted(answers.items())),
                           errors, failures=tuple(Failure(k, n) for k, n in causes.items()),
                           endpoints=len(expected), callers=len(primaries))
