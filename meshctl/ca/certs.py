"""The mesh's certificate authority, by Istio's ``tools/certs`` conventions.

One self-signed root on the operator's machine; one intermediate per cluster
(``CA:true, pathlen:0``, subject ``L=<cluster>``, SAN ``DNS:istiod.istio-system.svc``);
per cluster the four files that become ``istio-system/cacerts``:
``ca-cert.pem``, ``ca-key.pem``, ``root-cert.pem``, ``cert-chain.pem`` (intermediate +
root).  Following Istio's layout means Istio's own docs keep applying.

Safety: the root key exists in memory, in ``<ca.dir>/root-key.pem`` (0600, atomic)
and, once replaced, in its backups under ``<ca.dir>/backups/`` (0700 folders), nowhere
else; nothing here prints a key.  Builders are pure; the few functions that touch disk
say so in their names (``write_*``, ``load_*``, ``backup_*``, ``init_root``,
``ensure_*``).

Speed: an RSA-4096 key takes 0.2-3 s of prime search, so issuing for many clusters
(:func:`ensure_intermediates`, what ``certs.issue`` and bootstrap need) generates the
new keys in parallel (:func:`pki.generate_keys`) and then signs and writes one cluster
after another, in the order given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from meshctl import files
from meshctl.ca import backups, pki

# the pure checks live in ca/validity.py; re-exported so that certs.<name> keeps working
from meshctl.ca.validity import chain_problem as chain_problem
from meshctl.ca.validity import chain_problem_to as chain_problem_to
from meshctl.ca.validity import days_left as days_left
from meshctl.ca.validity import is_ca as is_ca
from meshctl.ca.validity import issued_by as issued_by
from meshctl.ca.validity import validity_problem as validity_problem
from meshctl.config import CASettings
from meshctl.errors import ConfigError, UsageError

ROOT_CERT = "root-cert.pem"
ROOT_KEY = "root-key.pem"
CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
CERT_CHAIN = "cert-chain.pem"
CACERTS_FILES = (CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN)
ISTIOD_SAN = "istiod.istio-system.svc"
# <ca.dir>/backups/: every copy of CA material meshctl replaces, one layout (ca.backups)
BACKUPS = backups.BACKUPS
backups_dir = backups.backups_dir
NEXT_ROOT = "next-root"  # <ca.dir>/next-root/: the new root while a root rotation runs


@dataclass(frozen=True)
class RootCA:
    """The root certificate and its key (the key never leaves this process but to disk)."""

    cert: x509.Certificate
    key: pki.PrivateKey

    def __repr__(self) -> str:  # never let a key reach a log through repr()
        return f"RootCA(subject={self.cert.subject.rfc4514_string()!r})"


@dataclass(frozen=True)
class Bundle:
    """What one cluster's ``cacerts`` holds."""

    cluster: str
    ca_cert: x509.Certificate
    ca_key: pki.PrivateKey
    roots: tuple[x509.Certificate, ...]  # root-cert.pem: one root, or two during rotation

    def __repr__(self) -> str:
        return f"Bundle(cluster={self.cluster!r}, serial={self.ca_cert.serial_number:x})"

    @property
    def signing_root(self) -> x509.Certificate:
        """The root in the bundle that issued this intermediate."""
        for root in self.roots:
            if issued_by(self.ca_cert, root):
                return root
        raise ValueError(f"{self.cluster}: intermediate is not issued by any root in the bundle")

    def files(self) -> dict[str, bytes]:
        """The four ``cacerts`` files, byte for byte."""
        roots = b"".join(pki.cert_pem(r) for r in self.roots)
        return {
            CA_CERT: pki.cert_pem(self.ca_cert),
            CA_KEY: pki.key_pem(self.ca_key),
            ROOT_CERT: roots,
            CERT_CHAIN: pki.cert_pem(self.ca_cert) + pki.cert_pem(self.signing_root),
        }


# --- pure builders -----------------------------------------------------------------


def root_common_name(start: datetime, serial: int) -> str:
    """``Root CA 2026-11-29 5f3a9c01``: Istio's ``Root CA`` with the day it starts and
    the first 8 hex digits of its serial.

    Every root used to be ``O=<organization>, CN=Root CA``, so an old and a new root
    (a rotation, ``certs.init --force``) could be told apart only by fingerprint, in
    ``openssl x509 -subject``, in istiod's logs and in a verifier's "unable to get
    issuer" message alike.  Roots made before keep their subject and stay valid:
    nothing compares subjects, chains are checked by signature.
    """
    return f"Root CA {start:%Y-%m-%d} {f'{serial:x}'[:8]}"


