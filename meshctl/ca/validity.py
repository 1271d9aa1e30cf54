"""Is a certificate valid now, and does a chain lead up to a root: pure checks.

Split from :mod:`meshctl.ca.certs` (which re-exports every name here) so that the
authority's builders and its disk layout stay one module each under the size limit;
these functions read certificates and nothing else, no files, no clusters.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from meshctl.ca import pki

if TYPE_CHECKING:
    from meshctl.ca import certs


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s key signed ``cert`` (signature, not just matching names)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def validity_problem(cert: x509.Certificate, *, now: datetime | None = None) -> str | None:
    """``None`` if ``cert`` is valid now, else why not (expired / not yet valid)."""
    now = now or datetime.now(UTC)
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if now > cert.not_valid_after_utc:
        return f"expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    return None


def days_left(cert: x509.Certificate, *, now: datetime | None = None) -> float:
    """Days until ``cert``'s notAfter (negative once it is past)."""
    now = now or datetime.now(UTC)
    return (cert.not_valid_after_utc - now).total_seconds() / 86400


def chain_problem(bundle: certs.Bundle, root: x509.Certificate) -> str | None:
    """Why ``bundle`` does not chain to ``root`` and hold together, or ``None`` if it does."""
    if not pki.same_public_key(bundle.ca_cert, bundle.ca_key):
        return "ca-key.pem does not belong to ca-cert.pem"
    if not issued_by(bundle.ca_cert, root):
        return f"intermediate is not signed by root {pki.fingerprint(root)[:23]}…"
    if not any(r == root for r in bundle.roots):
        return "root-cert.pem does not contain the root"
    return validity_problem(bundle.ca_cert)


def chain_problem_to(chain: Sequence[x509.Certificate],
                     trusted: Iterable[x509.Certificate]) -> str | None:
    """Why ``chain`` (``cert-chain.pem``: intermediate first) does not lead up to a
    ``trusted`` root, or ``None`` if it does.

    Signatures only, link by link: a chain that merely names the right issuer but was
    signed by another key is refused.  Validity dates are checked separately
    (:func:`validity_problem`) so a caller can tell "expired" from "wrong root".
    """
    if not chain:
        return "cert-chain.pem holds no certificate"
    for child, parent in itertools.pairwise(chain):
        if not issued_by(child, parent):
            return "cert-chain.pem is not a chain (a certificate is not signed by the next)"
    top = chain[-1]
    roots = list(trusted)
    if any(top == root or issued_by(top, root) for root in roots):
        return None
    if not roots:
        return "no local root to verify against"
    return (f"cert-chain.pem leads to {pki.fingerprint(top)[:23]}…, not to the local root "
            f"{', '.join(pki.fingerprint(r)[:23] + '…' for r in roots)}")


def is_ca(cert: x509.Certificate) -> bool:
    """basicConstraints CA:true: istiod refuses every chain under a root without it."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
