"""The pieces every upgrade stage is made of: read the mesh, write the record, install
or remove one revision's operator, restart a namespace, ask istiod what it sees.

Every piece checks before it acts, so a stage re-run after a crash converges instead of
doing things twice: an operator whose hash the record holds and whose Deployment is
Available is not installed again; a revision that is gone is not uninstalled again.
With ``dry_run`` a piece says what it would do and writes nothing.
"""

from __future__ import annotations

import datetime
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from meshctl import istio, kube, manifests
from meshctl.config import Config
from meshctl.errors import CheckFailed
from meshctl.kube import Kube
from meshctl.mesh import facts, flow, install, install_record, upgrade_record
from meshctl.mesh.upgrade_record import Upgrade
from meshctl.topology import ClusterPlan, Plan, east_west_placeholder
from meshctl.upgrade import state
from meshctl.verify import control_plane

Progress = Callable[[str, str], None]  # (cluster, message)
RESTART_ANNOTATION = "kubectl.kubernetes.io/restartedAt"  # what kubectl rollout restart sets
WORKLOAD_KINDS = ("deployments", "statefulsets", "daemonsets")
ROLLOUT_TIMEOUT = 300.0
GONE_TIMEOUT = 120.0


@dataclass
class Run:
    """One stage's view of the mesh: clients, each cluster's checked record, its upgrade."""

    config: Config
    plan: Plan
    clients: dict[str, Kube]
    records: dict[str, dict[str, str]]
    dry_run: bool = False
    progress: Progress = lambda cluster, message: None
    done: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def upgrade(self) -> Upgrade | None:
        return state.mesh_upgrade(self.records)

    def say(self, cluster: str, message: str) -> None:
        """Report a change (or, in a dry run, one that would be made)."""
        line = f"{cluster}: {'would ' if self.dry_run else ''}{message}"
        with self._lock:
            self.done.append(line)
        self.progress(cluster, ("(dry run) would " if self.dry_run else "") + message)

    def primaries(self) -> list[str]:
        return [c.name for c in self.plan.clusters if c.istio_role == "primary"]

    def remotes(self) -> list[str]:
        return [c.name for c in self.plan.clusters if c.istio_role != "primary"]


def open_mesh(config: Config, plan: Plan, *, dry_run: bool = False,
              progress: Progress | None = None) -> Run:
    """Every cluster's install record, checked as untrusted input, before any stage acts.

    Each cluster must carry meshctl's install of Istio: an upgrade moves what meshctl
    installed and nothing else.
    """
    clients = facts.each(plan.names, lambda n: kube.client(config.clusters[n]))
    cms = facts.each(plan.names, lambda n: install.read_record(clients[n]))
    for name in plan.names:
        problem = install_record.problem(cms[name], cluster=name, mesh_id=plan.mesh_id)
        if problem:
            raise CheckFailed(problem, hint="meshctl acts only on an install record it wrote")
    records = {n: install.record_data(cms[n]) for n in plan.names}
    missing = [n for n in plan.names if install.serving_revision(records[n]) is None]
    if missing:
        raise CheckFailed(f"{', '.join(missing)}: meshctl has not installed Istio there "
                          "(no install record with a control plane)",
                          hint="upgrade moves what 'invoke bootstrap' installed: run it first")
    run = Run(config=config, plan=plan, clients=clients, records=records, dry_run=dry_run)
    if progress is not None:
        run.progress = progress
    return run


def put(run: Run, name: str, updates: Mapping[str, str | None]) -> None:
    """Merge ``updates`` into ``name``'s install record (None removes a key)."""
    if run.dry_run:
        return
    k = run.clients[name]
    install.record(k, run.plan.mesh_id, updates)
    run.records[name] = install.recorded(k)


def mark(run: Run, up: Upgrade, stage: str, *, done: bool) -> None:
    """Record ``stage`` (begun or done) on every cluster, each keeping its own moves."""
    def one(name: str) -> None:
        own = upgrade_record.parse(run.records[name])
        entry = (own or replace(up, moved=())).at(stage, done=done)
        put(run, name, {upgrade_record.KEY: entry.dump()})

    facts.each(run.plan.names, one)


