"""``teardown``: undo bootstrap, removing only what meshctl recorded as its own.

Clusters are shared, so every delete here asks "did meshctl make this, and is it
recorded?" (``ownership``, the install record in ``install``):

- remote secrets and the exposure Gateways only when they carry meshctl's label;
- Istio through ``istioctl uninstall -f <the IstioOperator meshctl installed>``, never
  ``--purge`` (which removes every revision, whoever installed it, and Istio's CRDs);
- Istio's CRDs only when the record says meshctl's first install created them, no other
  istiod remains and no custom resource exists that meshctl did not make: deleting a CRD
  deletes every VirtualService, DestinationRule, … of every team;
- ``cacerts`` only when its root is one of this machine's roots;
- labels meshctl set on an ``istio-system`` it found are put back to their old values;
- ``istio-system`` only when meshctl created it (same uid) and nothing else lives in it.

Facts first: istioctl and every cluster's record are read before the first delete, so
an unreachable cluster stops the teardown before anything is removed anywhere.  What is
kept is reported with the reason, not silently skipped.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshctl import istio, kube, manifests, ownership
from meshctl.ca import cacerts, pki, rotation_state
from meshctl.config import Config
from meshctl.kube import Kube
from meshctl.mesh import install, remote_secret
from meshctl.topology import Plan

NS = install.NS
# Objects Kubernetes or meshctl's own istiod make in istio-system without a label of ours.
RUNTIME_CONFIGMAPS = {"kube-root-ca.crt", "istio-ca-root-cert", "istio-ca-crl",
                      "istio-ip-autoallocate"}
NAMESPACED_KINDS = (("v1", "configmaps"), ("v1", "secrets"), ("v1", "services"),
                    ("v1", "serviceaccounts"), ("apps/v1", "deployments"),
                    ("apps/v1", "daemonsets"), ("apps/v1", "statefulsets"))


@dataclass
class Report:
    """What teardown removed and what it kept (with why), per cluster."""

    removed: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _istiod_leftover(k: Kube, cluster: str) -> list[str]:
    """istiod Deployments on the cluster that meshctl did not install (any namespace)."""
    return [f"{d['metadata']['namespace']}/{d['metadata']['name']}"
            for d in k.items("/apis/apps/v1/deployments", query={"labelSelector": "app=istiod"},
                             what="list istiod Deployments")
            if not ownership.installed_by_meshctl(d, cluster)]


def _foreign_custom_resources(k: Kube, crds: list[dict], mesh_id: str) -> list[str]:
    """Custom resources of Istio's kinds that meshctl did not make (first few per kind)."""
    found = []
    for crd in crds:
        spec = crd["spec"]
        version = next((v["name"] for v in spec["versions"] if v.get("served")), None)
        if version is None:
            continue
        path = f"/apis/{spec['group']}/{version}/{spec['names']['plural']}"
        for obj in k.items(path, what=f"list {spec['names']['kind']}"):
            if not ownership.is_managed(obj, mesh_id):
                meta = obj["metadata"]
                found.append(f"{spec['names']['kind']} {meta.get('namespace', '')}/"
                             f"{meta['name']}")
                break
    return found


def _crds(k: Kube, cluster: str, rec: Mapping[str, str], mesh_id: str, report: Report,
          progress: install.Progress) -> None:
    crds = install.istio_crds(k)
    if not crds:
        return
    why = None
    if rec.get(install.REC_CRDS) != "installed":
        why = "they were there before meshctl installed Istio"
    elif others := _istiod_leftover(k, cluster):
        why = f"another Istio still runs ({', '.join(others)})"
    elif foreign := _foreign_custom_resources(k, crds, mesh_id):
        why = f"custom resources meshctl did not make use them ({', '.join(foreign[:3])})"
    if why:
        report.kept.append(f"{len(crds)} Istio CRDs: {why}")
        return
    report.removed.extend(install.purge_istio_crds(k, progress=progress))


def _uninstall(k: Kube, ctl: istio.Istioctl, config: Config, name: str,
               rec: Mapping[str, str], report: Report, progress: install.Progress) -> None:
    """``istioctl uninstall -f`` each IstioOperator the record holds, gateway first."""
    keys = sorted((key for key in rec if key.startswith(install.OPERATOR_PREFIX)),
                  key=lambda key: "istio-operator" in key)  # the control plane last
    for key in keys:
        progress(name, f"istioctl uninstall ({key.removeprefix(install.OPERATOR_PREFIX)}) …")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="meshctl-iop-") as f:
            f.write(rec[key])
            f.flush()
            istio.run(ctl, config.clusters[name], ["uninstall", "-y", "-f", f.name],
                      what="istioctl uninstall")
        report.removed.append(f"Istio ({key.removeprefix(install.OPERATOR_PREFIX)}, "
                              "istioctl uninstall -f)")


def _cacerts(k: Kube, config: Config, report: Report) -> None:
    live = k.get(cacerts.PATH, what=f"read {cacerts.WHAT}")
    if live is None:
        return
    bundle = cacerts.from_secret(k.cluster, live)
    theirs = {pki.fingerprint(r) for r in bundle.roots} if bundle else set()
    # this machine's roots: the current one, a rotation's pending one, every backed-up one
    # (a cluster left on a root from before a rotation still holds meshctl's Secret)
    ours = {fp for fp in theirs if rotation_state.find_root(config.mesh.ca, fp) is not None}
    if not ownership.is_managed(live) or not theirs or theirs != ours:
        report.kept.append(f"{cacerts.WHAT}: its root is none of this machine's CAs in "
                           f"{config.mesh.ca.dir} (current, pending or backed up)")
        return
    if kube.delete(k, live | {"apiVersion": "v1", "kind": "Secret"}):
        report.removed.append(cacerts.WHAT)


