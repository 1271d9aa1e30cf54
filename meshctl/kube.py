"""Everything meshctl sends to a Kubernetes API server goes through this module.

- One client per cluster, built by ``kubernetes.config`` from the cluster file's
  kubeconfig and context (exec plugins, client certificates, tokens all work).
- One retry policy (tenacity): only 429 (honouring ``Retry-After``), 5xx and
  connection errors are retried, with exponential backoff, jitter and a total
  deadline.  Any other 4xx fails at once: retrying a 403 only hides it.  urllib3's
  own silent retries are switched off so that this policy is the only one.
- Objects travel as plain JSON dicts over the client's REST layer: no per-object
  model classes, so large LISTs stay cheap and the manifests from ``templates/``
  go to the API as they are.
- Writes are server-side apply with ``fieldManager=meshctl`` (:func:`ensure`): it reads
  first and applies only when the live object differs or holds a field meshctl no longer
  sets, so a re-run of bootstrap sends no mutating request.  A field another manager
  owns is a :class:`FieldConflict` naming the field and the manager (exit 1) unless
  forced; an object without meshctl's label is :class:`NotOwned` and never adopted
  silently; :func:`delete` removes only what carries meshctl's label.

Error messages name the cluster, the object and the API's reason; they never carry
request bodies, headers or kubeconfig contents (tokens, keys).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import tenacity
import urllib3
import yaml
from kubernetes import config as kube_config
from kubernetes.client import ApiClient, ApiException, Configuration
from kubernetes.config.config_exception import ConfigException

from meshctl import connection, files, ownership
from meshctl.config import Cluster
from meshctl.errors import CheckFailed, ClusterError, ConfigError, one_line
from meshctl.ownership import FIELD_MANAGER

DEFAULT_DEADLINE = float(os.environ.get("MESHCTL_API_DEADLINE", "60"))
REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read
MAX_RETRY_AFTER = 30.0
PAGE_SIZE = 500


# --- errors ------------------------------------------------------------------------


class ApiError(ClusterError):
    """The API server answered with an error status."""

    def __init__(self, message: str, *, status: int, reason: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class NotFound(ApiError):
    """404: the object (or its kind) does not exist."""


class Conflict(ApiError):
    """409: already exists, or the resourceVersion moved on."""


class Forbidden(ApiError):
    """401/403: the credentials may not do this."""


class Unreachable(ClusterError):
    """No HTTP answer at all: connection refused, reset, timed out."""


def _error_for(status: int) -> type[ApiError]:
    if status == 404:
        return NotFound
    if status == 409:
        return Conflict
    if status in (401, 403):
        return Forbidden
    return ApiError


def is_transient(exc: BaseException) -> bool:
    """Worth another try: throttling, server-side failures and dropped connections."""
    if isinstance(exc, Unreachable):
        return True
    return isinstance(exc, ApiError) and (exc.status == 429 or exc.status >= 500)


# --- the retry policy ----------------------------------------------------------------


class _WaitRetryAfter(tenacity.wait.wait_base):
    """Honour a 429's ``Retry-After``; otherwise exponential backoff, full jitter."""

    def __init__(self) -> None:
        self.fallback = tenacity.wait_random_exponential(multiplier=0.2, max=5.0)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome else None
        if isinstance(exc, ApiError) and exc.retry_after is not None:
            return min(exc.retry_after, MAX_RETRY_AFTER)
        return self.fallback(retry_state)


def retrying(deadline: float = DEFAULT_DEADLINE) -> tenacity.Retrying:
    """The one retry policy for API calls (see the module docstring)."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=_WaitRetryAfter(),
        stop=tenacity.stop_after_delay(deadline),
        reraise=True,
    )


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


# --- clients -------------------------------------------------------------------------


def kubeconfig_path(cluster: Cluster) -> str | None:
    """The cluster file's kubeconfig, else ``None`` ($KUBECONFIG, then ~/.kube/config)."""
    return str(Path(cluster.kubeconfig).expanduser()) if cluster.kubeconfig else None