def make_root(settings: CASettings, *, not_before: datetime | None = None) -> RootCA:
    """A new self-signed root CA (``O=<organization>, CN=Root CA <date> <serial>``, see
    :func:`root_common_name`)."""
    key = pki.generate_key(settings.key)
    start = not_before or (datetime.now(UTC) - pki.CLOCK_SKEW)
    serial = x509.random_serial_number()
    subject = pki.name(organization=settings.organization,
                       common_name=root_common_name(start, serial))
    cert = pki.self_signed_ca(subject=subject, key=key, days=settings.root_days,
                              not_before=start, serial=serial)
    return RootCA(cert=cert, key=key)


def make_intermediate(root: RootCA, cluster: str, settings: CASettings, *,
                      roots: tuple[x509.Certificate, ...] | None = None,
                      days: float | None = None,
                      not_before: datetime | None = None,
                      key: pki.PrivateKey | None = None) -> Bundle:
    """A cluster's intermediate CA signed by ``root``.

    ``roots`` is what goes into ``root-cert.pem`` (default: just ``root``); root
    rotation passes the old + new bundle.  ``days``/``not_before`` let tests make
    expired intermediates without waiting.  Refused (:class:`ConfigError`) when
    ``root`` is expired or not yet valid; notAfter never passes the root's
    (:func:`pki.sign`).  ``key`` is a key of ``settings.key``
    generated beforehand (:func:`make_intermediates` makes them in parallel); default:
    a new one.
    """
    problem = validity_problem(root.cert)
    if problem:  # every path that signs comes here: certs.issue, bootstrap, rotations
        raise ConfigError(f"root CA {root.cert.subject.rfc4514_string()} "
                          f"({pki.fingerprint(root.cert)[:23]}…) {problem}; no intermediate "
                          f"is issued under it",
                          hint="certs.rotate --root --step 1 starts a staged move to a new "
                               "root (certs.init --force replaces it outright)")
    key = key if key is not None else pki.generate_key(settings.key)
    subject = pki.name(organization=settings.organization, common_name="Intermediate CA",
                       locality=cluster)
    cert = pki.sign(subject=subject, public_key=key.public_key(), issuer_name=root.cert.subject,
                    issuer_key=root.key, issuer_cert=root.cert,
                    usage=pki.Usage(ca=True, path_length=0),
                    days=days if days is not None else settings.intermediate_days,
                    dns=[ISTIOD_SAN], not_before=not_before)
    return Bundle(cluster=cluster, ca_cert=cert, ca_key=key, roots=roots or (root.cert,))


def make_intermediates(root: RootCA, clusters: Sequence[str],
                       settings: CASettings) -> dict[str, Bundle]:
    """:func:`make_intermediate` for each of ``clusters`` (in their order), the keys
    generated in parallel first (:func:`pki.generate_keys`).  Pure: writes nothing."""
    names = list(dict.fromkeys(clusters))
    keys = pki.generate_keys(settings.key, len(names))
    return {name: make_intermediate(root, name, settings, key=key)
            for name, key in zip(names, keys, strict=True)}


def workload_cert(bundle: Bundle, *, namespace: str, service_account: str,
                  trust_domain: str = "cluster.local", hours: float = 24,
                  not_before: datetime | None = None) -> x509.Certificate:
    """A workload certificate as istiod issues one: empty subject, SPIFFE URI SAN.

    meshctl never issues these to workloads (istiod does); they let checks and tests
    prove what a sidecar would see, e.g. that trust survives each root-rotation step.
    """
    key = pki.generate_key("ecdsa-p256")
    spiffe = f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
    return pki.sign(subject=x509.Name([]), public_key=key.public_key(),
                    issuer_name=bundle.ca_cert.subject, issuer_key=bundle.ca_key,
                    issuer_cert=bundle.ca_cert, usage=pki.Usage(server=True, client=True),
                    days=hours / 24, uris=[spiffe], not_before=not_before)


# --- disk --------------------------------------------------------------------------


