"""What a kubelet does for one container before and while it runs, minus the container.

The sandbox runs istiod's real binary as a host process (``sandbox.istiod``).  For it to
behave as it does in a pod, it must see what kubelet would give the container:
- **volumes** at their mount paths.  istiod reads them as paths relative to its working
  directory (``./etc/cacerts``, ``./var/run/secrets/...``), so each process gets its own
  folder standing in for the container's root, and a volume mounted at ``/etc/cacerts``
  lands in ``<root>/etc/cacerts``.  Secret, ConfigMap, projected (ServiceAccount token,
  ConfigMap, Secret, downward API) and emptyDir volumes are written the way kubelet's
  AtomicWriter does: files live in a timestamped folder, ``..data`` points at it, each
  key is a symlink through ``..data``; an update writes a new folder and swaps
  ``..data`` with one rename, which is what file watchers such as istiod's cacerts
  watcher are written for;
- **environment** from ``env`` and ``envFrom``, with ``fieldRef`` and
  ``resourceFieldRef`` resolved as kubelet resolves them (a missing limit means the
  node's allocatable) and ``$(VAR)`` references expanded;
- **ServiceAccount tokens** from the TokenRequest API, bound to the pod, refreshed when
  80 % of their lifetime has passed (kubelet's rule).

Pure functions plus a writer; the API calls go through a ``Source`` the caller gives.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshctl.sandbox.api import Api, ApiError

DATA_DIR = "..data"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_REFRESH = 0.8  # kubelet refreshes a projected token after 80 % of its lifetime


class NotReady(Exception):
    """A non-optional Secret or ConfigMap is missing: kubelet would keep the pod waiting."""


@dataclass
class Source:
    """Reads what volumes and env refer to, from one cluster's API (admin identity)."""

    api: Api
    tokens: dict[str, float] = field(default_factory=dict)  # token path -> refresh time

    def object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.api.get(f"/api/v1/namespaces/{namespace}/{kind}/{name}"))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def token(self, pod: dict[str, Any], audience: str | None, seconds: int) -> tuple[str, float]:
        """A token for the pod's ServiceAccount, bound to the pod; (token, refresh-at)."""
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {"expirationSeconds": seconds,
                                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                                                   "name": meta["name"], "uid": meta["uid"]}}
        if audience:
            spec["audiences"] = [audience]
        out = self.api.post(f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token",
                            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                             "spec": spec})
        expires = datetime.fromisoformat(out["status"]["expirationTimestamp"].replace("Z",
                                                                                     "+00:00"))
        lifetime = max(expires.timestamp() - time.time(), 60.0)
        return str(out["status"]["token"]), time.time() + TOKEN_REFRESH * lifetime


# --- volumes ----------------------------------------------------------------------------

def _decode(obj: dict[str, Any], kind: str) -> dict[str, bytes]:
    import base64

    if kind == "secrets":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


def _select(data: dict[str, bytes], items: list[dict[str, Any]] | None) -> dict[str, bytes]:
    """``items`` maps keys to paths (only those keys); without it every key is a file."""
    if not items:
        return dict(data)
    return {i["path"]: data[i["key"]] for i in items if i["key"] in data}


