"""The bootstrap flow, once: an ordered list of steps that describe *and* do themselves.

The dry-run prints these steps (``plan.json``) and the live run executes the very same
list, so the two cannot drift apart.  Each :class:`Step` carries its description (what a
reader of the plan sees) and its action (``do``, what the live run calls).  Steps are
grouped into phases; a phase ends before the next begins, which is how "facts from every
cluster before the first write anywhere" and "primaries before remote-role clusters" are
kept.  Inside a phase, steps of one *lane* run in order and lanes run at once
(:func:`meshctl.mesh.facts.each`): a lane is a cluster, or for links the *source*
cluster, so that one ``istioctl create-remote-secret`` serves all of its targets.

:func:`execute` records every step it finished in :attr:`Live.executed`; the tests compare
that list with the dry-run's.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import tenacity

from meshctl import istio, kube, manifests
from meshctl.ca import cacerts, certs
from meshctl.config import Config
from meshctl.errors import CheckFailed, MeshctlError
from meshctl.kube import Kube
from meshctl.mesh import facts, injection, install, remote_secret
from meshctl.topology import ClusterPlan, Plan, east_west_placeholder

TOKEN_PLACEHOLDER = "<service-account-token:{source}>"
Progress = install.Progress


@dataclass
class Live:
    """What the steps of one live run share: read once, filled in as the run goes."""

    config: Config
    plan: Plan
    skip_preflight: bool = False
    force: bool = False
    progress: Progress = install._quiet
    names: Sequence[str] | None = None  # clusters to read facts from (default: the plan's)
    known: facts.Facts | None = None
    root: certs.RootCA | None = None
    bundles: dict[str, certs.Bundle] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, remote_secret.RemoteSecret] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    executed: list[Step] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def clients(self) -> dict[str, Kube]:
        return self.known.clients if self.known else {}

    def facts(self) -> facts.Facts:
        """Every cluster's facts, read by the first step that asks (all clusters at once,
        because preflight and the ownership checks judge them together)."""
        with self._lock:
            if self.known is None:
                if self.skip_preflight:
                    self.progress("*", "preflight skipped (--skip-preflight); ownership "
                                       "checks still run")
                self.known = facts.gather(self.config, self.plan,
                                          skip_preflight=self.skip_preflight,
                                          force=self.force, names=self.names)
            return self.known

    def changed(self, cluster: str, what: str) -> None:
        with self._lock:
            self.changes.append(f"{cluster}: {what}")
        self.progress(cluster, what)


Action = Callable[[Live], None]


@dataclass(frozen=True)
class Step:
    """One thing bootstrap does, on one cluster (or locally when ``cluster`` is None)."""

    cluster: str | None
    action: str
    objects: tuple[str, ...]
    live: bool  # needs a reachable cluster (dry-run only describes it)
    files: tuple[str, ...] = ()  # what the dry-run wrote for this step, relative to --out
    needs: tuple[str, ...] = ()  # placeholders whose live values this step waits for
    note: str = ""
    phase: str = ""
    lane: str = ""  # steps of one lane run in order; lanes of one phase run at once
    do: Action | None = field(default=None, repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        """The step as ``plan.json`` lists it (and as the executed list is compared)."""
        return {"cluster": self.cluster, "action": self.action,
                "objects": list(self.objects), "live": self.live, "files": list(self.files),
                "needs": list(self.needs), "note": self.note, "phase": self.phase}


# --- the steps ---------------------------------------------------------------------------


def _preflight(live: Live) -> None:
    """The facts of every cluster are read together, by the first preflight step."""
    live.facts()


def _root(live: Live) -> None:
    settings = live.config.mesh.ca
    if certs.root_exists(settings):
        live.root = certs.load_root(settings)
        certs.refuse_to_sign(live.root, settings)
    else:
        live.root, _ = certs.init_root(settings)
        live.progress("*", f"root CA created in {settings.dir}")


def _intermediate(name: str) -> Action:
    def do(live: Live) -> None:
        with live._lock:  # the first step makes every missing one (keys in parallel)
            if name not in live.bundles:
                assert live.root is not None
                # the clusters this run writes to (install --cluster: that one only)
                made = certs.ensure_intermediates(live.root, list(live.names or live.plan.names),
                                                  live.config.mesh.ca)
                live.bundles.update({n: bundle for n, (bundle, _) in made.items()})
    return do


def _check_cacerts(live: Live) -> None:
    facts.check_cacerts(live.facts(), live.bundles)


def _namespace(cp: ClusterPlan) -> Action:
    def do(live: Live) -> None:
        k = live.clients[cp.name]
        install.wait_namespace_gone_if_terminating(k, progress=live.progress)
        for change in install.prepare_namespace(k, cp, live.plan.mesh_id, force=live.force):
            live.changed(cp.name, change)
    return do


def _cacerts(name: str) -> Action:
    def do(live: Live) -> None:
        result = cacerts.apply(live.clients[name], live.bundles[name], mesh_id=live.plan.mesh_id,
                               backup_dir=certs.backups_dir(live.config.mesh.ca),
                               live=live.facts().cacerts[name])
        if result != "unchanged":
            live.changed(name, f"cacerts {result}")
    return do


def _component(cp: ClusterPlan, key: str) -> Action:
    def do(live: Live) -> None:
        main_address = live.addresses.get(cp.control_plane) if cp.control_plane else None
        install.check_main_address(live.config, cp, main_address)
        comp = next(c for c in install.components(live.config, live.plan, cp,
                                                  main_address=main_address) if c.key == key)
        known = live.facts()
        if install.ensure_component(live.clients[cp.name], known.istioctl,
                                    live.config.clusters[cp.name], comp,
                                    mesh_id=live.plan.mesh_id, progress=live.progress):
            live.changed(cp.name, f"istioctl install -f {key}")
    return do


def _expose(cp: ClusterPlan, render: Callable[[Live], str]) -> Action:
    def do(live: Live) -> None:
        for change in install.apply_manifest(live.clients[cp.name], render(live),
                                             force=live.force):
            live.changed(cp.name, change)
    return do


def _label_injection(cp: ClusterPlan) -> Action:
    def do(live: Live) -> None:
        for change in injection.ensure(live.clients[cp.name],
                                       live.config.clusters[cp.name].inject_namespaces,
                                       live.config.mesh.istio.revision, live.plan.mesh_id):
            live.changed(cp.name, change)
    return do


def _east_west_address(cp: ClusterPlan) -> Action:
    def do(live: Live) -> None:
        address = install.wait_east_west_address(live.clients[cp.name],
                                                 live.config.clusters[cp.name])
        with live._lock:
            live.addresses[cp.name] = address
        live.progress(cp.name, f"east-west gateway address {address}")
    return do


def _link(target: str, source: str) -> Action:
    def do(live: Live) -> None:
        secret = live.secrets.get(source)  # one lane per source: no race on this entry
        if secret is None:
            known = live.facts()
            secret = remote_secret_of(live.config, known.clients, known.istioctl, source)
            live.secrets[source] = secret
        result = remote_secret.apply(live.clients[target], secret)
        if result != "unchanged":
            live.changed(target, f"remote secret for {source} {result}")
    return do


def istiod_object(config: Config) -> str:
    return f"Deployment istio-system/{istio.istiod_name(config.mesh.istio.revision)}"


def _install_steps(config: Config, c: ClusterPlan, phase: str) -> list[Step]:
    """Istio, the east-west gateway, the exposures, the gateway's address and the
    injection labels of the cluster's ``injectNamespaces``, in order."""
    needs = (east_west_placeholder(c.control_plane),) if c.control_plane else ()
    profile = " (profile remote)" if c.control_plane else ""
    objects = (f"IstioOperator meshctl-{c.name}{profile}",)
    if c.istio_role == "primary":
        objects += (istiod_object(config),)
    step = dict(cluster=c.name, live=True, phase=phase, lane=c.name)
    out = [Step(action="istioctl install", objects=objects, needs=needs,
                files=(f"{c.name}/istio-operator.yaml",),
                note="istioctl waits until it is ready; skipped when the recorded "
                     "operator is the same and ready", do=_component(c, "istio-operator.yaml"),
                **step)]
    if c.east_west_gateway:
        out.append(Step(action="istioctl install",
                        objects=("Deployment istio-system/istio-eastwestgateway",
                                 "Service istio-system/istio-eastwestgateway"), needs=needs,
                        files=(f"{c.name}/eastwest-gateway.yaml",),
                        do=_component(c, "eastwest-gateway.yaml"), **step))
    if c.expose_istiod:
        out.append(Step(action="apply", objects=("Gateway istio-system/istiod-gateway",
                                                 "VirtualService istio-system/istiod-vs"),
                        files=(f"{c.name}/expose-istiod.yaml",),
                        do=_expose(c, lambda live: manifests.expose_istiod(live.config)),
                        **step))
    if c.expose_services:
        out.append(Step(action="apply", objects=("Gateway istio-system/cross-network-gateway",),
                        files=(f"{c.name}/expose-services.yaml",),
                        do=_expose(c, lambda live: manifests.expose_services(
                            live.plan.mesh_id)), **step))
    if c.east_west_gateway:
        out.append(Step(action="wait for east-west address", objects=(),
                        note=f"fills {east_west_placeholder(c.name)}",
                        do=_east_west_address(c), **step))
    namespaces = config.clusters[c.name].inject_namespaces
    if namespaces:  # after istioctl: the injector (primary or remote profile) is there
        revision = config.mesh.istio.revision
        wanted = ", ".join(f"{key}={value}" for key, value
                           in injection.labels_for(revision).items() if value is not None)
        out.append(Step(action="label injection",
                        objects=tuple(f"Namespace {ns}" for ns in namespaces),
                        note=f"{wanted}; the labels' previous values go into the install "
                             "record, teardown puts them back; a missing namespace is "
                             "created as meshctl's", do=_label_injection(c), **step))
    return out


