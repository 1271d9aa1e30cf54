"""The sandbox's webhook stand-in keeps answering while one client stalls its handshake.

Found when ``test_istiod_remote`` failed for 90 s with HTTP 500 from the API server: the
stand-in wrapped its listening socket in TLS, so every handshake ran inside ``accept``
and one stalled connection blocked all later webhook calls.  No cluster needed: the
stand-in is served on loopback and asked the way the API server asks.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl

from meshctl import config
from meshctl.ca import certs, pki
from meshctl.sandbox.webhooks import Issuer, StandIn, trusts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ask(port: int, trust: ssl.SSLContext) -> bytes:
    """One AdmissionReview POST, the way the API server sends it; the raw answer."""
    review = json.dumps({"apiVersion": "admission.k8s.io/v1",
                         "request": {"uid": "u1"}}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            trust.wrap_socket(raw, server_hostname="istiod.istio-system.svc") as tls:
        tls.sendall(b"POST /inject HTTP/1.1\r\nHost: istiod\r\nContent-Type: "
                    b"application/json\r\nContent-Length: %d\r\n\r\n" % len(review) + review)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            chunk = tls.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


def _allowed(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].endswith(b"200 OK") and json.loads(body)["response"] == {
        "uid": "u1", "allowed": True}


def test_under_the_clusters_cacerts_the_mesh_root_is_trusted(tmp_path) -> None:
    """A remote cluster's caBundle holds the mesh root (the main's istiod writes it); the
    stand-in's certificate, issued by the cluster's cacerts, verifies against that alone."""
    settings = config.CASettings(dir=tmp_path / "ca", key="ecdsa-p256")
    root = certs.make_root(settings)
    bundle = certs.make_intermediate(root, "cluster2", settings)
    files = bundle.files()
    issuer = Issuer(bundle.ca_cert, bundle.ca_key, files[certs.CERT_CHAIN],
                    files[certs.ROOT_CERT])
    stand_in, port = StandIn(workdir=tmp_path), _free_port()
    assert stand_in.serve("127.0.0.1", port, "istiod.istio-system.svc", issuer)
    only_root = ssl.create_default_context(cadata=pki.cert_pem(root.cert).decode())
    assert _allowed(_ask(port, only_root))
    assert trusts(stand_in.bundle(issuer), pki.cert_pem(root.cert))
    assert trusts(base64.b64encode(pki.cert_pem(root.cert)).decode(), files[certs.ROOT_CERT])
    assert not trusts(stand_in.ca_bundle, files[certs.ROOT_CERT])  # its own CA is another


def test_a_stalled_handshake_does_not_block_other_calls(tmp_path) -> None:
    stand_in, port = StandIn(workdir=tmp_path), _free_port()
    assert stand_in.serve("127.0.0.1", port, "istiod.istio-system.svc")
    stalled = socket.create_connection(("127.0.0.1", port))  # connects, never says hello
    try:
        trust = ssl.create_default_context(
            cadata=base64.b64decode(stand_in.ca_bundle).decode())
        answer = _ask(port, trust)
    finally:
        stalled.close()
    assert _allowed(answer)

