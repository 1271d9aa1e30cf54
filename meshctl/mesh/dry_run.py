"""``bootstrap --dry-run``: every file bootstrap would apply, and never a signature by
the real root.

The dry-run contacts no cluster.  It builds everything in memory and writes it under
``--out`` only when all of it exists (one folder per cluster, ``plan.json``).

**The CA.**  An intermediate is a ``CA:TRUE`` certificate.  One signed by the real root
can issue workload identities that every cluster trusts.  So a dry-run never signs with
the real root, and never copies a private key out of ``ca.dir``.
- With a root in ``ca.dir``, each cluster gets ``root-cert.pem``.  When ``ca.dir``
  already holds a sound intermediate, bootstrap reuses it, and the dry-run also writes
  its ``ca-cert.pem`` and ``cert-chain.pem``: those are exactly what will be applied.
  When it holds none, bootstrap will issue one; the dry-run describes it instead (subject,
  SAN, notBefore/notAfter as they would be now, issuer subject and SHA-256 fingerprint).
  That description is in ``intermediate-ca.json``, computed by the live code's own
  :func:`certs.make_intermediate` under a throwaway stand-in for the root.  In
  ``cacerts.yaml``, every value only bootstrap can make is a named placeholder
  (``<ca-key:cluster1>``).  A placeholder is not base64, so the API server refuses the
  file if someone applies it.
- Without a root, an ephemeral root is made in memory, so that the files are real
  certificates that ``openssl`` and ``istioctl`` can check.  Each of them starts with a
  header saying it is EPHEMERAL, and ``plan.json`` says so too.  No cluster trusts that
  root, and its key is gone when the process ends.

**What it removes.**  ``--out`` may hold the user's own files.  A record of what this
dry-run wrote, :data:`WRITTEN_FILE`, is kept there.  The next dry-run removes only the
files in that record that it does not write again; nothing else is touched.
"""

from __future__ import annotations

import base64
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from meshctl import files, manifests, render
from meshctl.ca import cacerts, certs, pki
from meshctl.config import Config
from meshctl.errors import UsageError
from meshctl.mesh import flow
from meshctl.topology import Plan, east_west_placeholder

PLAN_FILE = "plan.json"
WRITTEN_FILE = ".meshctl-dry-run.json"  # what the last dry-run wrote, relative to --out
INTERMEDIATE_FILE = "intermediate-ca.json"
EPHEMERAL = (
    "# meshctl bootstrap --dry-run: EPHEMERAL CA material, not what bootstrap applies.\n"
    "# Signed by a root that existed only in the dry-run's memory; no cluster trusts it.\n"
    "# bootstrap uses the root that certs.init creates in {ca_dir}.\n")
PLACEHOLDER_HEADER = (
    "# meshctl bootstrap --dry-run: placeholders {names}: bootstrap fills them in.\n"
    "# A dry-run signs nothing with the root in {ca_dir}\n"
    "# and copies no key out of it.\n")


@dataclass
class DryRun:
    """What a dry-run wrote and found."""

    out: Path
    root_source: str  # "existing" (from ca.dir) or "ephemeral" (in memory, not saved)
    root_fingerprint: str
    steps: list[flow.Step]
    written: list[Path] = field(default_factory=list)
    intermediates: dict[str, dict[str, Any]] = field(default_factory=dict)
    placeholders: dict[str, str] = field(default_factory=dict)
    removed: list[Path] = field(default_factory=list)  # files an earlier dry-run wrote
    # CA keys in --out this run did not write: a dry-run before the fix signed
    # intermediates with the real root and left their keys there; kept, but named
    stray_keys: list[Path] = field(default_factory=list)


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    parent = out.parent if not out.exists() else out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is not a folder")