def steps(config: Config, plan: Plan) -> list[Step]:
    """The ordered flow for ``plan``: facts first, then the local CA, then cluster changes."""
    ca = config.mesh.ca
    out = [Step(c.name, "preflight", (), live=True, phase="facts", lane="facts",
                note="facts of every cluster (resources, permissions, versions, ownership, "
                     "cacerts); abort on FAIL, before any write",
                do=_preflight) for c in plan.clusters]
    out.append(Step(None, "root CA", (f"{ca.dir}/root-cert.pem",), live=False,
                    phase="root CA", do=_root,
                    note="created once on this machine, reused after; its key never leaves it"))
    out += [Step(None, "intermediate CA", (f"{ca.dir}/{c.name}/",), live=False,
                 phase="intermediates", lane="ca",
                 files=tuple(f"{c.name}/{f}" for f in certs.CACERTS_FILES),
                 do=_intermediate(c.name)) for c in plan.clusters]
    out.append(Step(None, "check cacerts", (), live=False, phase="check cacerts",
                    note="each live cacerts is absent or from this root, else stop "
                         "before any cluster write",
                    do=_check_cacerts))
    for c in plan.clusters:
        out.append(Step(c.name, "apply", ("Namespace istio-system",), live=True,
                        phase="prepare", lane=c.name, files=(f"{c.name}/namespace.yaml",),
                        do=_namespace(c)))
        out.append(Step(c.name, "apply", ("Secret istio-system/cacerts",), live=True,
                        phase="prepare", lane=c.name, files=(f"{c.name}/cacerts.yaml",),
                        do=_cacerts(c.name)))
    for role, phase in (("primary", "install primaries"), ("remote", "install remotes")):
        for c in plan.clusters:
            if c.istio_role == role:
                out += _install_steps(config, c, phase)
    for link in plan.links:
        out.append(Step(link.target, "link",
                        (f"Secret istio-system/istio-remote-secret-{link.source}",),
                        live=True, needs=(TOKEN_PLACEHOLDER.format(source=link.source),),
                        phase="link", lane=link.source,
                        note=f"istioctl create-remote-secret on {link.source} (once for all "
                             "its targets); token read from the cluster, kept in memory",
                        do=_link(link.target, link.source)))
    return out


