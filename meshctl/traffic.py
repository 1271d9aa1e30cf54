"""Canary routing: a DestinationRule with one subset per version, a VirtualService by weight.

Why it is shaped like this:
- Options are parsed and validated before any cluster is touched (istioctl's
  ``prepare()`` habit): weights are integer percentages that must add up to 100,
  because Istio would silently normalise any total and meshctl asks for what the
  user means; versions are DNS-1123 labels because they become subset names.
- Building the objects is pure (``objects``), from ``templates/``; the live half
  (``apply``) checks facts first (the Service exists, which versions have pods,
  whether meshctl manages what is already there) and only then writes.
- Writes go through ``kube.ensure``: the same weights again is GETs only, new weights
  are a merge patch of the same object (same uid).  An object without meshctl's
  managed-by label belongs to someone else and is refused unless ``--force``, which
  replaces its spec wholesale (a merge patch would keep their stray fields).
- In the sandbox the API server validates the objects against Istio's CRD schemas;
  Istio's own validating webhook is answered by a stand-in that admits everything,
  so Istio's semantic validation does not run there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshctl import kube, manifests
from meshctl.config import Config
from meshctl.errors import CheckFailed, UsageError

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "meshctl"
API_VERSION = "networking.istio.io/v1"
VERSION_LABEL = "version"
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


# --- options (pure) ---------------------------------------------------------------------


def _label(value: str, what: str) -> str:
    if not DNS1123_LABEL.match(value or ""):
        raise UsageError(f"{what} {value!r} is not a DNS-1123 label "
                         "(lower-case letters, digits and '-', at most 63)")
    return value


def parse_weights(text: str) -> tuple[tuple[str, int], ...]:
    """``v1=80,v2=20`` → ``(("v1", 80), ("v2", 20))``, or one :class:`UsageError` line."""
    if not text or not text.strip():
        raise UsageError("--weights is required, e.g. --weights v1=80,v2=20")
    pairs: list[tuple[str, int]] = []
    for part in text.split(","):
        version, sep, raw = part.strip().partition("=")
        if not sep:
            raise UsageError(f"--weights: {part.strip()!r} is not VERSION=PERCENT")
        _label(version.strip(), "--weights: version")
        raw = raw.strip()
        if not re.fullmatch(r"[+-]?\d+", raw):
            raise UsageError(f"--weights: {version.strip()}={raw}: the weight must be an "
                             "integer percentage")
        weight = int(raw)
        if not 0 <= weight <= 100:
            raise UsageError(f"--weights: {version.strip()}={raw}: the weight must be "
                             "between 0 and 100")
        if any(v == version.strip() for v, _ in pairs):
            raise UsageError(f"--weights: version {version.strip()} is given twice")
        pairs.append((version.strip(), weight))
    total = sum(w for _, w in pairs)
    if total != 100:
        raise UsageError(f"--weights {text.strip()}: the weights add up to {total}, not 100 "
                         "(Istio would rescale them; say what you mean)")
    return tuple(pairs)


@dataclass(frozen=True)
class Options:
    """What ``canary`` was asked to do, validated (see :func:`options`)."""

    cluster: str
    namespace: str
    service: str
    weights: tuple[tuple[str, int], ...]  # empty with ``promote``: filled from the cluster
    promote: str | None = None
    force: bool = False

    @property
    def host(self) -> str:
        return f"{self.service}.{self.namespace}.svc.cluster.local"


def options(config: Config, *, cluster: str | None, namespace: str | None,
            service: str | None, weights: str | None, promote: str | None = None,
            force: bool = False) -> Options:
    """Validate the flags before any cluster is contacted (exit 2, one line each)."""
    if not cluster:
        raise UsageError("--cluster is required")
    config.cluster(cluster, flag="--cluster")
    if not namespace:
        raise UsageError("--namespace is required")
    if not service:
        raise UsageError("--service is required")
    _label(namespace, "--namespace")
    _label(service, "--service")
    if promote is not None:
        if weights:
            raise UsageError("--promote and --weights exclude each other "
                             "(--promote V is --weights V=100)")
        return Options(cluster, namespace, service, ((_label(promote, "--promote"), 100),),
                       promote=promote, force=force)
    return Options(cluster, namespace, service, parse_weights(weights or ""), force=force)


# --- objects (pure) ---------------------------------------------------------------------


def objects(opts: Options, *, keep_subsets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The DestinationRule and VirtualService for ``opts``, as API-ready dicts.

    ``keep_subsets``: versions already in meshctl's DestinationRule that a promotion
    keeps as subsets (weight 0 in no route), so rolling back stays one command.
    """
    # sorted, so a promotion that keeps the same versions rewrites no DestinationRule
    subsets = sorted({v for v, _ in opts.weights} | set(keep_subsets))
    ctx = {"name": opts.service, "namespace": opts.namespace, "host": opts.host}
    dr = yaml.safe_load(manifests.render("destination-rule.yaml.j2", subsets=subsets, **ctx))
    vs = yaml.safe_load(manifests.render("virtual-service.yaml.j2",
                                         weights=list(opts.weights), **ctx))
    return [dr, vs]