def root_paths(settings: CASettings) -> tuple[Path, Path]:
    return settings.dir / ROOT_CERT, settings.dir / ROOT_KEY


def root_exists(settings: CASettings) -> bool:
    cert, key = root_paths(settings)
    return cert.exists() or key.exists()


def root_files(root: RootCA) -> dict[str, tuple[bytes, int]]:
    """``root-key.pem`` (0600, first) and ``root-cert.pem`` (0644), as written to disk."""
    return {ROOT_KEY: (pki.key_pem(root.key), files.PRIVATE),
            ROOT_CERT: (pki.cert_pem(root.cert), files.PUBLIC)}


def write_root(settings: CASettings, root: RootCA) -> None:
    """Key (0600) and certificate together (:func:`files.write_all`): a full disk or a
    read-only ``ca.dir`` leaves neither, and a crash never a cert without its key (the
    key is renamed into place first)."""
    files.write_all({settings.dir / fname: content
                     for fname, content in root_files(root).items()})


def init_root(settings: CASettings, *, force: bool = False) -> tuple[RootCA, Path | None]:
    """Create the root CA in ``ca.dir``; never over an existing one unless ``force``.

    With ``force`` the old root's key and certificate are first copied, as they are on
    disk (readable or not), to ``<ca.dir>/backups/root.backup-<time>/`` (0700 folder,
    the key stays 0600), which is returned: the root key never leaves ``ca.dir``, not
    even as a backup.
    """
    saved = None
    if root_exists(settings):
        if not force:
            raise UsageError(f"a root CA already exists in {settings.dir}; refusing to "
                             "overwrite it (hint: --force backs it up first)")
        saved = backups.backup_files(settings, backups.ROOT, settings.dir,
                                     only=(ROOT_CERT, ROOT_KEY))
    root = make_root(settings)
    write_root(settings, root)
    return root, saved


def backup_root(settings: CASettings, root: RootCA) -> Path:
    """Keep ``root`` (from memory, key 0600) in ``backups/root.backup-<time>/``."""
    return backups.backup(settings, backups.ROOT, root_files(root))


def load_root(settings: CASettings) -> RootCA:
    """Read the root CA from ``ca.dir``, checking that key and certificate belong together."""
    cert_path, key_path = root_paths(settings)
    if not cert_path.exists() or not key_path.exists():
        raise UsageError(f"no root CA in {settings.dir} (hint: run 'invoke certs.init')")
    path = cert_path
    try:
        cert = pki.load_certs(cert_path.read_bytes())[0]
        path = key_path
        key = pki.load_key(key_path.read_bytes())
    except (ValueError, OSError) as e:  # e.g. an encrypted root-key.pem: say which, and why
        why = e.strerror if isinstance(e, OSError) else str(e)
        raise ConfigError(f"{settings.dir}: {path.name} is unreadable or not PEM: "
                          f"{why}") from None
    if not pki.same_public_key(cert, key):
        raise ConfigError(f"{settings.dir}: root-key.pem does not belong to root-cert.pem")
    if not is_ca(cert):
        raise ConfigError(f"{settings.dir}: root-cert.pem is not a CA certificate (no "
                          "basicConstraints CA:true); istiod would refuse every chain under it")
    return RootCA(cert=cert, key=key)


def refuse_to_sign(root: RootCA, settings: CASettings) -> None:
    """An intermediate under an expired (or not yet valid) root is born broken: refuse."""
    problem = validity_problem(root.cert)
    if problem:
        raise ConfigError(f"{settings.dir}: root-cert.pem {problem}; no intermediate is "
                          "issued under it",
                          hint="certs.rotate --root --step 1 starts a staged move to a new "
                               "root (certs.init --force replaces it outright)")


def cluster_dir(settings: CASettings, cluster: str) -> Path:
    return settings.dir / cluster


def backup_cluster(settings: CASettings, cluster: str) -> Path:
    """Copy the cluster's local files, as they are, to ``backups/<cluster>.backup-<time>/``."""
    return backups.backup_files(settings, cluster, cluster_dir(settings, cluster))


def replace_bundle(settings: CASettings, bundle: Bundle) -> dict[str, Path]:
    """Write ``bundle`` as the cluster's local files, first copying any existing ones
    to ``<ca.dir>/backups/<cluster>.backup-<time>/`` (CA material is never dropped)."""
    directory = cluster_dir(settings, bundle.cluster)
    if (directory / CA_CERT).exists():
        backup_cluster(settings, bundle.cluster)
    return write_bundle(directory, bundle)


