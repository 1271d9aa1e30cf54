"""Rendering ``templates/`` into the manifests meshctl applies, per cluster of the plan.

jinja2 with ``StrictUndefined``: a variable a template expects but the code forgot
is an error at render time, never an empty string in a cluster.  String values go
through ``tojson`` in the templates, which is valid YAML and cannot break structure.
Pure: returns text; writing and applying are the callers' business.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from meshctl import istio
from meshctl.ca import certs, pki
from meshctl.config import Config
from meshctl.topology import ClusterPlan, Plan, east_west_placeholder

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def _tojson(value: Any) -> Any:
    """jinja2's ``tojson``, but a missing variable is an UndefinedError, not a TypeError
    from the JSON encoder (StrictUndefined alone does not catch it inside a filter)."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return jinja2.utils.htmlsafe_json_dumps(value, sort_keys=True)


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # YAML, not HTML; values are quoted with tojson
    )
    env.filters["tojson"] = _tojson
    return env


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` with ``context``."""
    return _env().get_template(template).render(**context)


def split(text: str) -> list[dict[str, Any]]:
    """The documents of a rendered manifest, as dicts (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` merged over ``base``: mappings recursively, everything else replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def istiod_host(revision: str) -> str:
    return f"{istio.istiod_name(revision)}.istio-system.svc.cluster.local"


def istio_operator(config: Config, plan: Plan, cluster: ClusterPlan, *,
                   main_address: str | None = None) -> str:
    """The cluster's IstioOperator, with ``mesh.yaml``'s ``istio.values`` merged over ours.

    For a remote-role cluster ``main_address`` is the main's east-west address; until
    it is known (dry-run) the plan's named placeholder stands in its place.
    """
    remote_pilot = None
    if cluster.control_plane:
        remote_pilot = main_address or east_west_placeholder(cluster.control_plane)
    text = render(
        "istio-operator.yaml.j2",
        cluster=cluster.name, network=cluster.network, mesh_id=plan.mesh_id,
        trust_domain=config.mesh.trust_domain, revision=config.mesh.istio.revision,
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


def eastwest_gateway(config: Config, cluster: ClusterPlan) -> str:
    return render("eastwest-gateway.yaml.j2", cluster=cluster.name, network=cluster.network,
                  revision=config.mesh.istio.revision)


def namespace(cluster: ClusterPlan, mesh_id: str) -> str:
    """``istio-system`` as meshctl creates it (only when it does not exist yet)."""
    return render("namespace.yaml.j2", network=cluster.network,
                  control_plane=cluster.control_plane, mesh_id=mesh_id)


def expose_services(mesh_id: str) -> str:
    return render("expose-services.yaml.j2", mesh_id=mesh_id)


def expose_istiod(config: Config) -> str:
    return render("expose-istiod.yaml.j2", istiod_host=istiod_host(config.mesh.istio.revision),
                  mesh_id=config.mesh.mesh_id)


def cacerts_secret(bundle: certs.Bundle) -> str:
    """The ``istio-system/cacerts`` Secret; contains the intermediate key."""
    data = {name: base64.b64encode(content).decode() for name, content in bundle.files().items()}
    return render("cacerts.yaml.j2", data=data,
                  root_fingerprint=pki.fingerprint(bundle.signing_root),
                  intermediate_serial=f"{bundle.ca_cert.serial_number:x}")


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
