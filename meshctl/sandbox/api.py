"""A minimal HTTPS client for the sandbox's own API servers (health, nodes, services).

The sandbox talks to the clusters it starts before anything else exists, and from a
small background process (the LoadBalancer loop); plain ``urllib`` with the cluster's
admin client certificate keeps that path free of the ``kubernetes`` client's import
time and configuration rules.  meshctl itself talks to clusters through :mod:`meshctl.kube`.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ApiError(Exception):
    """An HTTP error from the API server: status code and the server's short reason."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {reason[:200]}")


@dataclass(frozen=True)
class Api:
    """One API server reached with the sandbox's admin client certificate."""

    server: str
    ca_file: Path
    cert_file: Path
    key_file: Path

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx

    def request(self, method: str, path: str, body: Any = None, *, timeout: float = 10.0,
                content_type: str = "application/json") -> Any:
        """Send one request; JSON in, JSON (or text) out; ApiError on HTTP errors."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._context(), timeout=timeout) as resp:
                raw = resp.read().decode()
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, _reason(e)) from None
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("POST", path, body, **kw)

    def merge_patch(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json",
                            **kw)

    def ready(self) -> bool:
        """``/readyz`` answers ``ok``: every post-start hook of the API server finished."""
        try:
            return self.get("/readyz", timeout=3.0) == "ok"
        except (OSError, ApiError):
            return False

    def watch(self, path: str, *, timeout_seconds: int = 60) -> Iterator[dict[str, Any]]:
        """Stream watch events (``?watch=1``) until the server closes the stream."""
        sep = "&" if "?" in path else "?"
        url = f"{self.server}{path}{sep}watch=1&timeoutSeconds={timeout_seconds}"
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            resp = urllib.request.urlopen(req, context=self._context(),
                                          timeout=timeout_seconds + 10)
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, _reason(e)) from None
        with resp:
            for line in resp:
                if line.strip():
                    yield json.loads(line)


def _reason(e: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(e.read().decode()).get("message", e.reason))
    except (ValueError, OSError):
        return str(e.reason)