def execute(flow: Sequence[Step], live: Live) -> None:
    """Run ``flow`` phase by phase; inside a phase, lanes at once, each lane in order.

    A failing lane does not stop the other lanes of its phase (they finish), but no later
    phase starts; every lane's error reaches the user together (:func:`facts.each`).
    """
    numbered = list(enumerate(flow, start=1))
    for _, group in itertools.groupby(numbered, key=lambda pair: pair[1].phase):
        lanes: dict[str, list[tuple[int, Step]]] = {}
        for number, s in group:
            lanes.setdefault(s.lane, []).append((number, s))
        facts.each([tuple(lane) for lane in lanes.values()],
                   lambda lane: _run_lane(lane, live, len(numbered)))


def _run_lane(lane: Sequence[tuple[int, Step]], live: Live, total: int) -> None:
    for number, s in lane:
        if s.do is None:
            raise AssertionError(f"step {s.action} has no action")  # a bug, not input
        s.do(live)
        with live._lock:
            live.executed.append(s)
        live.progress(s.cluster or "*", f"step {number}/{total} {s.action} done")


# --- remote secrets ----------------------------------------------------------------------


def _already_exists(exc: BaseException) -> bool:
    """istioctl lost a race to create the reader token Secret (another run made it)."""
    return isinstance(exc, MeshctlError) and "already exists" in str(exc)


def remote_secret_of(config: Config, clusters: dict[str, Kube], ctl: istio.Istioctl,
                     source: str, server: str | None = None) -> remote_secret.RemoteSecret:
    """One ``istioctl create-remote-secret`` on ``source``, parsed and checked, in memory.

    istioctl creates the reader's token Secret when it is missing; two runs at once can
    both try, and the loser fails with "already exists" although the token is then there:
    that one case is retried (twice, a second apart), never any other failure.
    """
    cluster = config.clusters[source]
    chosen = remote_secret.server_for(cluster, clusters[source].server, server)
    for attempt in tenacity.Retrying(retry=tenacity.retry_if_exception(_already_exists),
                                     stop=tenacity.stop_after_attempt(3),
                                     wait=tenacity.wait_fixed(1.0), reraise=True):
        with attempt:
            return remote_secret.create(ctl, cluster, chosen, mesh_id=config.mesh.mesh_id)
    raise AssertionError("unreachable")  # pragma: no cover


def main_address(config: Config, cp: ClusterPlan) -> str | None:
    """The east-west address of ``cp``'s control plane, read live (single-cluster install)."""
    if not cp.control_plane:
        return None
    main = config.clusters[cp.control_plane]
    address = install.east_west_address(kube.client(main), main)
    if not address:
        raise CheckFailed(f"{cp.control_plane}: its east-west gateway has no address yet",
                          hint=f"install {cp.control_plane} first")
    return address
