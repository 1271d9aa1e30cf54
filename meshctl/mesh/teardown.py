"""``teardown``: undo bootstrap, removing only what meshctl recorded as its own.

Clusters are shared, so every delete here asks "did meshctl make this, and is it
recorded?" (``ownership``, the install record in ``install``):

- remote secrets and the exposure Gateways only when they carry meshctl's label;
- Istio through ``istioctl uninstall -f <the IstioOperator meshctl renders for the
  cluster>`` for each one the record names, never ``--purge`` (which removes every
  revision, whoever installed it, and Istio's CRDs), and never the record's own text:
  istioctl prunes by the file's name and namespace, so a record someone edited could
  point it at another team's Istio;
- Istio's CRDs only when the record says meshctl's first install created them, no other
  istiod remains and no custom resource exists that meshctl did not make: deleting a CRD
  deletes every VirtualService, DestinationRule, … of every team;
- ``cacerts`` only when its root is one of this machine's roots;
- the label and annotation meshctl set on an ``istio-system`` it found are put back to
  their old values, as meshctl's own field manager;
- the injection labels on the cluster files' ``injectNamespaces`` are put back to their
  recorded values before Istio is uninstalled, and a namespace meshctl created for them
  is deleted when it holds nothing meshctl did not make (:mod:`injection`);
- ``istio-system`` only when meshctl created it (same uid) and nothing else lives in it,
  asked of every namespaced kind the API server serves (:mod:`strangers`).

Facts first: istioctl and every cluster's record are read before the first delete, and
every record is checked (:mod:`install_record`: its shape, and its meshID against
mesh.yaml's), so an unreachable cluster or a record meshctl did not write for this mesh
stops the teardown before anything is removed anywhere.  What is kept is reported with
the reason, not silently skipped.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshctl import istio, kube, manifests, ownership
from meshctl.ca import cacerts, pki, rotation_state
from meshctl.config import Config
from meshctl.errors import CheckFailed, MeshctlError, one_line
from meshctl.kube import Kube
from meshctl.mesh import (
    injection,
    install,
    install_record,
    remote_secret,
    strangers,
    upgrade_record,
)
from meshctl.topology import Plan

NS = install.NS


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
        try:
            for obj in k.items(path, what=f"list {spec['names']['kind']}"):
                if not ownership.is_managed(obj, mesh_id):
                    meta = obj["metadata"]
                    found.append(f"{spec['names']['kind']} {meta.get('namespace', '')}/"
                                 f"{meta['name']}")
                    break
        except kube.NotFound:
            continue  # that CRD went away meanwhile
        except MeshctlError as e:  # not knowing is a reason to keep, said as such
            found.append(f"{spec['names']['kind']} (could not be listed: "
                         f"{one_line(str(e).split(': ')[-1], 80)})")
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


def _uninstall(k: Kube, ctl: istio.Istioctl, config: Config, plan: Plan, name: str,
               rec: Mapping[str, str], report: Report, progress: install.Progress) -> None:
    """``istioctl uninstall -f`` each IstioOperator the record names, gateway first.

    The file is meshctl's own render for this cluster (``meshctl-<cluster>``,
    ``meshctl-eastwest-<cluster>`` in ``istio-system``), never the record's text:
    istioctl prunes what carries the file's name and namespace as its owning resource,
    and reads charts from a path the file may name.  A remote-role cluster's operator
    is rendered with its placeholder address: uninstall reads no address.
    """
    cp = plan.get(name)
    state = upgrade_record.parse(rec)  # mid-upgrade, the new revision goes as well
    target = state.to_revision if state else None
    serving = install.serving_revision(rec)  # after an upgrade, not mesh.yaml's
    serving = config.mesh.istio.revision if serving is None else serving
    renders = {install_record.EASTWEST: lambda: manifests.eastwest_gateway(config, cp),
               upgrade_record.TARGET: lambda: manifests.istio_operator(
                   config, plan, cp, revision=target),
               install_record.CONTROL_PLANE: lambda: manifests.istio_operator(
                   config, plan, cp, revision=serving)}
    for key, render in renders.items():  # the control plane last
        if key not in rec and install.OPERATOR_PREFIX + key not in rec:
            continue
        revision = (target or "") if key == upgrade_record.TARGET else serving
        progress(name, f"istioctl uninstall ({key}) …")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="meshctl-iop-") as f:
            f.write(render())
            f.flush()
            istio.run(ctl, config.clusters[name], ["uninstall", "-y", "-f", f.name],
                      what="istioctl uninstall")
        report.removed.append(f"Istio ({key}, istioctl uninstall -f "
                              f"{install_record.operator_name(name, key, revision)})")


def _cacerts(k: Kube, config: Config, report: Report) -> None:
    live = k.get(cacerts.PATH, what=f"read {cacerts.WHAT}")
    if live is None:
        return
    bundle = cacerts.from_secret(k.cluster, live)
    if bundle is None:  # unreadable (an encrypted ca-key.pem): not provably this CA's
        report.kept.append(f"{cacerts.WHAT}: not a usable CA bundle "
                           f"({cacerts.unusable(live)}), so not provably this machine's CA")
        return
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


def _namespace(k: Kube, config: Config, cluster: str, rec: Mapping[str, str], mesh_id: str,
               report: Report, progress: install.Progress) -> None:
    live = k.get(install.NS_PATH, what=f"read Namespace {NS}")
    if live is None:
        return
    made = install_record.namespace(rec)
    if not ownership.is_managed(live, mesh_id):
        report.kept.append(f"Namespace {NS}: meshctl did not create it")
        return
    if made is not None and (not made["created"]
                             or made["uid"] != live["metadata"].get("uid")):
        report.kept.append(f"Namespace {NS}: not the one meshctl created (uid differs)")
        return
    why = strangers.why_kept(k, NS, cluster=cluster, mesh_id=mesh_id,
                             revision=config.mesh.istio.revision)
    if why:
        report.kept.append(f"Namespace {NS}: {why}")
        return
    if kube.delete(k, live | {"apiVersion": "v1", "kind": "Namespace"}):
        report.removed.append(f"Namespace {NS}")
        progress(cluster, f"waiting for Namespace {NS} to be deleted …")
        install.wait_namespace_gone_if_terminating(k)


def _exposures(k: Kube, config: Config, plan: Plan, report: Report) -> None:
    docs = [*manifests.split(manifests.expose_istiod(config)),
            *manifests.split(manifests.expose_services(plan.mesh_id))]
    for doc in docs:
        if not _crd_exists(k, doc):
            continue
        if kube.delete(k, doc):
            report.removed.append(kube.describe(doc))
        elif (live := k.get(kube.object_path(doc), what=f"read {kube.describe(doc)}")) \
                and kube.not_ours(live, doc):
            report.kept.append(f"{kube.describe(doc)}: meshctl did not make it")


def _crd_exists(k: Kube, doc: Mapping[str, Any]) -> bool:
    """Istio's CRDs may be gone already (a re-run): then so are their objects."""
    group = doc["apiVersion"].split("/")[0]
    plural = kube.KINDS[doc["kind"]][0]
    return k.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.{group}",
                 what="read CustomResourceDefinition") is not None


