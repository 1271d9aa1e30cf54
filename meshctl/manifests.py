"""The manifests meshctl applies, per cluster of the plan, rendered from ``templates/``.

Rendering itself (jinja2, ``StrictUndefined``) is :mod:`meshctl.render`; the
``cacerts`` Secret is :func:`meshctl.ca.cacerts.manifest`.  Pure: returns text; writing
and applying are the callers' business.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from meshctl import istio, ownership
from meshctl.config import Config
from meshctl.render import deep_merge, render, split  # noqa: F401  (manifests.render/split)
from meshctl.topology import ClusterPlan, Plan, east_west_placeholder


def istiod_host(revision: str) -> str:
    return f"{istio.istiod_name(revision)}.istio-system.svc.cluster.local"


def istio_operator(config: Config, plan: Plan, cluster: ClusterPlan, *,
                   main_address: str | None = None, revision: str | None = None) -> str:
    """The cluster's IstioOperator, with ``mesh.yaml``'s ``istio.values`` merged over ours.

    For a remote-role cluster ``main_address`` is the main's east-west address; until
    it is known (dry-run) the plan's named placeholder stands in its place.
    ``revision`` (default: mesh.yaml's) is the one an upgrade installs beside it; each
    revision's operator has its own name (``ownership.control_plane_operator``).
    """
    remote_pilot = None
    if cluster.control_plane:
        remote_pilot = main_address or east_west_placeholder(cluster.control_plane)
    revision = config.mesh.istio.revision if revision is None else revision
    text = render(
        "istio-operator.yaml.j2",
        name=ownership.control_plane_operator(cluster.name, revision),
        cluster=cluster.name, network=cluster.network, mesh_id=plan.mesh_id,
        trust_domain=config.mesh.trust_domain, revision=revision,
        external_istiod=cluster.expose_istiod, remote_pilot_address=remote_pilot,
        sidecar_cpu=config.mesh.istio.sidecar.cpu,
        sidecar_memory=config.mesh.istio.sidecar.memory,
    )
    extra = config.mesh.istio.values
    if not extra:
        return text
    doc = yaml.safe_load(text)
    doc["spec"]["values"] = deep_merge(doc["spec"]["values"], extra)
    return yaml.safe_dump(doc, sort_keys=False)


def eastwest_gateway(config: Config, cluster: ClusterPlan, *,
                     revision: str | None = None) -> str:
    """The east-west gateway's IstioOperator; ``revision`` (default: mesh.yaml's) is the
    control plane its proxies use.  One name for every revision: the gateway is upgraded
    in place, as Istio documents for gateways."""
    return render("eastwest-gateway.yaml.j2", cluster=cluster.name, network=cluster.network,
                  revision=config.mesh.istio.revision if revision is None else revision)


def namespace(cluster: ClusterPlan, mesh_id: str) -> str:
    """``istio-system`` as meshctl creates it (only when it does not exist yet)."""
    return render("namespace.yaml.j2", network=cluster.network,
                  control_plane=cluster.control_plane, mesh_id=mesh_id)


def expose_services(mesh_id: str) -> str:
    return render("expose-services.yaml.j2", mesh_id=mesh_id)


def expose_istiod(config: Config, *, serving: str | None = None,
                  also: tuple[str, ...] = ()) -> str:
    """The main's istiod through its east-west gateway: ``serving`` (default mesh.yaml's
    revision) takes every call, and each revision in ``also`` (an upgrade's target) the
    xDS calls whose SNI names it."""
    serving = config.mesh.istio.revision if serving is None else serving
    hosts = [{"sni": f"{istio.istiod_name(r)}.istio-system.svc", "host": istiod_host(r)}
             for r in also if r != serving]
    return render("expose-istiod.yaml.j2", istiod_host=istiod_host(serving),
                  revision_hosts=hosts, mesh_id=config.mesh.mesh_id)


def install_record(record: Mapping[str, str], mesh_id: str) -> str:
    """The ``istio-system/meshctl-install`` ConfigMap: what meshctl did on the cluster."""
    return render("install-record.yaml.j2", record=record, mesh_id=mesh_id)


def for_cluster(config: Config, plan: Plan, cluster: ClusterPlan, *,
                main_address: str | None = None) -> dict[str, str]:
    """Every manifest (but ``cacerts``) the plan puts on ``cluster``, by file name, in order."""
    out = {
        "namespace.yaml": namespace(cluster, plan.mesh_id),
        "istio-operator.yaml": istio_operator(config, plan, cluster, main_address=main_address),
    }
    if cluster.east_west_gateway:
        out["eastwest-gateway.yaml"] = eastwest_gateway(config, cluster)
    if cluster.expose_istiod:
        out["expose-istiod.yaml"] = expose_istiod(config)
    if cluster.expose_services:
        out["expose-services.yaml"] = expose_services(plan.mesh_id)
    return out