def _ref(pod: dict[str, Any], path: str) -> str:
    """A downward-API fieldRef value (the fields kubelet supports)."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
              "metadata.uid": meta.get("uid"),
              "spec.serviceAccountName": spec.get("serviceAccountName"),
              "spec.nodeName": spec.get("nodeName"), "status.podIP": status.get("podIP"),
              "status.hostIP": status.get("hostIP")}
    if path in simple:
        return str(simple[path] or "")
    if m := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        found = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(found.items()))
    return ""


def _projected(pod: dict[str, Any], vol: dict[str, Any], src: Source,
               token_paths: list[tuple[str, str | None, int]]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    ns = pod["metadata"]["namespace"]
    for s in vol.get("sources") or []:
        if "serviceAccountToken" in s:
            t = s["serviceAccountToken"]
            token_paths.append((t["path"], t.get("audience"), int(t.get("expirationSeconds",
                                                                          3600))))
        for kind, key in (("configmaps", "configMap"), ("secrets", "secret")):
            if key in s:
                obj = _referenced(src, kind, ns, s[key])
                if obj is None:
                    continue
                out.update(_select(_decode(obj, kind), s[key].get("items")))
        if "downwardAPI" in s:
            out.update(_downward(pod, s["downwardAPI"]))
    return out


def _downward(pod: dict[str, Any], d: dict[str, Any]) -> dict[str, bytes]:
    return {i["path"]: _ref(pod, i["fieldRef"]["fieldPath"]).encode()
            for i in d.get("items") or [] if "fieldRef" in i}


@dataclass
class VolumeState:
    """What one volume holds now (digest) and which of its files are tokens."""

    digest: str = ""
    token_data: dict[str, bytes] = field(default_factory=dict)
    refresh_at: float = math.inf


def volume_files(pod: dict[str, Any], vol: dict[str, Any], src: Source,
                 state: VolumeState) -> dict[str, bytes] | None:
    """The files a volume should hold now, or None for kinds the sandbox does not write.

    Tokens are requested only when missing or due (kubelet's refresh rule), so a
    re-sync every few seconds costs GETs of Secrets/ConfigMaps, not token writes.
    """
    ns = pod["metadata"]["namespace"]
    if "emptyDir" in vol:
        return {}
    if "downwardAPI" in vol:
        return _downward(pod, vol["downwardAPI"])
    for kind, key, name_key in (("secrets", "secret", "secretName"),
                                ("configmaps", "configMap", "name")):
        if key in vol:
            obj = src.object(kind, ns, vol[key][name_key])
            if obj is None:
                if not vol[key].get("optional"):
                    raise NotReady(f"{kind[:-1]} {ns}/{vol[key][name_key]} not found")
                return {}
            return _select(_decode(obj, kind), vol[key].get("items"))
    if "projected" in vol:
        wanted: list[tuple[str, str | None, int]] = []
        files = _projected(pod, vol["projected"], src, wanted)
        if wanted and (time.time() >= state.refresh_at
                       or any(path not in state.token_data for path, _, _ in wanted)):
            state.refresh_at = math.inf
            for path, audience, seconds in wanted:
                token, refresh = src.token(pod, audience, seconds)
                state.token_data[path] = token.encode()
                state.refresh_at = min(state.refresh_at, refresh)
        for path, _, _ in wanted:
            files[path] = state.token_data[path]
        return files
    return None


def write_volume(target: Path, files: dict[str, bytes], state: VolumeState,
                 *, mode: int = 0o644) -> bool:
    """Write ``files`` into ``target`` as kubelet's AtomicWriter does; True if it changed.

    New content goes to a fresh ``..<timestamp>`` folder; ``..data`` is swapped to it
    with one rename, so a reader sees the old set or the new set, never a mix.
    """
    digest = hashlib.sha256(json.dumps({k: v.hex() for k, v in sorted(files.items())})
                            .encode()).hexdigest()
    if digest == state.digest and (target / DATA_DIR).exists():
        return False
    target.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    fresh = target / stamp
    fresh.mkdir(mode=0o755)
    for rel, data in files.items():
        path = fresh / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    old = os.readlink(target / DATA_DIR) if (target / DATA_DIR).is_symlink() else None
    tmp = target / "..data_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(stamp)
    os.replace(tmp, target / DATA_DIR)
    tops = {Path(rel).parts[0] for rel in files}
    for top in tops:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(Path(DATA_DIR) / top)
    for entry in target.iterdir():
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in tops:
            entry.unlink()
    if old and old != stamp:
        shutil.rmtree(target / old, ignore_errors=True)
    state.digest = digest
    return True


def mount_target(root: Path, mount_path: str) -> Path:
    """Where a container path lives under the process's stand-in root folder."""
    return root / mount_path.lstrip("/")


# --- environment --------------------------------------------------------------------------

_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str) -> float:
    m = _QUANTITY.match(str(value))
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a quantity: {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def _resource(container: dict[str, Any], node: dict[str, Any], ref: dict[str, Any]) -> str:
    """resourceFieldRef as kubelet resolves it: limits default to node allocatable."""
    kind, _, name = ref["resource"].partition(".")
    res = container.get("resources") or {}
    value = (res.get(kind) or {}).get(name)
    if value is None and kind == "limits":
        value = ((node.get("status") or {}).get("allocatable") or {}).get(name)
    if value is None:
        return "0"
    divisor = quantity(ref.get("divisor") or "1")
    return str(math.ceil(quantity(value) / divisor))


def expand(text: str, env: dict[str, str]) -> str:
    """``$(VAR)`` → its value if defined, ``$$`` → ``$``, anything else kept (kubelet's rule)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def _referenced(src: Source, kind: str, ns: str, ref: dict[str, Any]) -> dict[str, Any] | None:
    """The ConfigMap or Secret a volume or envFrom names; a missing one is "not ready"
    (kubelet waits for it) unless the reference is optional."""
    obj = src.object(kind, ns, ref["name"])
    if obj is None and not ref.get("optional"):
        raise NotReady(f"{kind[:-1]} {ns}/{ref['name']} not found")
    return obj


def container_env(pod: dict[str, Any], container: dict[str, Any], node: dict[str, Any],
                  src: Source) -> dict[str, str]:
    """The container's environment: envFrom first, then env, in order (later wins)."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for ef in container.get("envFrom") or []:
        for kind, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            if key in ef:
                obj = _referenced(src, kind, ns, ef[key])
                if obj is None:
                    continue
                for k, v in _decode(obj, kind).items():
                    env[ef.get("prefix", "") + k] = v.decode()
    for e in container.get("env") or []:
        if "valueFrom" not in e:
            env[e["name"]] = expand(e.get("value", ""), env)
            continue
        vf = e["valueFrom"]
        if "fieldRef" in vf:
            env[e["name"]] = _ref(pod, vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            env[e["name"]] = _resource(container, node, vf["resourceFieldRef"])
        else:
            kind, key = (("configmaps", "configMapKeyRef") if "configMapKeyRef" in vf
                         else ("secrets", "secretKeyRef"))
            ref = vf[key]
            obj = src.object(kind, ns, ref["name"])
            data = _decode(obj, kind) if obj else {}
            if ref["key"] in data:
                env[e["name"]] = data[ref["key"]].decode()
            elif not ref.get("optional"):
                raise NotReady(f"{kind[:-1]} {ns}/{ref['name']} key {ref['key']} not found")
    return env


def container_port(container: dict[str, Any], port: int | str) -> int | None:
    """A probe's or Service's targetPort: a number, or the name of a containerPort."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    return None