@dataclass
class Kube:
    """One cluster's API, with the retry policy and a count of what was sent."""

    cluster: str
    api: ApiClient
    deadline: float = DEFAULT_DEADLINE
    counts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def server(self) -> str:
        return self.api.configuration.host

    @property
    def mutations(self) -> int:
        return sum(n for verb, n in self.counts.items() if verb not in ("GET", "HEAD"))

    # one HTTP request, no retry
    def _send(self, method: str, path: str, *, body: Any = None, query: Mapping | None = None,
              content_type: str | None = None, what: str = "") -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        url_path = path + (("?" + urlencode(query)) if query else "")
        _, url, headers, payload, _ = self.api.param_serialize(
            method=method, resource_path=url_path, header_params=headers,
            body=body, auth_settings=["BearerToken"])
        with self._lock:
            self.counts[method] = self.counts.get(method, 0) + 1
        try:
            response = self.api.call_api(method, url, header_params=headers, body=payload,
                                         _request_timeout=REQUEST_TIMEOUT)
            raw = response.read()
        except (urllib3.exceptions.HTTPError, OSError, ApiException) as e:
            # ApiException here is the REST layer's status 0: TLS failed (its ssl error is
            # down the chain); connection.explain says which, in words, and if retrying helps
            cause, transient = connection.explain(e)
            kind = Unreachable if transient else connection.ConnectFailed
            raise kind(f"{self.cluster}: {what or path}: API server {self.server}: "
                       f"{cause}") from None
        if 200 <= response.status < 300:
            return json.loads(raw) if raw else None
        reason = _reason(raw, response.status)
        cls = _error_for(response.status)
        raise cls(f"{self.cluster}: {what or method + ' ' + path}: {reason}",
                  status=response.status, reason=reason,
                  retry_after=_parse_retry_after(response.getheader("Retry-After")))

    def request(self, method: str, path: str, *, body: Any = None,
                query: Mapping | None = None, content_type: str | None = None,
                what: str = "") -> Any:
        """One API call under the retry policy; JSON in and out."""
        for attempt in retrying(self.deadline):
            with attempt:
                return self._send(method, path, body=body, query=query,
                                  content_type=content_type, what=what)
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, path: str, *, what: str = "") -> dict | None:
        """The object at ``path``, or ``None`` when it does not exist."""
        try:
            return self.request("GET", path, what=what)
        except NotFound:
            return None

    def pages(self, path: str, *, query: Mapping | None = None, limit: int = PAGE_SIZE,
              what: str = "") -> Iterator[dict]:
        """A paginated LIST, one page (a JSON dict) at a time, following continue tokens."""
        params = {**(query or {}), "limit": limit}
        while True:
            page = self.request("GET", path, query=params, what=what or f"list {path}")
            yield page
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            params = {**params, "continue": token}

    def items(self, path: str, **kwargs: Any) -> Iterator[dict]:
        for page in self.pages(path, **kwargs):
            yield from page.get("items") or []


