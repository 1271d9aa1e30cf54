"""The sandbox's stand-in for admission webhooks that no process of the sandbox serves.

The sandbox runs the real istiod for every istiod pod (``sandbox.istiod``), and the
Services selecting those pods reach it: their webhooks are answered by Istio itself.
What remains is a webhook whose Service has no pod the sandbox can run: above all a
remote-profile cluster, whose ``istiod`` Service has no selector and whose endpoint is
the main cluster's east-west gateway (an Envoy, which the sandbox cannot run).  Without
an answer there, the API server's calls would be refused and every pod matched by the
injector (failurePolicy Fail) could never be created.

For those webhooks only, this stand-in does what the missing server side would, and no
more:
- for every webhook configuration whose ``clientConfig.service`` names such a Service,
  it listens on that Service's ClusterIP and port (the sandbox's Service range is on
  loopback) with TLS for ``<svc>.<ns>.svc``.  Its certificate is issued by the
  cluster's own ``cacerts`` when there is one, as istiod's is (:class:`Issuer`), so the
  mesh root that the main's istiod writes into the caBundle trusts it; without a
  ``cacerts`` it uses a CA of its own and writes that into the caBundle;
- it answers every AdmissionReview with ``allowed: true`` and no patch.

So objects it admits are admitted unchanged: **no sidecar is injected** by it and no
Istio object is validated by it.  Tests and notes must say which webhook answered.

Runs in the sandbox's controller process beside the LoadBalancer loop.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from meshctl.ca import pki
from meshctl.sandbox import istiod as sandbox_istiod
from meshctl.sandbox.api import Api, ApiError

KINDS = ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
PATH = "/apis/admissionregistration.k8s.io/v1/"


class _Handler(BaseHTTPRequestHandler):
    """Answers any AdmissionReview: allowed, unchanged."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            review = json.loads(self.rfile.read(length) or b"{}")
            uid = review["request"]["uid"]
            api_version = review.get("apiVersion", "admission.k8s.io/v1")
        except (ValueError, KeyError, TypeError):
            self.send_error(400, "not an AdmissionReview")
            return
        body = json.dumps({"apiVersion": api_version, "kind": "AdmissionReview",
                           "response": {"uid": uid, "allowed": True}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args  # one line per admission would drown the controller's log


class _TLSServer(ThreadingHTTPServer):
    """TLS with the handshake in each connection's own thread, never in the accept loop.

    Wrapping the listening socket would run every handshake inside ``accept``: one client
    that connects and then stalls would block the loop, and every later webhook call
    (the API server waits 10 s, then answers the user with a 500) would time out.
    """

    daemon_threads = True
    HANDSHAKE_TIMEOUT = 10.0

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 context: ssl.SSLContext) -> None:
        super().__init__(address, handler)
        self.context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.HANDSHAKE_TIMEOUT)  # for the handshake and each read
        tls = self.context.wrap_socket(request, server_side=True)
        self.RequestHandlerClass(tls, client_address, self)


@dataclass(frozen=True)
class Issuer:
    """The cluster's own Istio CA (its ``cacerts``): what istiod signs its serving cert with.

    A remote-profile cluster's webhook caBundle is kept by the main's istiod (with
    ``externalIstiod``) as the mesh root.  A stand-in cert from its own CA would fight
    that patcher and lose (``x509: certificate signed by unknown authority``), so where a
    ``cacerts`` exists the stand-in serves what istiod would: a leaf under the mesh CA.
    """

    cert: Any  # x509.Certificate
    key: Any  # pki.PrivateKey
    chain_pem: bytes  # intermediate(s) + root, as in cert-chain.pem
    root_pem: bytes


def mesh_issuer(api: Api) -> Issuer | None:
    """``istio-system/cacerts`` of this cluster, or None when there is none (yet) or it
    is no usable CA (an encrypted ``ca-key.pem``: istiod could not load it either).
    Unreadable must not raise: it would stop every webhook of the cluster being served,
    round after round, instead of the stand-in serving them with its own CA."""
    try:
        secret = api.get("/api/v1/namespaces/istio-system/secrets/cacerts")
    except ApiError:
        return None
    try:
        data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
        if not {"ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"} <= data.keys():
            return None
        return Issuer(pki.load_certs(data["ca-cert.pem"])[0],
                      pki.load_key(data["ca-key.pem"]), data["cert-chain.pem"],
                      data["root-cert.pem"])
    except ValueError:
        return None


def trusts(bundle_b64: str | None, root_pem: bytes) -> bool:
    """True when a webhook's caBundle already holds ``root_pem``'s certificate."""
    try:
        held = pki.load_certs(base64.b64decode(bundle_b64 or ""))
    except ValueError:
        return False
    return any(pki.load_certs(root_pem)[0] == cert for cert in held)


