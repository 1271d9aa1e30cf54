"""Canary routing: a DestinationRule with one subset per version, a VirtualService by weight.

Why it is shaped like this:
- Options are parsed and validated before any cluster is touched (istioctl's
  ``prepare()`` habit): weights are integer percentages that must add up to 100,
  because Istio would silently normalise any total and meshctl asks for what the
  user means; versions are DNS-1123 labels because they become subset names.
- Building the objects is pure (``objects``), from ``templates/``; the host is
  ``<service>.<namespace>.svc.<clusterDomain>``: the clusters' DNS domain from mesh.yaml
  (``cluster.local`` unless set), never the trust domain, which names identities and
  may differ (a VirtualService for ``…svc.example.org`` matches no service).  The
  DestinationRule asks for Istio mTLS (``ISTIO_MUTUAL``): Envoy sidecars would choose it
  anyway, and proxyless gRPC callers use mTLS only when a DestinationRule says so.
- ``--observe N`` (``observe``) sends N calls through a probe after the write and
  judges the split with exact binomial bounds (:mod:`meshctl.split`); the calls are
  routed by these very objects, nothing written for the observation.
- Where they go: in a multi-primary mesh every istiod configures only its own
  cluster's proxies, so the objects go to every primary cluster of the mesh (every
  ``role: primary`` cluster file of the folder, whichever ``--cluster`` names: that
  flag says "this cluster's mesh").  Remote-role clusters are configured by their
  main's istiod and get nothing.  A primary that does not serve Istio's networking
  API (no Istio CRDs yet) is skipped with a warning.
- Facts first, across all of them (``apply``): the Service exists on some cluster of
  the mesh, the namespace exists on every target, which versions have pods, and
  whether meshctl manages what is already there, on every target; only then the
  first write.  One object someone else made, anywhere, stops it before any write
  unless ``--force``, which takes it over: their extra spec fields are removed and
  meshctl's applied (same uid).
- Writes go through ``kube.ensure`` (server-side apply as ``meshctl``): the same
  weights again is GETs only, new weights change the same object in place.  Objects
  carry ``ownership.labels(meshID)``.
- In the sandbox the API server validates the objects against Istio's CRD schemas.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshctl import kube, manifests, ownership, probes, split
from meshctl.config import DNS1123_LABEL, Config
from meshctl.errors import CheckFailed, UsageError

MANAGED_BY = ownership.MANAGED_BY
MANAGER = ownership.MANAGER
API_VERSION = "networking.istio.io/v1"
VERSION_LABEL = "version"


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

    cluster: str  # names the mesh: its folder's primaries get the objects
    namespace: str
    service: str
    weights: tuple[tuple[str, int], ...]
    promote: str | None = None
    force: bool = False
    domain: str = "cluster.local"  # the clusters' DNS domain (mesh.yaml clusterDomain)
    mesh_id: str = ""

    @property
    def host(self) -> str:
        return f"{self.service}.{self.namespace}.svc.{self.domain}"


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
    mesh = {"domain": config.mesh.cluster_domain, "mesh_id": config.mesh.mesh_id}
    if promote is not None:
        if weights:
            raise UsageError("--promote and --weights exclude each other "
                             "(--promote V is --weights V=100)")
        return Options(cluster, namespace, service, ((_label(promote, "--promote"), 100),),
                       promote=promote, force=force, **mesh)
    return Options(cluster, namespace, service, parse_weights(weights or ""), force=force,
                   **mesh)


# --- objects (pure) ---------------------------------------------------------------------


def objects(opts: Options, *, keep_subsets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The DestinationRule and VirtualService for ``opts``, as API-ready dicts.

    ``keep_subsets``: versions already in meshctl's DestinationRule that a promotion
    keeps as subsets (weight 0 in no route), so rolling back stays one command.
    """
    # sorted, so a promotion that keeps the same versions rewrites no DestinationRule
    subsets = sorted({v for v, _ in opts.weights} | set(keep_subsets))
    ctx = {"name": opts.service, "namespace": opts.namespace, "host": opts.host,
           "mesh_id": opts.mesh_id}
    dr = yaml.safe_load(manifests.render("destination-rule.yaml.j2", subsets=subsets, **ctx))
    vs = yaml.safe_load(manifests.render("virtual-service.yaml.j2",
                                         weights=list(opts.weights), **ctx))
    return [dr, vs]


def to_yaml(objs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False)