def write_bundle(directory: Path, bundle: Bundle) -> dict[str, Path]:
    """Write the four files, all or none; ``ca-key.pem`` 0600, the rest 0644."""
    _mkdir_private(directory)
    payload = {directory / fname: (data, files.PRIVATE if fname == CA_KEY else files.PUBLIC)
               for fname, data in bundle.files().items()}
    files.write_all(payload)
    return {path.name: path for path in payload}


def _mkdir_private(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise files.WriteFailed(f"{directory}: cannot create: {e.strerror}") from None


def bundle_from_files(cluster: str, data: dict[str, bytes]) -> Bundle:
    """Parse the four ``cacerts`` files (from disk or from a Secret).

    ``ValueError`` naming the file and why (``ca-key.pem: the private key is
    encrypted …``): a bundle comes from a cluster or from an operator's folder, and
    whoever reports it must be able to say which field to fix.
    """
    missing = [f for f in (CA_CERT, CA_KEY, ROOT_CERT) if f not in data]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    field = CA_CERT
    try:
        ca_cert = pki.load_certs(data[CA_CERT])[0]
        field = CA_KEY
        ca_key = pki.load_key(data[CA_KEY])
        field = ROOT_CERT
        roots = tuple(pki.load_certs(data[ROOT_CERT]))
    except ValueError as e:
        raise ValueError(f"{field}: {e}") from None
    return Bundle(cluster=cluster, ca_cert=ca_cert, ca_key=ca_key, roots=roots)


def load_bundle(directory: Path, cluster: str) -> Bundle | None:
    """The bundle in ``directory``, or ``None`` when there is none yet."""
    if not (directory / CA_CERT).exists():
        return None
    try:
        return bundle_from_files(cluster, {f: (directory / f).read_bytes()
                                           for f in CACERTS_FILES if (directory / f).exists()})
    except (ValueError, OSError) as e:
        raise ConfigError(f"{directory}: cannot read the intermediate CA files: {e}") from None


def ensure_intermediates(root: RootCA, clusters: Sequence[str],
                         settings: CASettings) -> dict[str, tuple[Bundle, bool]]:
    """Each cluster's intermediate from disk if it is sound, else a new one written to
    disk; ``{cluster: (bundle, created)}`` in the order of ``clusters``.

    Refused while a root rotation is in progress.  Facts first: every cluster's local
    files are read before anything is generated or written, so an unreadable one stops
    the run with nothing changed.  Then the keys the new intermediates need are
    generated in parallel (:func:`make_intermediates`), and one cluster after another
    is backed up (when it had files) and written.  Re-running never re-issues a good
    intermediate, so bootstrap stays idempotent and pushed ``cacerts`` stay stable; an
    unsound one (expired, or under another root) is backed up before it is replaced.
    """
    if (settings.dir / NEXT_ROOT).is_dir():
        # mid root rotation the intermediates may be under the new root: "repairing"
        # them under the old one would undo the rotation (meshctl.ca.rotation owns them now)
        raise UsageError(f"a root rotation is in progress in {settings.dir}; intermediates "
                         "are not (re)issued until it is finished",
                         hint="certs.status shows the next certs.rotate --root --step")
    existing = {name: load_bundle(cluster_dir(settings, name), name)
                for name in dict.fromkeys(clusters)}
    fresh = make_intermediates(root, [name for name, bundle in existing.items()
                                      if bundle is None
                                      or chain_problem(bundle, root.cert) is not None],
                               settings)
    out: dict[str, tuple[Bundle, bool]] = {}
    for name, bundle in existing.items():
        if name not in fresh:
            assert bundle is not None
            out[name] = (bundle, False)
            continue
        if bundle is not None:
            backup_cluster(settings, name)  # never without a copy
        write_bundle(cluster_dir(settings, name), fresh[name])
        out[name] = (fresh[name], True)
    return out


def ensure_intermediate(root: RootCA, cluster: str, settings: CASettings) -> tuple[Bundle, bool]:
    """:func:`ensure_intermediates` for one cluster: ``(bundle, created)``."""
    return ensure_intermediates(root, [cluster], settings)[cluster]