def serving(run: Run) -> str:
    """The revision every cluster's record says meshctl's control plane runs; one."""
    found = {install.serving_revision(rec) or "" for rec in run.records.values()}
    if len(found) != 1:
        raise CheckFailed(f"the clusters run different revisions of meshctl's control plane "
                          f"({', '.join(sorted(r or 'default' for r in found))})",
                          hint="check the --main/--remote flags name the whole mesh")
    return found.pop()


# --- operators ---------------------------------------------------------------------------

def _main_address(run: Run, cp: ClusterPlan) -> str | None:
    if not cp.control_plane:
        return None
    if run.dry_run:
        return east_west_placeholder(cp.control_plane)
    return flow.main_address(run.config, cp)


def control_plane_text(run: Run, name: str, revision: str) -> str:
    cp = run.plan.get(name)
    return manifests.istio_operator(run.config, run.plan, cp, revision=revision,
                                    main_address=_main_address(run, cp))


def ensure_operator(run: Run, ctl: istio.Istioctl, name: str, key: str, text: str,
                    deployment: str | None) -> bool:
    """Install ``text`` with ``ctl`` unless the record holds its hash under ``key`` and
    ``deployment`` is Available; then record it.  Returns True when istioctl ran."""
    k = run.clients[name]
    want = install.digest(text)
    healthy = deployment is None or install.deployment_problem(k, deployment) is None
    if run.records[name].get(key) == want and healthy:
        return False
    what = f"istioctl {ctl.version} install {key} ({_operator_name(text)})"
    run.say(name, what)
    if run.dry_run:
        return True
    istio.install(ctl, run.config.clusters[name], text, what=what)
    if deployment:
        kube.wait_for(f"{name}: Deployment istio-system/{deployment} Available",
                      lambda: install.deployment_problem(k, deployment),
                      timeout=install.READY_TIMEOUT, interval=2.0)
    put(run, name, {key: want, install.OPERATOR_PREFIX + key: text})
    return True


def _operator_name(text: str) -> str:
    for line in text.splitlines():
        if line.strip().startswith("name:"):
            return line.split(":", 1)[1].strip().strip('"')[:80]
    return "IstioOperator"


def remove_revision(run: Run, ctl: istio.Istioctl, name: str, revision: str) -> bool:
    """``istioctl uninstall -f`` meshctl's own render of ``revision``'s control plane.

    istioctl prunes what carries the file's IstioOperator name as its owning resource
    (``meshctl-<cluster>[-<revision>]``), so another team's Istio, and what the other
    revision re-owned (a gateway upgraded in place), stay.  Skipped when nothing of it
    is left.
    """
    k = run.clients[name]
    owner = install_record.operator_name(name, install_record.CONTROL_PLANE, revision)
    left = [d for d in k.items("/apis/apps/v1/namespaces/istio-system/deployments",
                               query={"labelSelector":
                                      f"install.operator.istio.io/owning-resource={owner}"})]
    hooks = k.items("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                    query={"labelSelector": f"install.operator.istio.io/owning-resource={owner}"})
    if not left and not hooks:
        return False
    run.say(name, f"istioctl {ctl.version} uninstall -f {owner} (revision "
                  f"{revision or 'default'})")
    if run.dry_run:
        return True
    cp = run.plan.get(name)
    text = manifests.istio_operator(run.config, run.plan, cp, revision=revision,
                                    main_address=east_west_placeholder(cp.control_plane)
                                    if cp.control_plane else None)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="meshctl-iop-") as f:
        f.write(text)
        f.flush()
        istio.run(ctl, run.config.clusters[name], ["uninstall", "-y", "-f", f.name],
                  what=f"istioctl uninstall {owner}")
    if cp.istio_role == "primary":
        dep = istio.istiod_name(revision)
        kube.wait_for(f"{name}: Deployment istio-system/{dep} gone",
                      lambda: None if k.get(f"/apis/apps/v1/namespaces/istio-system/"
                                            f"deployments/{dep}", what=f"read {dep}") is None
                      else f"{dep} still there", timeout=GONE_TIMEOUT, interval=1.0)
    return True


