"""The Kubernetes API, as meshctl talks to it: one client, one retry policy, one way to write.

Everything meshctl sends to an API server goes through this package.  Callers use it as
``from meshctl import kube`` and reach the names re-exported here:

- :mod:`~meshctl.kube.client`: :class:`Kube` (GET/LIST/PATCH/DELETE as plain JSON dicts),
  :func:`client` (from a cluster file's kubeconfig and context, via ``kubernetes.config``),
  :func:`client_from` (server + CA + token only, for credentials read from a cluster),
  :func:`retrying` (tenacity: 429, 5xx and connection errors only), :func:`wait_for`,
  and the errors :class:`ApiError`, :class:`NotFound`, :class:`Conflict`,
  :class:`Forbidden`, :class:`Unreachable`, :class:`WaitTimeout`.
- :mod:`~meshctl.kube.apply`: :func:`ensure` (compare first, then server-side apply as
  ``fieldManager=meshctl``), :func:`apply`, :func:`delete` (only what meshctl labelled),
  :func:`in_sync`, :func:`conflicts`, :class:`FieldConflict`, :class:`NotOwned`.
- :mod:`~meshctl.kube.connection`: :func:`~meshctl.kube.connection.explain` turns TLS,
  DNS and socket failures into one line; :func:`~meshctl.kube.connection.is_loopback`.
- :mod:`~meshctl.kube.remote_kubeconfig`: the allow-list parser for kubeconfigs read from
  a cluster (one server, its CA, an inline token); it never reaches a loader that could
  run an exec plugin or read a local file.
- :mod:`~meshctl.kube.istiod`: istiod's debug endpoints through an API-server
  port-forward to its pod, as istioctl reads them (imported as a module, not re-exported).

Imports only :mod:`meshctl.config`, :mod:`meshctl.files`, :mod:`meshctl.ownership` and
:mod:`meshctl.errors` from the rest of meshctl.
"""

from meshctl.kube.apply import (
    KINDS,
    UNREAD,
    FieldConflict,
    NotOwned,
    apply,
    collection_path,
    conflicts,
    contains,
    delete,
    describe,
    ensure,
    in_sync,
    not_ours,
    not_ours_message,
    object_path,
    predicted_conflicts,
)
from meshctl.kube.client import (
    DEFAULT_DEADLINE,
    ApiError,
    Conflict,
    Forbidden,
    Kube,
    NotFound,
    Unreachable,
    WaitTimeout,
    client,
    client_from,
    is_transient,
    kubeconfig_path,
    retrying,
    wait_for,
)

__all__ = [
    "DEFAULT_DEADLINE", "KINDS", "UNREAD", "ApiError", "Conflict", "FieldConflict",
    "Forbidden", "Kube", "NotFound", "NotOwned", "Unreachable", "WaitTimeout", "apply",
    "client", "client_from", "collection_path", "conflicts", "contains", "delete",
    "describe", "ensure", "in_sync", "is_transient", "kubeconfig_path", "not_ours",
    "not_ours_message", "object_path", "predicted_conflicts", "retrying", "wait_for",
]
