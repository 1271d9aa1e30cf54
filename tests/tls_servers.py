"""Real local servers for the connection-failure tests: TLS with chosen certificates,
plain HTTP, a listener that never answers.  Each runs in a daemon thread on 127.0.0.1
and a port the kernel picks; nothing here fakes the ``kubernetes`` client."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from meshctl.ca import pki


@dataclass(frozen=True)
class CA:
    cert: object
    key: object

    @property
    def pem(self) -> bytes:
        return pki.cert_pem(self.cert)  # type: ignore[arg-type]


def make_ca(name: str = "test CA") -> CA:
    key = pki.generate_key("ecdsa-p256")
    cert = pki.self_signed_ca(subject=pki.name(common_name=name), key=key, days=30)
    return CA(cert, key)


def server_cert(ca: CA, folder: Path, *, ips: tuple[str, ...] = ("127.0.0.1",),
                dns: tuple[str, ...] = (), expired: bool = False) -> tuple[Path, Path]:
    """A serving certificate under ``ca`` written to ``folder``: (cert file, key file)."""
    key = pki.generate_key("ecdsa-p256")
    not_before = datetime.now(UTC) - timedelta(days=10) if expired else None
    cert = pki.sign(subject=pki.name(common_name="api"), public_key=key.public_key(),
                    issuer_name=ca.cert.subject, issuer_key=ca.key,  # type: ignore[attr-defined]
                    issuer_cert=ca.cert, usage=pki.Usage(server=True),
                    days=1 if expired else 30, dns=dns, ips=ips, not_before=not_before)
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "server.pem", folder / "server-key.pem"
    cert_path.write_bytes(pki.cert_pem(cert) + ca.pem)
    key_path.write_bytes(pki.key_pem(key))
    return cert_path, key_path


class _Version(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"major":"1","minor":"36","gitVersion":"v1.36.3"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        del args


@contextmanager
def https_server(cert: Path, key: Path) -> Iterator[str]:
    """An HTTPS server answering GET with a /version body; yields its URL."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Version)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    with _serving(srv):
        yield f"https://127.0.0.1:{srv.server_address[1]}"


@contextmanager
def http_server() -> Iterator[str]:
    """A plain-HTTP listener; yields an https:// URL pointing at it (the mistake)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Version)
    with _serving(srv):
        yield f"https://127.0.0.1:{srv.server_address[1]}"


@contextmanager
def silent_listener() -> Iterator[str]:
    """Accepts TCP connections (kernel backlog) and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"https://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def free_port_url() -> str:
    """An https URL where nothing listens (a port just released)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"https://127.0.0.1:{port}"


@contextmanager
def _serving(srv: http.server.ThreadingHTTPServer) -> Iterator[None]:
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        srv.shutdown()
        srv.server_close()
