"""Why a connection to an API server failed, in words, and whether trying again can help.

The ``kubernetes`` REST layer reports a TLS failure as ``ApiException(status=0)`` with
the ``ssl`` error two links down its exception chain; urllib3 reports refused
connections, DNS failures and timeouts as its own exception types.  Left alone,
either escapes as a traceback.  :func:`explain` walks the chain and says what happened
the way an operator would look it up ("certificate verify failed: unable to get local
issuer certificate", "the server does not speak TLS"), without any request detail.

Retrying only helps with what can change by itself (a refused or dropped connection,
a timeout, a DNS server that did not answer); a certificate that does not verify, a
host name that does not exist or a server that speaks no TLS fails the same way every
time, so it is a :class:`ConnectFailed` at once instead of a minute of retries.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

import urllib3

from meshctl.errors import ClusterError, one_line

# OpenSSL's reasons when the peer answered something that is not TLS (plain HTTP).
NOT_TLS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST",
           "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL", "UNEXPECTED_RECORD",
           "TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL"}


class ConnectFailed(ClusterError):
    """A connection that retrying cannot fix: TLS verification, no TLS, unknown host."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and urllib3's ``.reason`` (MaxRetryError's cause)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nxt in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    return next((link for link in _chain(exc) if isinstance(link, kind)), None)


def _tls(error: ssl.SSLError) -> tuple[str, bool]:
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or "the server's certificate is not trusted"
        return f"TLS: certificate verify failed: {detail.rstrip('.')}", False
    if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "TLS handshake failed: the server closed the connection", True
    reason = str(getattr(error, "reason", "") or "")
    if reason in NOT_TLS:
        return (f"TLS handshake failed: the server does not speak TLS ({reason}); is it a "
                "plain-HTTP listener?"), False
    return f"TLS handshake failed: {reason or one_line(str(error), 120)}", False


def explain(exc: BaseException) -> tuple[str, bool]:
    """``(cause in words, transient)`` for an exception from sending one request."""
    tls = _find(exc, ssl.SSLError)
    if isinstance(tls, ssl.SSLError):
        return _tls(tls)
    dns = _find(exc, socket.gaierror)
    if isinstance(dns, socket.gaierror):
        temporary = dns.errno in (socket.EAI_AGAIN,)
        return f"DNS: the host name does not resolve ({dns.strerror})", temporary
    if _find(exc, ConnectionRefusedError) is not None:
        return "connection refused (nothing listens there)", True
    if _find(exc, ConnectionResetError) is not None:
        return "connection reset by the server", True
    if _find(exc, urllib3.exceptions.ReadTimeoutError) is not None:
        return "connected, but no answer in time (read timed out)", True
    # (urllib3's NewConnectionError is a ConnectTimeoutError: refused is checked first)
    if _find(exc, urllib3.exceptions.ConnectTimeoutError) is not None or \
            _find(exc, TimeoutError) is not None:
        return "timed out connecting", True
    if _find(exc, urllib3.exceptions.ProtocolError) is not None:
        return "the server closed the connection without an answer", True
    os_error = _find(exc, OSError)
    if isinstance(os_error, OSError) and os_error.strerror:
        return f"connection failed: {os_error.strerror}", True
    status = getattr(exc, "status", None)
    if status == 0:  # an ApiException without a cause we know: say what it says
        text = str(getattr(exc, "reason", "") or exc).splitlines()
        return f"request failed: {one_line(' '.join(text), 160)}", False
    return f"connection failed ({type(exc).__name__})", True


def is_loopback(address: str) -> bool:
    """True for a loopback host, given as a URL (``https://127.0.0.1:6443``) or a bare
    host or IP: ``localhost``, ``*.localhost`` (RFC 6761 keeps the whole domain on
    loopback), 127.0.0.0/8 and ``::1``.  Such an address in a remote secret or as the
    main's gateway address points each cluster at itself."""
    host = urlsplit(address).hostname if "://" in address else address
    host = (host or "").strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