@dataclass
class StandIn:
    """One CA for all stand-in listeners of a sandbox, and the listeners themselves."""

    workdir: Path
    ca: pki.PrivateKey = field(default_factory=lambda: pki.generate_key("ecdsa-p256"))
    listeners: dict[tuple[str, int], ThreadingHTTPServer] = field(default_factory=dict)
    issued_by: dict[tuple[str, int], Any] = field(default_factory=dict)  # CA cert per listener
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        subject = pki.name(organization="meshctl sandbox", common_name="webhook stand-in CA")
        self.ca_cert = pki.self_signed_ca(subject=subject, key=self.ca, days=30)
        self.ca_bundle = base64.b64encode(pki.cert_pem(self.ca_cert)).decode()

    def bundle(self, issuer: Issuer | None) -> str:
        """The caBundle that trusts what this stand-in serves under ``issuer``."""
        return base64.b64encode(issuer.root_pem).decode() if issuer else self.ca_bundle

    def _load(self, ctx: ssl.SSLContext, dns: str, issuer: Issuer | None) -> None:
        """(Re)load the serving cert: a leaf under ``issuer`` (with its chain), else under
        the stand-in's own CA.  New handshakes use it; open connections keep theirs."""
        key = pki.generate_key("ecdsa-p256")
        ca_cert, ca_key = (issuer.cert, issuer.key) if issuer else (self.ca_cert, self.ca)
        cert = pki.sign(subject=pki.name(common_name=dns), public_key=key.public_key(),
                        issuer_name=ca_cert.subject, issuer_key=ca_key, issuer_cert=ca_cert,
                        usage=pki.Usage(server=True), days=30, dns=[dns])
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            cert_file, key_file = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            cert_file.write_bytes(pki.cert_pem(cert) + (issuer.chain_pem if issuer else b""))
            key_file.write_bytes(pki.key_pem(key))
            key_file.chmod(0o600)
            ctx.load_cert_chain(cert_file, key_file)

    def serve(self, ip: str, port: int, dns: str, issuer: Issuer | None = None) -> bool:
        """Listen on ``ip:port`` for ``dns`` unless already listening (then re-issue its
        cert when the cluster's CA changed); True if new."""
        with self.lock:
            server = self.listeners.get((ip, port))
            if server is not None:
                if self.issued_by.get((ip, port)) != (issuer.cert if issuer else None):
                    self._load(server.context, dns, issuer)
                    self.issued_by[(ip, port)] = issuer.cert if issuer else None
                return False
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._load(ctx, dns, issuer)
            server = _TLSServer((ip, port), _Handler, ctx)
            threading.Thread(target=server.serve_forever, daemon=True,
                             name=f"webhook {ip}:{port}").start()
            self.listeners[(ip, port)] = server
            self.issued_by[(ip, port)] = issuer.cert if issuer else None
            return True


def _service_port(svc: dict[str, Any], port: int) -> bool:
    return any(p.get("port") == port for p in svc.get("spec", {}).get("ports") or [])


def sync(api: Api, stand_in: StandIn, name: str, real_istiod: bool = False) -> None:
    """Serve and trust every in-cluster webhook Service that exists now.

    With ``real_istiod``, Services that select istiod pods are left to the real istiod
    the sandbox runs (``sandbox.istiod``): it serves them and patches its own caBundle.
    """
    issuer = mesh_issuer(api)
    for kind in KINDS:
        for config in api.get(PATH + kind).get("items") or []:
            patches = []
            for hook in config.get("webhooks") or []:
                ref = (hook.get("clientConfig") or {}).get("service")
                if not ref:
                    continue
                port = ref.get("port", 443)
                try:
                    svc = api.get(f"/api/v1/namespaces/{ref['namespace']}/services/{ref['name']}")
                except ApiError:
                    continue  # the Service comes later; the next sync picks it up
                if real_istiod and sandbox_istiod.selects_istiod(svc):
                    continue
                ip = (svc.get("spec") or {}).get("clusterIP")
                if not ip or ip == "None" or not _service_port(svc, port):
                    continue
                dns = f"{ref['name']}.{ref['namespace']}.svc"
                if stand_in.serve(ip, port, dns, issuer):
                    print(f"{name}: serving webhook {dns}:{port} on {ip}", flush=True)
                current = hook["clientConfig"].get("caBundle")
                trusted = (trusts(current, issuer.root_pem) if issuer
                           else current == stand_in.ca_bundle)
                if not trusted:  # istiod's own bundle (the mesh root) is left as it is
                    patches.append({"name": hook["name"],
                                    "clientConfig": {"caBundle": stand_in.bundle(issuer)}})
            if patches:
                api.request("PATCH", PATH + f"{kind}/{config['metadata']['name']}",
                            {"webhooks": patches},
                            content_type="application/strategic-merge-patch+json")


def run_cluster(state_dir: Path, name: str, api: Api, stand_in: StandIn,
                real_istiod: bool = False, interval: float = 1.0) -> None:
    """Re-sync every ``interval`` seconds until the sandbox's state folder is gone."""
    while state_dir.exists():
        try:
            sync(api, stand_in, name, real_istiod)
        except Exception as e:  # keep the loop alive; the log says what happened
            print(f"{name}: webhooks: {type(e).__name__}: {str(e)[:200]}", flush=True)
        time.sleep(interval)
