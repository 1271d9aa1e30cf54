"""The one parser for kubeconfigs that come from a cluster: an allow-list, nothing more.

A remote secret's kubeconfig (read back from ``istio-system`` by ``verify`` and
``status``, or printed by ``istioctl create-remote-secret`` before ``link`` applies it)
may have been written by anyone who can write a Secret in one namespace of one
cluster.  ``kubernetes.config``'s loaders honour ``exec`` (they run the named command),
``tokenFile`` and client certificate/key paths (they read local files and send them),
and ``auth-provider`` plugins: handing them such a kubeconfig lets that person run code
on the operator's machine.  Istio refuses the same fields (``sanitizeKubeConfig`` in
``pkg/kube/util.go``), so a kubeconfig meshctl refuses is one istiod would refuse too.

So this module accepts exactly what ``istioctl create-remote-secret`` writes:

- one cluster: ``server`` (https), ``certificate-authority-data`` (PEM certificates),
  optionally ``tls-server-name``;
- one user with an inline ``token`` and nothing else;
- one context joining the two (optionally a ``namespace``), and ``current-context``;
- ``apiVersion: v1``, ``kind: Config``, empty ``preferences``.

Anything else is refused with one line naming where the kubeconfig came from and the
field, never a value (the token must not reach a message).  The YAML is read by a
loader that refuses anchors, aliases and duplicate keys, after a size cap, so an
"alias bomb" or a binary blob costs nothing.  :func:`meshctl.kube.client_from` builds
the HTTP client from the parsed values by hand: no loader, no temporary file.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml
from cryptography import x509

from meshctl.errors import ClusterError

MAX_BYTES = 128 * 1024  # a kubeconfig with a CA bundle is a few KiB

TOP_KEYS = {"apiVersion", "kind", "clusters", "contexts", "users", "current-context",
            "preferences"}
CLUSTER_KEYS = {"server", "certificate-authority-data", "tls-server-name"}
CONTEXT_KEYS = {"cluster", "user", "namespace"}
USER_KEYS = {"token"}

# Why a field is refused, in words; anything not listed is "not allowed".
WHY = {
    "exec": "an exec plugin runs a command on this machine",
    "auth-provider": "an auth-provider plugin runs on this machine",
    "tokenFile": "it reads a file on this machine",
    "client-certificate": "it reads a file on this machine",
    "client-key": "it reads a file on this machine",
    "certificate-authority": "it reads a file on this machine",
    "client-certificate-data": "a client certificate is not a service account token",
    "client-key-data": "a client key is not a service account token",
    "username": "basic-auth credentials are not a service account token",
    "password": "basic-auth credentials are not a service account token",
    "as": "impersonation is not allowed",
    "as-groups": "impersonation is not allowed",
    "as-uid": "impersonation is not allowed",
    "as-user-extra": "impersonation is not allowed",
    "insecure-skip-tls-verify": "it turns off TLS verification",
    "proxy-url": "it sends the token through another server",
    "extensions": "extensions are not allowed",
}

_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: safe in a header
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


class Refused(ClusterError):
    """The kubeconfig carries something outside the allow-list (or is not one)."""


@dataclass(frozen=True)
class RemoteKubeconfig:
    """The allowed values of one kubeconfig; ``token`` never appears in ``repr``."""

    cluster_name: str
    server: str
    ca_pem: bytes
    tls_server_name: str | None
    user_name: str
    context_name: str
    token: str = field(repr=False)


# --- YAML without anchors, aliases or duplicate keys -------------------------------------


class _Bad(Exception):
    """Raised inside the loader; turned into :class:`Refused` with the place named."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing anchors/aliases (no expansion bombs) and duplicates."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _Bad("YAML aliases are not allowed")
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise _Bad("YAML anchors are not allowed")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise _Bad("a mapping key is not a plain value") from None
            if duplicate:
                raise _Bad(f"duplicate key {str(key)[:40]!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _text(raw: bytes | str, where: str) -> str:
    if len(raw) > MAX_BYTES:
        raise Refused(f"{where}: larger than {MAX_BYTES // 1024} KiB, not a kubeconfig")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(f"{where}: not UTF-8 text (binary data), not a kubeconfig") from None
    if "\x00" in raw:
        raise Refused(f"{where}: holds NUL bytes (binary data), not a kubeconfig")
    return raw


def _strict(where: str, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except _Bad as e:
        raise Refused(f"{where}: {e}") from None
    except RecursionError:
        raise Refused(f"{where}: YAML nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise Refused(f"{where}: not valid YAML{at}") from None


def load_yaml(raw: bytes | str, where: str) -> Any:
    """One YAML document from untrusted bytes: capped, UTF-8, no aliases, no duplicates."""
    text = _text(raw, where)
    return _strict(where, lambda: yaml.load(text, Loader=_StrictLoader))


def load_yaml_all(raw: bytes | str, where: str) -> list[Any]:
    """Every non-empty YAML document, under the same rules as :func:`load_yaml`."""
    text = _text(raw, where)
    docs = _strict(where, lambda: list(yaml.load_all(text, Loader=_StrictLoader)))
    return [d for d in docs if d is not None]


# --- the allow-list ------------------------------------------------------------------------


def _refuse_extra(where: str, path: str, found: Mapping[str, Any], allowed: set[str]) -> None:
    for key in sorted(map(str, found)):
        if key not in allowed:
            why = WHY.get(key, "not allowed in a remote secret's kubeconfig")
            raise Refused(f"{where}: field {path}.{key} is refused: {why}")


def _mapping(where: str, path: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise Refused(f"{where}: {path} is {_kind(value)}, expected a mapping")
    return value


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", type(None): "empty", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _only(where: str, doc: Mapping[str, Any], key: str, inner: str) -> tuple[str, Mapping]:
    """The single named entry of ``clusters``/``users``/``contexts``: (name, its mapping)."""
    entries = doc.get(key)
    if not isinstance(entries, list):
        raise Refused(f"{where}: {key} is {_kind(entries)}, expected a list of one")
    if len(entries) != 1:
        raise Refused(f"{where}: {key} has {len(entries)} entries, expected exactly one")
    entry = _mapping(where, f"{key}[0]", entries[0])
    _refuse_extra(where, f"{key}[0]", entry, {"name", inner})
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise Refused(f"{where}: {key}[0].name is missing")
    body = _mapping(where, f"{key}[0].{inner}", entry.get(inner))
    return name, body


def _string(where: str, path: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Refused(f"{where}: {path} is {_kind(value)}, expected a non-empty string")
    return value


def _server(where: str, value: Any) -> str:
    url = _string(where, "clusters[0].cluster.server", value)
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise Refused(f"{where}: clusters[0].cluster.server has a bad port") from None
    if parts.scheme != "https" or not parts.hostname:
        raise Refused(f"{where}: clusters[0].cluster.server is not an https URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise Refused(f"{where}: clusters[0].cluster.server carries credentials, a query "
                      "or a fragment")
    return url.rstrip("/")


def _ca(where: str, value: Any) -> bytes:
    text = _string(where, "clusters[0].cluster.certificate-authority-data", value)
    try:
        pem = base64.b64decode(text, validate=True)
        certificates = x509.load_pem_x509_certificates(pem)
    except (binascii.Error, ValueError):
        raise Refused(f"{where}: clusters[0].cluster.certificate-authority-data is not "
                      "base64 of PEM certificates") from None
    if not certificates:
        raise Refused(f"{where}: clusters[0].cluster.certificate-authority-data holds no "
                      "certificate")
    return pem


def check(doc: Any, where: str) -> RemoteKubeconfig:
    """Apply the allow-list to a loaded kubeconfig; ``where`` names its source."""
    doc = _mapping(where, "the kubeconfig", doc)
    _refuse_extra(where, "kubeconfig", doc, TOP_KEYS)
    if doc.get("apiVersion", "v1") != "v1" or doc.get("kind", "Config") != "Config":
        raise Refused(f"{where}: apiVersion/kind is not v1/Config")
    if doc.get("preferences") not in (None, {}):
        raise Refused(f"{where}: field kubeconfig.preferences is refused: not empty")

    cluster_name, cluster = _only(where, doc, "clusters", "cluster")
    _refuse_extra(where, "clusters[0].cluster", cluster, CLUSTER_KEYS)
    server = _server(where, cluster.get("server"))
    ca_pem = _ca(where, cluster.get("certificate-authority-data"))
    sni = cluster.get("tls-server-name")
    if sni is not None and not (isinstance(sni, str) and _HOST.fullmatch(sni)):
        raise Refused(f"{where}: clusters[0].cluster.tls-server-name is not a host name")

    user_name, user = _only(where, doc, "users", "user")
    _refuse_extra(where, "users[0].user", user, USER_KEYS)
    token = user.get("token")
    if not isinstance(token, str) or not token:
        raise Refused(f"{where}: users[0].user.token is missing: expected a service "
                      "account token")
    if not _TOKEN.fullmatch(token):
        raise Refused(f"{where}: users[0].user.token holds spaces or control characters")

    context_name, context = _only(where, doc, "contexts", "context")
    _refuse_extra(where, "contexts[0].context", context, CONTEXT_KEYS)
    if context.get("cluster") != cluster_name or context.get("user") != user_name:
        raise Refused(f"{where}: contexts[0].context does not join the one cluster and the "
                      "one user")
    if context.get("namespace") is not None:
        _string(where, "contexts[0].context.namespace", context.get("namespace"))
    current = doc.get("current-context")
    if current not in (None, "", context_name):
        raise Refused(f"{where}: current-context names no context of the kubeconfig")
    return RemoteKubeconfig(cluster_name=cluster_name, server=server, ca_pem=ca_pem,
                            tls_server_name=sni, user_name=user_name,
                            context_name=context_name, token=token)


def parse(raw: bytes | str, where: str) -> RemoteKubeconfig:
    """Load and check one kubeconfig (text or bytes); :class:`Refused` names the field."""
    return check(load_yaml(raw, where), where)


def from_secret(secret: Mapping[str, Any], key: str, where: str) -> RemoteKubeconfig:
    """The kubeconfig under ``data[key]`` of a remote secret read from a cluster.

    Every other data key is refused too: istiod reads each key of a remote secret as a
    kubeconfig for a cluster of that name, so an extra key is an extra cluster.
    """
    data = secret.get("data")
    if not isinstance(data, Mapping):
        raise Refused(f"{where}: no data")
    extra = sorted(str(k) for k in data if k != key)
    if extra:
        raise Refused(f"{where}: data key {extra[0][:60]!r} is refused: istiod would read "
                      f"it as another cluster's kubeconfig (expected only {key!r})")
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise Refused(f"{where}: no kubeconfig under data key {key!r}")
    if len(value) > MAX_BYTES * 4 // 3 + 4:
        raise Refused(f"{where}: data key {key!r} is larger than {MAX_BYTES // 1024} KiB")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(f"{where}: data key {key!r} is not base64") from None
    return parse(raw, f"{where} key {key}")
