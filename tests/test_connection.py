"""``connection.explain`` on exceptions raised by real sockets and servers (no fakes):
the cause in words, and whether a retry can help."""

from __future__ import annotations

from pathlib import Path

import pytest
import urllib3

from meshctl import kube
from meshctl.kube import connection
from tests import tls_servers


def _error(url: str, **kwargs: object) -> BaseException:
    pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED",
                               ca_certs=None, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(Exception) as info:
        pool.request("GET", url + "/version", retries=False, timeout=urllib3.Timeout(0.5, 0.5))
    return info.value


def test_a_silent_server_is_a_timeout_worth_retrying() -> None:
    with tls_servers.silent_listener() as url:
        cause, transient = connection.explain(_error(url))
    assert "timed out" in cause and transient


def test_refused_is_worth_retrying_dns_is_not() -> None:
    cause, transient = connection.explain(_error(tls_servers.free_port_url()))
    assert cause.startswith("connection refused") and transient
    cause, transient = connection.explain(_error("https://no-such-host.invalid:6443"))
    assert cause.startswith("DNS:")


def test_tls_failures_are_not_retried(tmp_path: Path) -> None:
    """Through kube.Kube, as meshctl sends: ConnectFailed (exit 3), no retry loop."""
    ca = tls_servers.make_ca()
    cert, key = tls_servers.server_cert(ca, tmp_path, expired=True)
    with tls_servers.https_server(cert, key) as url:
        k = kube.client_from("c1", server=url, ca_pem=ca.pem, token="t", deadline=30)
        with pytest.raises(connection.ConnectFailed) as info:
            k.request("GET", "/version", what="read /version")
    assert str(info.value) == (f"c1: read /version: API server {url}: TLS: certificate "
                               "verify failed: certificate has expired")
    assert info.value.exit_code == 3 and not kube.is_transient(info.value)
    assert k.counts == {"GET": 1}  # one attempt: retrying an expired certificate is pointless