def client(cluster: Cluster, *, deadline: float = DEFAULT_DEADLINE) -> Kube:
    """A :class:`Kube` for the cluster file's kubeconfig and context.

    The operator's own kubeconfig goes through ``kubernetes.config`` (exec plugins and
    client certificates must work there); it writes ``client-key-data`` to files,
    because Python's ``ssl`` loads keys only from files, so they go to meshctl's 0700
    per-process scratch folder (:func:`meshctl.files.scratch_dir`), never to /tmp.
    A kubeconfig read from a cluster never comes here: see :func:`client_from`.

    A missing kubeconfig or context is a configuration error (exit 2) naming the
    cluster file; the kubeconfig's contents never appear in the message.
    """
    path = kubeconfig_path(cluster)
    if path and not Path(path).is_file():
        why = "is a folder" if Path(path).is_dir() else "no such file"
        raise ConfigError(f"{cluster.source}: key 'kubeconfig': {path}: {why}")
    try:
        cfg = Configuration()
        kube_config.load_kube_config(config_file=path, context=cluster.context,
                                     client_configuration=cfg, persist_config=False,
                                     temp_file_path=str(files.scratch_dir()))
        api = ApiClient(configuration=cfg)
    except (ConfigException, yaml.YAMLError, ValueError, TypeError, AttributeError) as e:
        text = str(e)
        if "context" in text.lower() and cluster.context in text:
            detail = f"context {cluster.context!r} not found"
        else:
            detail = "cannot load it"
        where = path or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise ConfigError(f"{cluster.source}: key 'context': kubeconfig {where}: "
                          f"{detail}") from None
    except OSError as e:
        raise ConfigError(f"{cluster.source}: key 'kubeconfig': cannot read "
                          f"{path or '$KUBECONFIG'}: {e.strerror}") from None
    api.configuration.retries = False  # our policy is the only retry policy
    return Kube(cluster=cluster.name, api=api, deadline=deadline)


def client_from(cluster: str, *, server: str, ca_pem: bytes, token: str,
                tls_server_name: str | None = None,
                deadline: float = DEFAULT_DEADLINE) -> Kube:
    """A :class:`Kube` built by hand from values a cluster handed us (a remote secret).

    No ``kubernetes.config`` loader sees them, so nothing can name a command to run or
    a file to read: the server, its CA (in memory, no file), an optional TLS server
    name and a bearer token are all there is.  Parse first with
    :mod:`meshctl.remote_kubeconfig`.
    """
    cfg = Configuration(host=server, ca_cert_data=ca_pem.decode("ascii"),
                        api_key={"BearerToken": token},
                        api_key_prefix={"BearerToken": "Bearer"},
                        tls_server_name=tls_server_name or None)
    cfg.verify_ssl = True
    cfg.retries = False  # our policy is the only retry policy
    return Kube(cluster=cluster, api=ApiClient(configuration=cfg), deadline=deadline)


def _reason(raw: bytes, status: int) -> str:
    """The API's own short message (a Status object), else the HTTP status."""
    try:
        doc = json.loads(raw)
        message = doc.get("message") or doc.get("reason")
    except (ValueError, AttributeError):
        message = None
    return one_line(f"{message} (HTTP {status})" if message else f"HTTP {status}", 300)


# --- paths and objects ---------------------------------------------------------------

# kind -> (plural, namespaced); apiVersion comes from the object itself.
KINDS: dict[str, tuple[str, bool]] = {
    "Namespace": ("namespaces", False),
    "Secret": ("secrets", True),
    "ConfigMap": ("configmaps", True),
    "Service": ("services", True),
    "ServiceAccount": ("serviceaccounts", True),
    "Pod": ("pods", True),
    "Deployment": ("deployments", True),
    "ClusterRole": ("clusterroles", False),
    "ClusterRoleBinding": ("clusterrolebindings", False),
    "Role": ("roles", True),
    "RoleBinding": ("rolebindings", True),
    "Gateway": ("gateways", True),
    "VirtualService": ("virtualservices", True),
    "DestinationRule": ("destinationrules", True),
    "CustomResourceDefinition": ("customresourcedefinitions", False),
    "MutatingWebhookConfiguration": ("mutatingwebhookconfigurations", False),
    "ValidatingWebhookConfiguration": ("validatingwebhookconfigurations", False),
}