def to_yaml(objs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False)


# --- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """What ``canary`` did: per object created/updated/unchanged/replaced, and warnings."""

    cluster: str
    namespace: str
    service: str
    host: str
    weights: tuple[tuple[str, int], ...]
    actions: tuple[tuple[str, str], ...]  # (object, action)
    warnings: tuple[str, ...] = field(default=())
    promoted: str | None = None
    writes: int = 0  # mutating API requests sent

    def to_json(self) -> dict[str, Any]:
        return {"schema": "meshctl.canary/v1", "cluster": self.cluster,
                "namespace": self.namespace, "service": self.service, "host": self.host,
                "weights": dict(self.weights), "promoted": self.promoted,
                "objects": [{"object": o, "action": a} for o, a in self.actions],
                "warnings": list(self.warnings), "writes": self.writes}


# --- live -------------------------------------------------------------------------------


def _managed(obj: dict[str, Any]) -> bool:
    return (obj["metadata"].get("labels") or {}).get(MANAGED_BY) == MANAGER


def _version_warnings(k: kube.Kube, opts: Options, service: dict[str, Any]) -> list[str]:
    """One WARN per version that has no pod behind the Service carrying ``version=<v>``."""
    selector = (service.get("spec") or {}).get("selector") or {}
    base = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
    warnings = []
    for version, weight in opts.weights:
        query = {"labelSelector": ",".join(p for p in (base, f"{VERSION_LABEL}={version}") if p)}
        pods = k.request("GET", f"/api/v1/namespaces/{opts.namespace}/pods",
                         query={**query, "limit": 1},
                         what=f"list pods of {opts.service} version {version}")
        if not pods.get("items"):
            sel = query["labelSelector"]
            warnings.append(f"{opts.cluster}: no pod in namespace {opts.namespace} matches "
                            f"{sel}: subset {version} (weight {weight}) has no endpoints")
    return warnings


def _write(k: kube.Kube, obj: dict[str, Any], live: dict[str, Any] | None) -> str:
    if live is not None and not _managed(live):  # --force: take it over, spec replaced
        body = {**obj, "metadata": {**live["metadata"], "labels": {
            **(live["metadata"].get("labels") or {}), MANAGED_BY: MANAGER}}}
        body["metadata"].pop("managedFields", None)
        k.request("PUT", kube.object_path(obj), body=body,
                  what=f"replace {kube.describe(obj)}")
        return "replaced"
    return kube.ensure(k, obj, live=live)


def apply(config: Config, opts: Options) -> Result:
    """Facts first (Service, existing objects, pods per version), then the writes."""
    k = kube.client(config.clusters[opts.cluster])
    service = k.get(f"/api/v1/namespaces/{opts.namespace}/services/{opts.service}",
                    what=f"read Service {opts.namespace}/{opts.service}")
    if service is None:
        raise CheckFailed(f"{opts.cluster}: Service {opts.namespace}/{opts.service} not found",
                          hint="canary splits an existing service; check --namespace/--service")
    wanted = objects(opts)
    live = {o["kind"]: k.get(kube.object_path(o), what=f"read {kube.describe(o)}")
            for o in wanted}
    for obj in wanted:
        current = live[obj["kind"]]
        if current is not None and not _managed(current) and not opts.force:
            raise CheckFailed(f"{opts.cluster}: {kube.describe(obj)} exists and is not managed "
                              f"by meshctl (no label {MANAGED_BY}={MANAGER})",
                              hint="--force replaces its spec")
    keep: tuple[str, ...] = ()
    dr = live["DestinationRule"]
    if opts.promote and dr is not None and _managed(dr):
        keep = tuple(s["name"] for s in (dr.get("spec") or {}).get("subsets") or [])
        wanted = objects(opts, keep_subsets=keep)
    warnings = _version_warnings(k, opts, service)
    before = k.mutations
    actions = tuple((kube.describe(o), _write(k, o, live[o["kind"]])) for o in wanted)
    return Result(cluster=opts.cluster, namespace=opts.namespace, service=opts.service,
                  host=opts.host, weights=opts.weights, actions=actions,
                  warnings=tuple(warnings), promoted=opts.promote,
                  writes=k.mutations - before)