def describe(cert: x509.Certificate, issuer: x509.Certificate, status: str,
             reason: str, key_type: str) -> dict[str, Any]:
    """An intermediate as ``intermediate-ca.json`` shows it (no key, ever)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    return {"status": status, "reason": reason, "subject": cert.subject.rfc4514_string(),
            "subjectAltNames": names,
            "basicConstraints": {"ca": basic.ca, "pathLength": basic.path_length},
            "keyType": key_type, "notBefore": cert.not_valid_before_utc.isoformat(),
            "notAfter": cert.not_valid_after_utc.isoformat(),
            "serial": None if status == "to be issued" else f"{cert.serial_number:x}",
            "issuer": {"subject": issuer.subject.rfc4514_string(),
                       "sha256Fingerprint": pki.fingerprint(issuer)}}


def _stand_in(root: x509.Certificate) -> certs.RootCA:
    """A throwaway root with the real root's subject and validity and a key of its own:
    what it signs shows what the real root would sign, and no cluster trusts it."""
    key = pki.generate_key("ecdsa-p256")
    cert = (x509.CertificateBuilder().subject_name(root.subject).issuer_name(root.subject)
            .public_key(key.public_key()).serial_number(root.serial_number)
            .not_valid_before(root.not_valid_before_utc)
            .not_valid_after(root.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return certs.RootCA(cert=cert, key=key)


def _placeholder_cacerts(name: str, real: dict[str, bytes], root: x509.Certificate,
                         serial: str | None, mesh_id: str, ca_dir: Path) -> str:
    """``cacerts`` as bootstrap will apply it, each value only it can make a placeholder."""
    data = {f: (base64.b64encode(real[f]).decode() if f in real
                else f"<{f.removesuffix('.pem')}:{name}>") for f in certs.CACERTS_FILES}
    missing = [v for f, v in sorted(data.items()) if f not in real]
    header = PLACEHOLDER_HEADER.format(names=", ".join(missing), ca_dir=ca_dir)
    return header + render.render(
        "cacerts.yaml.j2", data=data, mesh_id=mesh_id, root_fingerprint=pki.fingerprint(root),
        intermediate_serial=serial or f"<intermediate-serial:{name}>")


def _with_real_root(config: Config, plan: Plan, root: certs.RootCA, out: Path, result: DryRun
                    ) -> dict[Path, tuple[bytes, int]]:
    settings = config.mesh.ca
    payload: dict[Path, tuple[bytes, int]] = {}
    stand_in: certs.RootCA | None = None
    for c in plan.clusters:
        folder = certs.cluster_dir(settings, c.name)
        bundle = certs.load_bundle(folder, c.name)
        problem = certs.chain_problem(bundle, root.cert) if bundle else None
        if bundle is not None and problem is None:
            real = {f: d for f, d in bundle.files().items() if f != certs.CA_KEY}
            cert, status, serial = bundle.ca_cert, "existing", f"{bundle.ca_cert.serial_number:x}"
            reason = f"reused from {folder} (bootstrap applies it as it is)"
        else:
            stand_in = stand_in or _stand_in(root.cert)
            real = {certs.ROOT_CERT: pki.cert_pem(root.cert)}
            cert = certs.make_intermediate(stand_in, c.name, settings,
                                           key=pki.generate_key("ecdsa-p256")).ca_cert
            status, serial = "to be issued", None
            reason = (f"bootstrap issues it into {folder}: "
                      + (f"the one there is not usable ({problem})" if bundle
                         else "there is none yet") + "; dates as if issued now")
        result.intermediates[c.name] = describe(cert, root.cert, status, reason, settings.key)
        for f, data in real.items():
            payload[out / c.name / f] = (data, files.PUBLIC)
        text = _placeholder_cacerts(c.name, real, root.cert, serial, config.mesh.mesh_id,
                                    settings.dir)
        payload[out / c.name / "cacerts.yaml"] = (text.encode(), files.PUBLIC)
        for f in certs.CACERTS_FILES:
            if f not in real:
                result.placeholders[f"<{f.removesuffix('.pem')}:{c.name}>"] = (
                    f"{f} of {c.name}'s intermediate CA, from {folder} when bootstrap runs"
                    + (" (the key never leaves it but to the cluster)"
                       if f == certs.CA_KEY else ""))
    return payload


def _ephemeral(config: Config, plan: Plan, out: Path, result: DryRun
               ) -> dict[Path, tuple[bytes, int]]:
    settings = config.mesh.ca
    root = certs.make_root(settings)
    result.root_fingerprint = pki.fingerprint(root.cert)
    header = EPHEMERAL.format(ca_dir=settings.dir).encode()
    payload: dict[Path, tuple[bytes, int]] = {}
    bundles = certs.make_intermediates(root, [c.name for c in plan.clusters], settings)
    for name, bundle in bundles.items():
        result.intermediates[name] = describe(
            bundle.ca_cert, root.cert, "ephemeral",
            f"no root in {settings.dir}: signed by a root kept in memory only", settings.key)
        for f, data in bundle.files().items():
            payload[out / name / f] = (header + data,
                                       files.PRIVATE if f == certs.CA_KEY else files.PUBLIC)
        payload[out / name / "cacerts.yaml"] = (
            header + cacerts.manifest(bundle, config.mesh.mesh_id).encode(), files.PRIVATE)
    return payload


def dry_run(config: Config, plan: Plan, out: Path) -> DryRun:
    """Write every file bootstrap would apply under ``out``; contact no cluster, sign
    nothing with the real root, copy no key out of ``ca.dir``."""
    check_out(out)
    settings = config.mesh.ca
    result = DryRun(out=out, root_source="ephemeral", root_fingerprint="",
                    steps=flow.steps(config, plan))
    if certs.root_exists(settings):
        root = certs.load_root(settings)
        certs.refuse_to_sign(root, settings)  # bootstrap would stop here too
        result.root_source, result.root_fingerprint = "existing", pki.fingerprint(root.cert)
        payload = _with_real_root(config, plan, root, out, result)
    else:
        payload = _ephemeral(config, plan, out, result)
    for c in plan.clusters:
        payload[out / c.name / INTERMEDIATE_FILE] = (
            json.dumps(result.intermediates[c.name], indent=2).encode() + b"\n", files.PUBLIC)
        for name, text in manifests.for_cluster(config, plan, c).items():
            payload[out / c.name / name] = (text.encode(), files.PUBLIC)
    written = {p.relative_to(out).as_posix() for p in payload} | {PLAN_FILE}
    document = plan_document(config, plan, result, written)
    payload[out / PLAN_FILE] = (json.dumps(document, indent=2).encode() + b"\n", files.PUBLIC)

    # all files or none; the record first names the stale files too, so that a crash
    # before they are gone leaves them still known as meshctl's
    stale = _recorded(out) - written
    payload[out / WRITTEN_FILE] = _record(written | stale)
    result.written.extend(p for p in files.write_all(payload) if p.name != WRITTEN_FILE)
    result.removed = _remove(out, stale)
    files.write_atomic(out / WRITTEN_FILE, _record(written)[0])
    result.stray_keys = [out / c.name / certs.CA_KEY for c in plan.clusters
                         if f"{c.name}/{certs.CA_KEY}" not in written
                         and (out / c.name / certs.CA_KEY).exists()]
    return result


def _record(names: set[str]) -> tuple[bytes, int]:
    doc = {"apiVersion": "meshctl/v1", "kind": "DryRunFiles", "files": sorted(names)}
    return json.dumps(doc, indent=2).encode() + b"\n", files.PUBLIC


def _recorded(out: Path) -> set[str]:
    """The files the last dry-run recorded; nothing when the record is missing or not
    one meshctl wrote (then nothing is removed)."""
    try:
        doc = json.loads((out / WRITTEN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(doc, dict) or doc.get("kind") != "DryRunFiles":
        return set()
    listed = doc.get("files")
    if not isinstance(listed, list):
        return set()
    return {n for n in listed if isinstance(n, str) and _inside(n)}


def _inside(name: str) -> bool:
    """A relative path of at most two parts, none of them ``..``: the shape of every file
    a dry-run writes (``<cluster>/<file>``, ``plan.json``)."""
    parts = PurePosixPath(name).parts
    return (0 < len(parts) <= 2 and not PurePosixPath(name).is_absolute()
            and all(p not in ("", ".", "..") for p in parts))


def _remove(out: Path, stale: set[str]) -> list[Path]:
    removed = []
    base = out.resolve()
    for name in sorted(stale):
        path = out / name
        if path.parent.resolve().parent != base and path.parent.resolve() != base:
            continue  # a folder swapped for a link to elsewhere: not ours to touch
        if path.is_symlink() or path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
        if path.parent != out:
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when empty: a user's file keeps its folder
    return removed


def plan_document(config: Config, plan: Plan, result: DryRun,
                  written: set[str] | None = None) -> dict[str, Any]:
    """``plan.json``: the plan, the CA used, the ordered steps and their files."""
    placeholders = {east_west_placeholder(c.name): "address of the east-west gateway's "
                    "LoadBalancer (or the cluster file's eastWestAddress), known after install"
                    for c in plan.clusters if c.east_west_gateway}
    placeholders.update({flow.TOKEN_PLACEHOLDER.format(source=link.source):
                         f"token of istio-system/istio-reader-service-account on {link.source}"
                         for link in plan.links})
    placeholders.update(result.placeholders)
    ca: dict[str, Any] = {"dir": str(config.mesh.ca.dir), "root": result.root_source,
                          "rootFingerprint": result.root_fingerprint,
                          "keyType": config.mesh.ca.key, "intermediates": result.intermediates}
    if result.root_source == "ephemeral":
        ca["ephemeral"] = ("no root in ca.dir: the CA files under --out are signed by a root "
                           "that existed only in memory; none of them is what bootstrap "
                           "applies, and each says EPHEMERAL in its first line")
    return {
        "apiVersion": "meshctl/v1",
        "kind": "BootstrapPlan",
        "dryRun": True,
        "mesh": {"meshID": plan.mesh_id, "trustDomain": config.mesh.trust_domain,
                 "model": plan.model, "multiNetwork": plan.multi_network},
        "ca": ca,
        "plan": plan.to_dict(),
        "placeholders": placeholders,
        "steps": [dict(s.describe(), order=i + 1, files=_files(s, written))
                  for i, s in enumerate(result.steps)],
    }


def _files(step: flow.Step, written: set[str] | None) -> list[str]:
    """The files a step names that the dry-run wrote; an intermediate's description too."""
    names = [f for f in step.files if written is None or f in written]
    if step.action == "intermediate CA" and step.files:
        names.append(f"{PurePosixPath(step.files[0]).parts[0]}/{INTERMEDIATE_FILE}")
    return names