# --- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """What ``canary`` did: per cluster and object created/updated/unchanged/replaced."""

    cluster: str  # as given with --cluster
    clusters: tuple[str, ...]  # where the objects went
    namespace: str
    service: str
    host: str
    weights: tuple[tuple[str, int], ...]
    actions: tuple[tuple[str, str, str], ...]  # (cluster, object, action)
    warnings: tuple[str, ...] = field(default=())
    promoted: str | None = None
    writes: int = 0  # mutating API requests sent, over all clusters

    def to_json(self) -> dict[str, Any]:
        """Schema ``meshctl.canary/v1``; ``clusters`` and each object's ``cluster`` were
        added when canary began writing to every primary (keys are only ever added)."""
        return {"schema": "meshctl.canary/v1", "cluster": self.cluster,
                "clusters": list(self.clusters),
                "namespace": self.namespace, "service": self.service, "host": self.host,
                "weights": dict(self.weights), "promoted": self.promoted,
                "objects": [{"cluster": c, "object": o, "action": a}
                            for c, o, a in self.actions],
                "warnings": list(self.warnings), "writes": self.writes}


# --- live -------------------------------------------------------------------------------


def targets(config: Config) -> list[str]:
    """The clusters whose istiod configures proxies: every primary of the mesh."""
    return sorted(name for name, c in config.clusters.items() if c.is_primary)


@dataclass
class Target:
    """What one primary holds before canary writes anything there."""

    name: str
    k: kube.Kube
    serves: bool = True  # Istio's networking API is served
    service: dict[str, Any] | None = None
    namespace_found: bool = True
    live: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # by kind


def _read(k: kube.Kube, opts: Options, wanted: list[dict[str, Any]]) -> Target:
    t = Target(name=k.cluster, k=k)
    try:
        k.request("GET", f"/apis/{API_VERSION}", what=f"read API group {API_VERSION}")
    except kube.NotFound:
        t.serves = False
        return t
    t.namespace_found = k.get(f"/api/v1/namespaces/{opts.namespace}",
                              what=f"read Namespace {opts.namespace}") is not None
    t.service = _service(k, opts)
    t.live = {o["kind"]: k.get(kube.object_path(o), what=f"read {kube.describe(o)}")
              for o in wanted}
    return t


def _service(k: kube.Kube, opts: Options) -> dict[str, Any] | None:
    return k.get(f"/api/v1/namespaces/{opts.namespace}/services/{opts.service}",
                 what=f"read Service {opts.namespace}/{opts.service}")


def _managed(obj: dict[str, Any], mesh_id: str) -> bool:
    return ownership.is_managed(obj, mesh_id or None)


def _any_endpoint(k: kube.Kube, opts: Options, sel: str, version: str) -> bool:
    """A pod, or a WorkloadEntry (Istio selects those with the Service's selector too)."""
    for path, kind in ((f"/api/v1/namespaces/{opts.namespace}/pods", "pods"),
                       (f"/apis/{API_VERSION}/namespaces/{opts.namespace}/workloadentries",
                        "WorkloadEntries")):
        try:
            found = k.request("GET", path, query={"labelSelector": sel, "limit": 1},
                              what=f"list {kind} of {opts.service} version {version}")
        except kube.NotFound:
            continue
        if found.get("items"):
            return True
    return False


def _version_warnings(opts: Options, where: list[tuple[kube.Kube, dict[str, Any]]]
                      ) -> list[str]:
    """One WARN per version that no cluster serving the Service has an endpoint for
    (pods or WorkloadEntries behind the Service carrying ``version=<v>``)."""
    warnings = []
    for version, weight in opts.weights:
        sel = ""
        seen = False
        for k, service in where:
            selector = (service.get("spec") or {}).get("selector") or {}
            base = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
            sel = ",".join(p for p in (base, f"{VERSION_LABEL}={version}") if p)
            if _any_endpoint(k, opts, sel, version):
                seen = True
                break
        if not seen:
            on = ", ".join(k.cluster for k, _ in where)
            warnings.append(f"no pod or WorkloadEntry in namespace {opts.namespace} on {on} "
                            f"matches {sel}: subset {version} (weight {weight}) has no "
                            "endpoints")
    return warnings


def _take_over(k: kube.Kube, obj: dict[str, Any], live: dict[str, Any]) -> str:
    """--force on someone else's object: drop their extra spec fields, then apply ours
    taking over every field we set (same object, same uid)."""
    extra = sorted(set(live.get("spec") or {}) - set(obj.get("spec") or {}))
    if extra:
        k.request("PATCH", kube.object_path(obj), body={"spec": dict.fromkeys(extra)},
                  query={"fieldManager": ownership.FIELD_MANAGER},
                  content_type="application/merge-patch+json",
                  what=f"remove {', '.join(extra)} from {kube.describe(obj)}")
    kube.ensure(k, obj, live=live, force=True)
    return "replaced"


def _write(k: kube.Kube, obj: dict[str, Any], live: dict[str, Any] | None,
           mesh_id: str) -> str:
    if live is not None and not _managed(live, mesh_id):  # --force (checked before)
        return _take_over(k, obj, live)
    return kube.ensure(k, obj, live=live)