TAG_HOOKS = ("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
             "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations")


def _upgrade_tags(k: Kube, rec: Mapping[str, str], report: Report) -> None:
    """Revision tags ``upgrade --finish`` set with ``istioctl tag set``, which belong to
    no IstioOperator, so uninstall leaves them: those labelled ``istio.io/tag`` that point
    at the revision the record says meshctl's finished upgrade moved to, once meshctl's
    own operators (and whatever they owned) are gone.  Another revision's tags stay."""
    state = upgrade_record.parse(rec)
    if state is None or state.stage != "finish" or not state.done:
        return
    for path in TAG_HOOKS:
        for hook in k.items(path, query={"labelSelector": f"istio.io/tag,istio.io/rev="
                                                            f"{state.to_revision}"}):
            labels = hook["metadata"].get("labels") or {}
            if labels.get(ownership.OWNING_RESOURCE):
                continue  # an operator's: not the tag istioctl tag set made
            doc = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": hook.get(
                "kind") or ("MutatingWebhookConfiguration" if "mutating" in path
                            else "ValidatingWebhookConfiguration"),
                   "metadata": {"name": hook["metadata"]["name"]}}
            if kube.delete(k, doc, only_managed=False):
                report.removed.append(f"{doc['kind']} {doc['metadata']['name']} (revision tag "
                                      f"{labels.get('istio.io/tag')} set by upgrade --finish)")


