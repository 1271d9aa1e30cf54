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
- Writes live in :mod:`meshctl.kube.apply`; :func:`wait_for` is the one wait helper.

Error messages name the cluster, the object and the API's reason; they never carry
request bodies, headers or kubeconfig contents (tokens, keys).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import tenacity
import urllib3
import yaml

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

from meshctl import envvars, files
from meshctl.config import Cluster
from meshctl.errors import ClusterError, ConfigError, one_line
from meshctl.kube import connection

# The retry budget of one API call, in seconds.  $MESHCTL_API_DEADLINE changes it, read at
# each call (api_deadline), never at import: a bad value is one line naming the variable.
DEFAULT_DEADLINE = 60.0
DEADLINE_ENV = "MESHCTL_API_DEADLINE"
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


def api_deadline(deadline: float = DEFAULT_DEADLINE) -> float:
    """The budget for one call: ``$MESHCTL_API_DEADLINE`` (seconds) replaces the default
    and caps a shorter one a command chose for itself (``status`` takes 15 s); unset,
    ``deadline`` as given.  A bad value is a :class:`UsageError` naming the variable
    (exit 2), raised when a command first calls the API, not when meshctl is imported."""
    if envvars.text(DEADLINE_ENV) is None:
        return deadline
    override = envvars.number(DEADLINE_ENV, default=DEFAULT_DEADLINE, minimum=0)
    return override if deadline == DEFAULT_DEADLINE else min(deadline, override)


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
        from kubernetes.client import ApiException  # loaded already: self.api is its client

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
        for attempt in retrying(api_deadline(self.deadline)):
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
    # kubernetes is imported when a cluster is first needed: a dry-run, a usage error or a
    # bad cluster file never pays for it
    from kubernetes import config as kube_config
    from kubernetes.client import ApiClient, Configuration
    from kubernetes.config.config_exception import ConfigException

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
    :mod:`meshctl.kube.remote_kubeconfig`.
    """
    from kubernetes.client import ApiClient, Configuration

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