def _runtime_configmap(name: str) -> bool:
    """ConfigMaps istiod makes for itself: the root cert and its leader elections."""
    return name in RUNTIME_CONFIGMAPS or (
        name.startswith("istio-") and name.endswith(("leader", "election")))


def _strangers(k: Kube, cluster: str, mesh_id: str) -> list[str]:
    """Objects in istio-system that neither meshctl nor its Istio made."""
    found = []
    for api, plural in NAMESPACED_KINDS:
        base = f"/api/{api}" if "/" not in api else f"/apis/{api}"
        for obj in k.items(f"{base}/namespaces/{NS}/{plural}", what=f"list {plural} in {NS}"):
            meta = obj["metadata"]
            name = meta["name"]
            if ownership.is_managed(obj, mesh_id) or ownership.installed_by_meshctl(obj, cluster):
                continue
            if meta.get("deletionTimestamp"):
                continue
            if plural == "configmaps" and _runtime_configmap(name):
                continue
            if plural == "serviceaccounts" and name == "default":
                continue
            if plural == "secrets" and obj.get("type") == "kubernetes.io/service-account-token":
                continue  # the token controller removes these with their ServiceAccount
            found.append(f"{plural[:-1]} {name}")
    return found


def _namespace(k: Kube, cluster: str, rec: Mapping[str, str], mesh_id: str,
               report: Report, progress: install.Progress) -> None:
    live = k.get(install.NS_PATH, what=f"read Namespace {NS}")
    if live is None:
        return
    made = install.record_json(rec, install.REC_NAMESPACE) or {}
    if not ownership.is_managed(live):
        report.kept.append(f"Namespace {NS}: meshctl did not create it")
        return
    if made.get("uid") and made["uid"] != live["metadata"].get("uid"):
        report.kept.append(f"Namespace {NS}: not the one meshctl created (uid differs)")
        return
    strangers = _strangers(k, cluster, mesh_id)
    if strangers:
        report.kept.append(f"Namespace {NS}: it holds objects meshctl did not make "
                           f"({', '.join(strangers[:4])}{', …' if len(strangers) > 4 else ''})")
        return
    if kube.delete(k, live | {"apiVersion": "v1", "kind": "Namespace"}):
        report.removed.append(f"Namespace {NS}")
        progress(cluster, f"waiting for Namespace {NS} to be deleted …")
        install.wait_namespace_gone_if_terminating(k)


def _exposures(k: Kube, config: Config, plan: Plan, report: Report) -> None:
    docs = [*manifests.split(manifests.expose_istiod(config)),
            *manifests.split(manifests.expose_services(plan.mesh_id))]
    for doc in docs:
        if _crd_exists(k, doc) and kube.delete(k, doc):
            report.removed.append(kube.describe(doc))


def _crd_exists(k: Kube, doc: Mapping[str, Any]) -> bool:
    """Istio's CRDs may be gone already (a re-run): then so are their objects."""
    group = doc["apiVersion"].split("/")[0]
    plural = kube.KINDS[doc["kind"]][0]
    return k.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.{group}",
                 what="read CustomResourceDefinition") is not None


def undo_cluster(k: Kube, ctl: istio.Istioctl, config: Config, plan: Plan, name: str,
                 rec: Mapping[str, str], *, progress: install.Progress) -> Report:
    """Everything bootstrap did on one cluster, in reverse, as far as the record says."""
    report = Report()
    _exposures(k, config, plan, report)
    if not rec:
        report.kept.append("no meshctl install record: Istio on this cluster (if any) "
                           "is not meshctl's")
    _uninstall(k, ctl, config, name, rec, report, progress)
    if rec:
        _crds(k, name, rec, plan.mesh_id, report, progress)
    _cacerts(k, config, report)
    if rec:
        report.restored.extend(f"Namespace {NS}: {what}" for what in
                               install.restore_namespace(k, rec))
        record = manifests.split(manifests.install_record({}, plan.mesh_id))[0]
        if kube.delete(k, record):
            report.removed.append(kube.describe(record))
    _namespace(k, name, rec, plan.mesh_id, report, progress)
    return report


def run(config: Config, plan: Plan, *, each: Any,
        progress: install.Progress = install._quiet) -> dict[str, Report]:
    """Facts first (istioctl, every cluster's record), then undo, clusters concurrently.

    ``each`` is bootstrap's runner (concurrent, every cluster's error reported).
    """
    names = list(plan.names)
    clients: dict[str, Kube] = each(names, lambda n: kube.client(config.clusters[n]))
    ctl = istio.find()
    records = each(names, lambda n: install.recorded(clients[n]))
    reports = {n: Report() for n in names}

    def unlink(index: int) -> None:
        lk = plan.links[index]
        if remote_secret.remove(clients[lk.target], lk.source):
            reports[lk.target].removed.append(f"remote secret for {lk.source}")

    each(list(range(len(plan.links))), unlink)
    done = each(names, lambda n: undo_cluster(clients[n], ctl, config, plan, n, records[n],
                                              progress=progress))
    for name, report in done.items():
        reports[name].removed.extend(report.removed)
        reports[name].restored.extend(report.restored)
        reports[name].kept.extend(report.kept)
    return reports