def undo_cluster(k: Kube, ctl: istio.Istioctl, config: Config, plan: Plan, name: str,
                 rec: Mapping[str, str], *, progress: install.Progress) -> Report:
    """Everything bootstrap did on one cluster, in reverse, as far as the record says."""
    report = Report()
    _exposures(k, config, plan, report)
    if not rec:
        report.kept.append("no meshctl install record: Istio on this cluster (if any) "
                           "is not meshctl's")
    else:  # before the injector goes: labels back, namespaces meshctl created removed
        done, kept = injection.restore(k, rec)
        report.removed.extend(d.removesuffix(f" {injection.DELETED}") for d in done
                              if d.endswith(injection.DELETED))
        report.restored.extend(d for d in done if not d.endswith(injection.DELETED))
        report.kept.extend(kept)
    _uninstall(k, ctl, config, plan, name, rec, report, progress)
    if rec:
        _upgrade_tags(k, rec, report)
        _crds(k, name, rec, plan.mesh_id, report, progress)
    _cacerts(k, config, report)
    if rec:
        restored, kept = install.restore_namespace(k, rec)
        report.restored.extend(f"Namespace {NS}: {what}" for what in restored)
        report.kept.extend(kept)
        record = manifests.split(manifests.install_record({}, plan.mesh_id))[0]
        if kube.delete(k, record):
            report.removed.append(kube.describe(record))
    _namespace(k, config, name, rec, plan.mesh_id, report, progress)
    return report


def check_records(cms: Mapping[str, Mapping[str, Any] | None], plan: Plan) -> None:
    """Every cluster's install record is what meshctl wrote for this mesh, or nothing is
    removed anywhere: a record is cluster data, and teardown acts on it as an admin."""
    problems = [p for n, cm in cms.items()
                if (p := install_record.problem(cm, cluster=n, mesh_id=plan.mesh_id))]
    if problems:
        raise CheckFailed("; ".join(problems) + "; nothing was removed on any cluster",
                          hint="run teardown with the clusters folder that installed it; a "
                               "record someone else changed is not acted on: restore it, or "
                               "delete ConfigMap istio-system/meshctl-install and clean up "
                               "by hand")


def run(config: Config, plan: Plan, *, each: Any,
        progress: install.Progress = install._quiet) -> dict[str, Report]:
    """Facts first (istioctl, every cluster's record), then undo, clusters concurrently.

    ``each`` is bootstrap's runner (concurrent, every cluster's error reported).
    """
    names = list(plan.names)
    clients: dict[str, Kube] = each(names, lambda n: kube.client(config.clusters[n]))
    ctl = istio.find()
    cms = each(names, lambda n: install.read_record(clients[n]))
    check_records(cms, plan)
    records = {n: install.record_data(cms[n]) for n in names}
    reports = {n: Report() for n in names}

    def unlink(index: int) -> None:
        lk = plan.links[index]
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {
            "name": remote_secret.secret_name(lk.source), "namespace": NS,
            "labels": ownership.labels(plan.mesh_id)}}  # this mesh's only
        if kube.delete(clients[lk.target], secret):
            reports[lk.target].removed.append(f"remote secret for {lk.source}")

    each(list(range(len(plan.links))), unlink)
    done = each(names, lambda n: undo_cluster(clients[n], ctl, config, plan, n, records[n],
                                              progress=progress))
    for name, report in done.items():
        reports[name].removed.extend(report.removed)
        reports[name].restored.extend(report.restored)
        reports[name].kept.extend(report.kept)
    return reports

