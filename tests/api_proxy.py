"""A TLS-terminating proxy in front of one sandbox API server, for counting and faults.

docs/testing.md: transient failures (429, 500, 503, dropped connections) are made by a
small reverse proxy that fails the Nth request of a given kind; afterwards the
requests that reached the real server are counted.  Clients (meshctl *and* istioctl)
talk to the proxy with its own test CA; the proxy talks to the API server as the
sandbox admin (client certificate).  Requests are parsed one by one (HTTP/1.1, keep-
alive; the proxy offers no h2, so Go clients fall back to 1.1), responses are relayed
as they arrive (chunked bodies chunk by chunk), so watches stream as they would.

Only loopback addresses are used.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from meshctl.ca import pki

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
# Reviews are "create" requests that change nothing stored: they are not mutations.
REVIEWS = re.compile(r"/(selfsubjectaccessreviews|selfsubjectrulesreviews|tokenreviews|"
                     r"subjectaccessreviews)\b")


@dataclass
class Fault:
    """Answer the ``nth`` request matching ``method`` and ``path`` (regex) with a fault.

    ``status`` 0 means: drop the connection without answering.
    """

    method: str
    path: str
    status: int
    nth: int = 1
    times: int = 1
    retry_after: str | None = None
    seen: int = 0
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and re.search(self.path, path) is not None


@dataclass
class Seen:
    method: str
    path: str
    forwarded: bool


@dataclass
class ApiProxy:
    upstream: str  # https://127.0.0.x:port
    ca_file: Path
    cert_file: Path
    key_file: Path
    listen_ip: str = "127.0.0.1"
    faults: list[Fault] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, workdir: Path) -> None:
        key = pki.generate_key("ecdsa-p256")
        self.ca_key = key
        self.ca_cert = pki.self_signed_ca(subject=pki.name(common_name="test proxy CA"),
                                          key=key, days=1)
        leaf_key = pki.generate_key("ecdsa-p256")
        leaf = pki.sign(subject=pki.name(common_name="proxy"), public_key=leaf_key.public_key(),
                        issuer_name=self.ca_cert.subject, issuer_key=key,
                        issuer_cert=self.ca_cert, usage=pki.Usage(server=True), days=1,
                        ips=[self.listen_ip])
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "proxy-ca.crt").write_bytes(pki.cert_pem(self.ca_cert))
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            c, k = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            c.write_bytes(pki.cert_pem(leaf))
            k.write_bytes(pki.key_pem(leaf_key))
            self.server_ctx.load_cert_chain(c, k)
        self.server_ctx.set_alpn_protocols(["http/1.1"])
        self.client_ctx = ssl.create_default_context(cafile=str(self.ca_file))
        self.client_ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        self.client_ctx.set_alpn_protocols(["http/1.1"])
        host, port = self.upstream.removeprefix("https://").rsplit(":", 1)
        self.up_addr = (host, int(port))
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.listen_ip, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.ca_path = workdir / "proxy-ca.crt"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://{self.listen_ip}:{self.port}"

    def stop(self) -> None:
        self._stop = True
        self.sock.close()

    def kubeconfig(self, path: Path, context: str) -> Path:
        """A kubeconfig with one context that reaches the API through this proxy."""
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": context,
               "clusters": [{"name": context, "cluster": {
                   "server": self.url, "certificate-authority": str(self.ca_path)}}],
               "users": [{"name": "via-proxy", "user": {}}],
               "contexts": [{"name": context, "context": {"cluster": context,
                                                         "user": "via-proxy"}}]}
        path.write_text(yaml.safe_dump(doc))
        return path

    # counting

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def mutations(self) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.method in MUTATING and r.forwarded
                    and not REVIEWS.search(r.path)]

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests
                       if r.method == method and r.forwarded and re.search(path, r.path))

    # serving

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.matches(method, path):
                    f.seen += 1
                    if f.seen >= f.nth and f.fired < f.times:
                        f.fired += 1
                        return f
        return None

    def _serve(self, raw: socket.socket) -> None:
        """One client connection, strictly in turn: request in, response out.

        Sequential on purpose: an SSL socket must not be read and written by two threads
        at once, and HTTP/1.1 without pipelining never needs it.
        """
        try:
            client = self.server_ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        upstream = up_reader = None
        try:
            reader = client.makefile("rb")
            while True:
                head = _read_head(reader)
                if head is None:
                    return
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                method, target, _ = request_line.split(" ", 2)
                length = _content_length(head)
                body = reader.read(length) if length else b""
                fault = self._fault_for(method, target.split("?", 1)[0])
                with self._lock:
                    self.requests.append(Seen(method, target, fault is None))
                if fault is not None:
                    if fault.status == 0:
                        return  # dropped: close without a word
                    client.sendall(_status_response(fault))
                    continue
                if upstream is None:
                    upstream = self.client_ctx.wrap_socket(
                        socket.create_connection(self.up_addr), server_hostname=self.up_addr[0])
                    up_reader = upstream.makefile("rb")
                upstream.sendall(head + body)
                if not _relay_response(up_reader, client, method):
                    return
        except (OSError, ValueError):
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()


def _relay_response(up, client: socket.socket, method: str) -> bool:
    """Copy one response, streaming its body; False when the connection must close."""
    head = _read_head(up)
    if head is None:
        return False
    client.sendall(head)
    status = int(head.split(b" ", 2)[1])
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return True
    if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
        while True:
            size_line = up.readline(65536)
            if not size_line:
                return False
            client.sendall(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            chunk = up.read(size + 2)  # data and its CRLF
            client.sendall(chunk)
            if size == 0:
                return True
    length = _content_length(head)
    if length or re.search(rb"(?im)^content-length:", head):
        remaining = length
        while remaining:
            data = up.read(min(65536, remaining))
            if not data:
                return False
            client.sendall(data)
            remaining -= len(data)
        return True
    while data := up.read1(65536):  # no length: the body ends with the connection
        client.sendall(data)
    return False


def _read_head(reader) -> bytes | None:
    lines = []
    while True:
        line = reader.readline(65536)
        if not line:
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _content_length(head: bytes) -> int:
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return int(m.group(1)) if m else 0


def _status_response(fault: Fault) -> bytes:
    reason = {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable",
              403: "Forbidden"}.get(fault.status, "Error")
    body = (f'{{"kind":"Status","apiVersion":"v1","status":"Failure",'
            f'"message":"injected by the test proxy","reason":"{reason}",'
            f'"code":{fault.status}}}').encode()
    headers = [f"HTTP/1.1 {fault.status} {reason}", "Content-Type: application/json",
               f"Content-Length: {len(body)}"]
    if fault.retry_after is not None:
        headers.append(f"Retry-After: {fault.retry_after}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body
