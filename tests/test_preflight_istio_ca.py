"""preflight ``istio-ca``: a ``cacerts`` istiod has not loaded is not a PASS (offline).

istiod reads ``cacerts`` only when it starts; one that started without it signs with a
self-signed CA (``istio-ca-secret``) until restarted, and publishes that CA's root as
``istio-ca-root-cert``.  So on a cluster meshctl installed, ``istio-ca-secret`` beside
``cacerts`` is a harmless leftover only when istiod serves the root of ``cacerts``.
The sandbox half (a real istiod started without ``cacerts``) is in
``tests/test_install_cacerts.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from meshctl.ca import certs, pki
from meshctl.preflight import ownership as pf_own
from tests.test_preflight import offline_facts


def root(name: str) -> tuple[certs.Bundle, str]:
    key = pki.generate_key("ecdsa-p256")
    cert = pki.self_signed_ca(subject=pki.name(common_name=name), key=key, days=30,
                              not_before=datetime.now(UTC) - timedelta(minutes=1))
    return (certs.Bundle(cluster="cluster1", ca_cert=cert, ca_key=key, roots=(cert,)),
            pki.cert_pem(cert).decode())


MESHCTL, MESHCTL_PEM = root("meshctl root")
_, SELF_SIGNED_PEM = root("istiod self-signed")


@pytest.mark.parametrize(("secret", "record", "cacerts", "served", "status", "needle"), [
    (False, True, True, MESHCTL_PEM, "PASS", "no self-signed Istio CA"),
    (True, False, False, None, "FAIL", "an Istio meshctl did not install"),
    (True, True, False, SELF_SIGNED_PEM, "FAIL", "istiod started before cacerts existed"),
    # cacerts pushed after istiod started: istiod still serves its own root
    (True, True, True, SELF_SIGNED_PEM, "FAIL", "istiod has not loaded istio-system/cacerts"),
    (True, True, True, None, "WARN", "no telling which one istiod signs with"),
    (True, True, True, "not a certificate", "WARN", "no telling"),
    (True, True, True, MESHCTL_PEM, "PASS", "is a leftover: istiod serves the root"),
    # during a root rotation istiod serves both roots
    (True, True, True, SELF_SIGNED_PEM + MESHCTL_PEM, "PASS", "is a leftover"),
], ids=["none", "foreign", "ours-before-cacerts", "cacerts-not-loaded", "no-root-published",
        "root-unreadable", "loaded", "loaded-two-roots"])
def test_istio_ca_secret_beside_cacerts(secret: bool, record: bool, cacerts: bool,
                                        served: str | None, status: str, needle: str) -> None:
    configmaps = {"istio-ca-root-cert": {"root-cert.pem": served}} if served else {}
    f = offline_facts(ca_secret=secret, record=record, configmaps=configmaps)
    f.cacerts_present = cacerts
    f.cacerts = MESHCTL if cacerts else None
    res = pf_own.ca_secret(f)
    assert (res.status, needle in res.message) == (status, True), res
    if status != "PASS" and record:
        assert "restart istiod" in res.hint or "certs.issue" in res.hint, res.hint