def collection_path(api_version: str, kind: str, namespace: str | None = None) -> str:
    """``/api/v1/namespaces/ns/secrets`` and friends."""
    plural, namespaced = KINDS[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespaced and namespace:
        return f"{base}/namespaces/{quote(namespace)}/{plural}"
    return f"{base}/{plural}"


def object_path(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return (collection_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
            + "/" + quote(meta["name"]))


def describe(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj['kind']} {ns}{meta['name']}"


def contains(live: Any, desired: Any) -> bool:
    """True when every field of ``desired`` is in ``live`` with the same value.

    Mappings are compared key by key (extra live keys, such as defaults the API
    server adds, are fine); lists and scalars must be equal.
    """
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and contains(live[k], v) for k, v in desired.items())
    return live == desired


UNREAD: Any = object()  # ``ensure(live=...)`` default: the caller has not read it


class FieldConflict(CheckFailed):
    """Server-side apply refused: another field manager owns a field meshctl would set."""


class NotOwned(CheckFailed):
    """The object exists and was not made by meshctl: meshctl leaves it as it is."""


def _field_paths(fields: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple]:
    """Leaf paths of a ``fieldsV1`` set, stopping at list entries (``k:``/``v:``/``i:``).

    A list is compared as a whole by :func:`contains`, so here it is one leaf.
    """
    out: set[tuple] = set()
    for key, sub in fields.items():
        if key == ".":
            continue
        if not key.startswith("f:"):
            out.add(prefix)  # an entry of a list: the list is the leaf
            continue
        path = (*prefix, key[2:])
        out |= _field_paths(sub, path) if sub else {path}
    return out


def _object_paths(obj: Any, prefix: tuple[str, ...] = ()) -> set[tuple]:
    """Leaf paths of a desired object, in the shape of :func:`_field_paths`."""
    if not isinstance(obj, Mapping) or not obj:
        return {prefix}
    out: set[tuple] = set()
    for key, sub in obj.items():
        out |= _object_paths(sub, (*prefix, key))
    return out


def applied_fields(live: Mapping[str, Any], manager: str = FIELD_MANAGER) -> set[tuple] | None:
    """The fields ``manager`` owns through server-side apply, or ``None`` if it owns none."""
    entries = [m for m in (live.get("metadata") or {}).get("managedFields") or []
               if m.get("manager") == manager and m.get("operation") == "Apply"]
    if not entries:
        return None
    return set().union(*(_field_paths(m.get("fieldsV1") or {}) for m in entries))


def in_sync(live: Mapping[str, Any] | None, obj: Mapping[str, Any]) -> bool:
    """True when applying ``obj`` would change nothing: every field is there with our
    value, meshctl already owns it through apply, and owns no field ``obj`` dropped."""
    if live is None:
        return False
    desired = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    if not contains(live, desired):
        return False
    owned = applied_fields(live)
    if owned is None:
        return False
    wanted = _object_paths(desired)
    # every owned leaf must still be wanted, or lie under a wanted list
    return all(any(path[:len(w)] == w for w in wanted) for path in owned)


# "conflict with "kubectl" using v1: .metadata.labels.a" or, for several fields,
# "conflicts with "helm" using v1: - .metadata.labels.a - .spec.b" (whitespace folded)
_CONFLICT = re.compile(r'conflicts? with "(?P<manager>[^"]+)"(?: using [\w./]+)?:'
                       r'(?P<fields>(?:\s*-?\s*\.\S+)+)')


def conflicts(reason: str) -> list[tuple[str, str]]:
    """(manager, field) pairs from an apply's 409 message."""
    return [(m["manager"], field.rstrip(","))
            for m in _CONFLICT.finditer(reason)
            for field in m["fields"].replace(" - ", " ").split() if field.startswith(".")]


def apply(kube: Kube, obj: Mapping[str, Any], *, force: bool = False) -> str:
    """Server-side apply ``obj`` as ``fieldManager=meshctl``; no read, always one write.

    A field another manager owns is a :class:`FieldConflict` naming the field and the
    manager, unless ``force``, which takes it over and says so in the returned text.
    """
    path, what = object_path(obj), describe(obj)
    query = {"fieldManager": FIELD_MANAGER}
    try:
        kube.request("PATCH", path, body=dict(obj), query=query,
                     content_type="application/apply-patch+yaml", what=f"apply {what}")
        return "applied"
    except Conflict as e:
        found = conflicts(e.reason)
        if not found:
            raise
        named = ", ".join(f"{field} (owned by {manager})" for manager, field in found)
        if not force:
            raise FieldConflict(f"{kube.cluster}: {what}: {named}",
                                hint="another tool manages this field; change it there, or "
                                     "re-run with --force to take it over") from None
        kube.request("PATCH", path, body=dict(obj), query={**query, "force": "true"},
                     content_type="application/apply-patch+yaml", what=f"apply {what}")
        return f"took over {named}"


def ensure(kube: Kube, obj: Mapping[str, Any], *, live: Any = UNREAD,
           force: bool = False) -> str:
    """Bring ``obj`` about by server-side apply; returns created/updated/unchanged.

    Reads first and compares (:func:`in_sync`), so a converged cluster sees GETs only.
    An object ``obj`` marks as meshctl's that exists without meshctl's label belongs
    to someone else: :class:`NotOwned`, unless ``force`` (which adopts it, and takes over
    conflicting fields).  A caller that has just read the object passes it as ``live``
    (``None``: absent) so it is not read twice.
    """
    path, what = object_path(obj), describe(obj)
    if live is UNREAD:
        live = kube.get(path, what=f"read {what}")
    if live is not None and ownership.is_managed(obj) and not ownership.is_managed(live) \
            and not force:
        raise NotOwned(f"{kube.cluster}: {what} exists and was not made by meshctl; "
                       "left as it is",
                       hint="remove or rename it, or re-run with --force to take it over")
    if in_sync(live, obj):
        return "unchanged"
    result = apply(kube, obj, force=force)
    verb = "created" if live is None else "updated"
    return verb if result == "applied" else f"{verb}; {result}"


def delete(kube: Kube, obj: Mapping[str, Any], *, only_managed: bool = True) -> bool:
    """Delete ``obj`` if it exists and (unless told otherwise) meshctl made it.

    True when something was deleted.  An object without meshctl's label is left alone:
    every delete asks "did meshctl make this?".
    """
    path = object_path(obj)
    live = kube.get(path, what=f"read {describe(obj)}")
    if live is None or (only_managed and not ownership.is_managed(live)):
        return False
    try:
        kube.request("DELETE", path, what=f"delete {describe(obj)}",
                     body={"apiVersion": "v1", "kind": "DeleteOptions",
                           "preconditions": {"uid": live["metadata"]["uid"]}})
    except NotFound:
        return False
    return True


# --- waits ----------------------------------------------------------------------------


class WaitTimeout(ClusterError):
    """A wait ran out of time; says what it waited for and the last reason."""


def wait_for(what: str, check: Callable[[], str | None], *, timeout: float,
             interval: float = 1.0,
             progress: Callable[[str], None] | None = None) -> None:
    """Poll ``check`` until it returns ``None`` (done) or ``timeout`` passes.

    ``check`` returns why it is not done yet; transient API errors count as
    "not yet".  The one wait helper, so every wait fails the same way:
    ``timeout while waiting for X, last: …``.
    """
    last = ["not checked yet"]

    def attempt() -> str | None:
        try:
            reason = check()
        except (Unreachable, ApiError) as e:
            if isinstance(e, ApiError) and not is_transient(e):
                raise
            reason = str(e)
        if reason and progress:
            progress(reason)
        last[0] = reason or ""
        return reason

    try:
        tenacity.Retrying(retry=tenacity.retry_if_result(lambda r: r is not None),
                          stop=tenacity.stop_after_delay(timeout),
                          wait=tenacity.wait_fixed(interval))(attempt)
    except tenacity.RetryError:
        raise WaitTimeout(f"timeout after {timeout:.0f}s while waiting for {what}, "
                          f"last: {last[0]}") from None