def expose(run: Run, name: str, *, serving_revision: str, also: Sequence[str] = ()) -> None:
    """Route the main's exposed istiod to ``serving_revision`` (and xDS for ``also``)."""
    if not run.plan.get(name).expose_istiod:
        return
    text = manifests.expose_istiod(run.config, serving=serving_revision, also=tuple(also))
    if run.dry_run:
        run.say(name, f"route exposed istiod to revision {serving_revision or 'default'}"
                + (f" (xDS of {', '.join(also)} by SNI)" if also else ""))
        return
    for line in install.apply_manifest(run.clients[name], text):
        run.say(name, line)


# --- workloads ---------------------------------------------------------------------------

def restart(run: Run, name: str, namespace: str) -> list[str]:
    """``kubectl rollout restart`` every Deployment, StatefulSet and DaemonSet of
    ``namespace``, then wait for each to roll out: its pods are injected anew, by the
    revision the namespace's label now names."""
    k = run.clients[name]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    restarted: list[tuple[str, str]] = []  # (kind, name)
    for kind in WORKLOAD_KINDS:
        base = f"/apis/apps/v1/namespaces/{namespace}/{kind}"
        for obj in k.items(base, what=f"list {kind} in {namespace}"):
            obj_name = obj["metadata"]["name"]
            restarted.append((kind, obj_name))
            if not run.dry_run:
                k.request("PATCH", f"{base}/{obj_name}", body={"spec": {"template": {
                    "metadata": {"annotations": {RESTART_ANNOTATION: now}}}}},
                    content_type="application/strategic-merge-patch+json",
                    query={"fieldManager": "meshctl-upgrade"},
                    what=f"restart {kind[:-1]} {namespace}/{obj_name}")
    shown = [f"{kind[:-1]} {namespace}/{obj_name}" for kind, obj_name in restarted]
    if not run.dry_run:
        for (kind, obj_name), item in zip(restarted, shown, strict=True):
            kube.wait_for(f"{name}: {item} rolled out",
                          lambda kind=kind, obj_name=obj_name: _rollout_problem(
                              k, kind, namespace, obj_name),
                          timeout=ROLLOUT_TIMEOUT, interval=2.0)
    return shown


def _rollout_problem(k: Kube, kind: str, namespace: str, name: str) -> str | None:
    obj = k.get(f"/apis/apps/v1/namespaces/{namespace}/{kind}/{name}", what=f"read {name}")
    if obj is None:
        return None  # deleted meanwhile: nothing to wait for
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if status.get("observedGeneration", 0) < obj["metadata"].get("generation", 0):
        return "not observed yet"
    if kind == "daemonsets":
        want = status.get("desiredNumberScheduled", 0)
        ok = status.get("updatedNumberScheduled", 0) >= want and \
            status.get("numberAvailable", 0) >= want
    else:
        want = spec.get("replicas", 1)
        ok = status.get("updatedReplicas", 0) >= want and \
            status.get("availableReplicas", 0) >= want and status.get("replicas", 0) <= want
    return None if ok else f"{kind[:-1]} {namespace}/{name}: rolling out"


# --- istiod's own view -----------------------------------------------------------------------

def synced_problems(run: Run, revision: str) -> list[str]:
    """What is not synced in ``revision``'s istiod on each primary (verify's control-plane
    half, asked of that revision's pods): empty when every linked cluster is synced."""
    out: list[str] = []
    for primary in run.primaries():
        k = run.clients[primary]
        pods = control_plane.istiod_pods(k, revision or "default")
        if not pods:
            out.append(f"{primary}: no running istiod pod of revision {revision or 'default'}")
            continue
        checks = control_plane.clusterz_checks(
            run.config, run.plan, run.clients, primary, pods[0]["metadata"]["name"],
            control_plane.monitoring_port(pods[0]), timeout=control_plane.SYNC_TIMEOUT * 2)
        out += [f"revision {revision or 'default'}: {c.message}" for c in checks
                if c.status != "PASS"]
    return out