def _refusals(opts: Options, found: list[Target], wanted: list[dict[str, Any]]) -> list[str]:
    out = []
    for t in found:
        if not t.namespace_found:
            out.append(f"{t.name}: namespace {opts.namespace} does not exist (every primary "
                       "needs it for the routing of its own proxies)")
            continue
        for obj in wanted:
            current = t.live[obj["kind"]]
            if current is not None and not _managed(current, opts.mesh_id) and not opts.force:
                out.append(f"{t.name}: {kube.describe(obj)} exists and is not managed by "
                           f"meshctl (no label {MANAGED_BY}={MANAGER} for mesh {opts.mesh_id})")
    return out


def apply(config: Config, opts: Options) -> Result:
    """Facts first on every primary (Service, namespace, existing objects, pods per
    version), then the writes, cluster by cluster."""
    names = targets(config)
    wanted = objects(opts)
    clients = {n: kube.client(config.clusters[n]) for n in names}
    with ThreadPoolExecutor(max_workers=min(8, len(names)) or 1,
                            thread_name_prefix="canary") as pool:
        read = list(pool.map(lambda n: _read(clients[n], opts, wanted), names))
    found = [t for t in read if t.serves]
    warnings = [f"{t.name}: Istio's {API_VERSION} API is not served here (no Istio CRDs): "
                "skipped" for t in read if not t.serves]
    if not found:
        raise CheckFailed(f"{opts.cluster}: no primary cluster of the mesh ({', '.join(names)})"
                          f" serves Istio's {API_VERSION} API",
                          hint="bootstrap the mesh first")
    where = [(t.k, t.service) for t in found if t.service is not None]
    looked = [t.name for t in found]
    if not where:  # a remote-role cluster may run it alone
        for name in sorted(set(config.clusters) - set(names)):
            k = kube.client(config.clusters[name])
            looked.append(name)
            service = _service(k, opts)
            if service is not None:
                where.append((k, service))
    if not where:
        raise CheckFailed(f"{opts.cluster}: Service {opts.namespace}/{opts.service} not found "
                          f"(looked on {', '.join(looked)})",
                          hint="canary splits an existing service; check --namespace/--service")
    refused = _refusals(opts, found, wanted)
    if refused:
        raise CheckFailed("; ".join(refused), hint="nothing was written; --force takes over "
                          "objects meshctl does not manage")
    if opts.promote:  # keep every subset meshctl's DestinationRules have, for a rollback
        keep = sorted({s["name"] for t in found for dr in [t.live["DestinationRule"]]
                       if dr is not None and _managed(dr, opts.mesh_id)
                       for s in (dr.get("spec") or {}).get("subsets") or []})
        wanted = objects(opts, keep_subsets=tuple(keep))
    warnings += _version_warnings(opts, where)
    before = sum(t.k.mutations for t in found)
    actions = tuple((t.name, kube.describe(o), _write(t.k, o, t.live[o["kind"]], opts.mesh_id))
                    for t in found for o in wanted)
    return Result(cluster=opts.cluster, clusters=tuple(t.name for t in found),
                  namespace=opts.namespace, service=opts.service, host=opts.host,
                  weights=opts.weights, actions=actions, warnings=tuple(warnings),
                  promoted=opts.promote,
                  writes=sum(t.k.mutations for t in found) - before)


# --- observe ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """``--observe N``: the split judged, the answers by cluster, the failures by cause."""

    probe: str
    limits: str
    caller: str
    host: str
    port: int
    judgement: split.Judgement
    by_cluster: tuple[tuple[str, str, int], ...]  # (cluster, version, answers)
    causes: tuple[tuple[str, int], ...]

    def to_json(self) -> dict[str, Any]:
        """``observed`` in ``meshctl.canary/v1`` (a key added with --observe)."""
        return {"probe": self.probe, "limits": self.limits, "from": self.caller,
                "host": self.host, "port": self.port, **self.judgement.to_json(),
                "byCluster": [{"cluster": c, "version": v, "answers": n}
                              for c, v, n in self.by_cluster],
                "causes": dict(self.causes)}


def observe(opts: Options, probe: probes.Probe, count: int, *,
            rate: float = split.RATE) -> Observation:
    """Send ``count`` calls from ``--cluster`` to the canary's host; judge the split.

    The routing is whatever the mesh holds: meshctl's VirtualService and
    DestinationRule written just before, nothing written for the observation.
    """
    port = probe.port(opts.cluster, opts.namespace, opts.service)
    if port is None:
        raise CheckFailed(f"{opts.cluster}: no Service {opts.namespace}/{opts.service} to call",
                          hint="--observe calls the Service from --cluster's cluster")
    probe.settle()
    got = probe.send(opts.cluster, opts.namespace, opts.host, port, count)
    by_version: dict[str, int] = {}
    for (_cluster, version), n in got.answered.items():
        by_version[version] = by_version.get(version, 0) + n
    judgement = split.judge(opts.weights, by_version, sent=got.sent, rate=rate)
    by_cluster = tuple(sorted((c, v, n) for (c, v), n in got.answered.items()))
    return Observation(probe.name, probe.limits, opts.cluster, opts.host, port, judgement,
                       by_cluster, tuple(sorted(got.causes.items())))
