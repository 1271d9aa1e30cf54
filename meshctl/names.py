"""The shapes Kubernetes and Istio accept for names, label values, addresses and URLs.

A value from ``mesh.yaml`` or a cluster file ends up in an object name, a label value or
a field the API server validates.  Checked only there, a bad value is a 422 halfway
through a bootstrap, after other clusters were already written.  These predicates let
:mod:`meshctl.config` refuse it first, as one line naming the file and the key.  Pure:
no I/O, no messages (the caller knows the file and the key).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

# A DNS-1123 label: namespace names, cluster names, Istio revisions.
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A Kubernetes label value: the network becomes the topology.istio.io/network label, the
# meshID the meshctl.io/mesh label on everything meshctl makes.
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
# istioctl labels what it installs with install.operator.istio.io/owning-resource: <the
# IstioOperator's name>, a label value of at most 63; the longest name meshctl gives one is
# meshctl-eastwest-<cluster>, so a cluster name has 63 - 17 characters left.
CLUSTER_NAME_MAX = 63 - len("meshctl-eastwest-")
# istiod-<revision> is a Service name (a DNS-1035 label, at most 63 characters).
REVISION_MAX = 63 - len("istiod-")


def dns_label(value: str, *, longest: int = 63) -> bool:
    return bool(DNS1123_LABEL.match(value)) and len(value) <= longest


def label_value(value: str) -> bool:
    return bool(LABEL_VALUE.match(value))


def dns_name(value: str) -> bool:
    """DNS-1123 labels joined by dots, at most 253 characters: Istio's rule for a trust
    domain, and a host name Kubernetes accepts (an ExternalName, a gateway host)."""
    return len(value) <= 253 and all(DNS1123_LABEL.match(part) for part in value.split("."))


def address(value: str) -> bool:
    """An IP address (v4 or v6) or a DNS name."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return dns_name(value)
    return True


def https_url_problem(value: str) -> str | None:
    """Why ``value`` is not an API server URL a remote secret may carry, or ``None``.

    The same rule as the reader of remote secrets (:mod:`meshctl.kube.remote_kubeconfig`):
    https, a host, a valid port, no credentials, query or fragment.
    """
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        return "has a bad port"
    if parts.scheme != "https" or not parts.hostname:
        return "is not an https URL (e.g. https://203.0.113.10:6443)"
    if parts.username or parts.password or parts.query or parts.fragment:
        return "carries credentials, a query or a fragment (give https://host[:port][/path])"
    return None


def shown(value: str, limit: int = 70) -> str:
    """``value`` for a one-line message: its repr, cut after ``limit`` characters."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "…"
