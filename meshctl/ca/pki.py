"""Generic X.509 building blocks over ``cryptography``: keys, names, signing, PEM.

Pure functions, no I/O.  ``meshctl.ca.certs`` applies Istio's CA conventions on top;
``meshctl.sandbox`` uses the same blocks for its clusters' serving and client
certificates.  Keeping one place that signs certificates means one place to audit.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

KEY_TYPES = ("rsa-2048", "rsa-4096", "ecdsa-p256")

# Backdate notBefore a little: clocks across clusters are never perfectly in step.
CLOCK_SKEW = timedelta(minutes=5)


def _check_key_type(key_type: str) -> None:
    if key_type not in KEY_TYPES:
        raise ValueError(f"unknown key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")


def generate_key(key_type: str) -> PrivateKey:
    """A new private key of one of :data:`KEY_TYPES`."""
    _check_key_type(key_type)
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "rsa-4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    return ec.generate_private_key(ec.SECP256R1())


def cpus() -> int:
    """The CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def generate_keys(key_type: str, count: int, *, workers: int | None = None) -> list[PrivateKey]:
    """``count`` new keys of ``key_type``, generated on up to ``workers`` threads
    (default: one per CPU this process may use); the list has exactly ``count`` keys.

    Threads, not processes: ``cryptography`` releases the GIL while OpenSSL searches
    for RSA primes, so threads run in parallel with no pickling of private keys
    between processes (``bench/certs.py`` measures it: 4 RSA-4096 keys on 2 threads
    against the same 4 one after another).  RSA-4096 prime search takes 0.2-3 s a key,
    so a cluster-per-key fan-out is where bootstrap spends its CA time.  EC keys take
    microseconds and are made inline.  A failure is raised as is (the first one, in
    order); queued keys are dropped, none is ever written anywhere from here.
    """
    _check_key_type(key_type)
    workers = min(workers or cpus(), count)
    if workers <= 1 or not key_type.startswith("rsa-"):
        return [generate_key(key_type) for _ in range(count)]
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="meshctl-keygen")
    try:
        futures = [pool.submit(generate_key, key_type) for _ in range(count)]
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def name(*, common_name: str | None = None, organization: str | None = None,
         locality: str | None = None) -> x509.Name:
    """An X.509 name from the few attributes meshctl uses, in a stable order."""
    attrs = []
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if common_name:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    if locality:
        attrs.append(x509.NameAttribute(NameOID.LOCALITY_NAME, locality))
    return x509.Name(attrs)


@dataclass(frozen=True)
class Usage:
    """What a certificate is for; maps onto basicConstraints, keyUsage and extendedKeyUsage."""

    ca: bool = False
    path_length: int | None = None
    server: bool = False
    client: bool = False


def _san(dns: Iterable[str], ips: Iterable[str],
         uris: Iterable[str] = ()) -> x509.SubjectAlternativeName | None:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    return x509.SubjectAlternativeName(names) if names else None


def sign(*, subject: x509.Name, public_key, issuer_name: x509.Name, issuer_key: PrivateKey,
         usage: Usage, days: float, dns: Sequence[str] = (), ips: Sequence[str] = (),
         uris: Sequence[str] = (), not_before: datetime | None = None,
         issuer_cert: x509.Certificate | None = None,
         serial: int | None = None) -> x509.Certificate:
    """Sign one certificate with SHA-256.

    ``not_before`` defaults to now minus :data:`CLOCK_SKEW`; tests pass a past date to
    make expired certificates without waiting.  CA certificates get keyCertSign and
    cRLSign (critical), leaves get digitalSignature (and keyEncipherment for RSA).
    ``days`` may be fractional: workload certificates live for hours.

    With ``issuer_cert`` the certificate never outlives its issuer: notAfter is cut to
    the issuer's.  A chain is only as valid as its shortest link, so a later date would
    promise a validity no verifier grants, and hide from ``certs.status`` (which reads
    the intermediate's date) that the root ends first.
    """
    start = not_before or (datetime.now(UTC) - CLOCK_SKEW)
    end = start + timedelta(days=days)
    if issuer_cert is not None:
        end = min(end, issuer_cert.not_valid_after_utc)
        if end <= start:
            raise ValueError("the issuer's certificate ends before this one would start")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=usage.ca, path_length=usage.path_length),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if usage.ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False),
            critical=True)
    else:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                          crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True)
        ekus = ([ExtendedKeyUsageOID.SERVER_AUTH] if usage.server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if usage.client else [])
        if ekus:
            builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    if issuer_cert is not None:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    san = _san(dns, ips, uris)
    if san is not None:
        # RFC 5280 4.2.1.6: with an empty subject the SAN carries the identity, critical.
        builder = builder.add_extension(san, critical=len(subject) == 0)
    return builder.sign(issuer_key, hashes.SHA256())


def self_signed_ca(*, subject: x509.Name, key: PrivateKey, days: float,
                   not_before: datetime | None = None,
                   serial: int | None = None) -> x509.Certificate:
    """A self-signed root: basicConstraints critical CA:true, no path length limit."""
    return sign(subject=subject, public_key=key.public_key(), issuer_name=subject,
                issuer_key=key, usage=Usage(ca=True), days=days, not_before=not_before,
                serial=serial)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: Istio's ``cacerts`` and kube components read it as is."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_certs(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order; ``ValueError`` when there is none
    or one does not parse (a short reason, not cryptography's FAQ link)."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("not PEM certificates") from None
    if not certs:
        raise ValueError("holds no certificate")
    return certs


def load_key(pem: bytes) -> PrivateKey:
    """An unencrypted RSA or EC private key from PEM; ``ValueError`` saying why not.

    Every failure is a ``ValueError``: ``cryptography`` raises ``TypeError`` for an
    encrypted key and ``UnsupportedAlgorithm`` for an odd one, and callers that read
    a key from a cluster's ``cacerts`` or from ``ca.dir`` turn ``ValueError`` into one
    line naming the file; anything else would escape as a traceback.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise ValueError("the private key is encrypted (istiod and meshctl need it "
                         "unencrypted)") from None
    except UnsupportedAlgorithm:
        raise ValueError("the private key's algorithm is not supported") from None
    except ValueError:
        raise ValueError("not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("unsupported private key type (expected RSA or ECDSA)")
    return key


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as colon-separated upper-case hex, as ``openssl x509 -fingerprint``."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return (cert.public_key().public_bytes(serialization.Encoding.DER, fmt)
            == key.public_key().public_bytes(serialization.Encoding.DER, fmt))
