"""Cluster files and ``mesh.yaml`` → frozen dataclasses, every rule of the file formats.

Validation happens here, before any cluster is touched, so that a typo costs a
one-line :class:`~meshctl.errors.ConfigError` naming the file and the key (exit 2),
never a half-done bootstrap.  The module reads files and nothing else: no network,
no kubeconfig parsing (that is :mod:`meshctl.kube`'s job, and only for live commands).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from kubernetes.utils import parse_quantity

from meshctl import durations, names
from meshctl.ca import pki
from meshctl.errors import ConfigError, UsageError
from meshctl.names import DNS1123_LABEL, LABEL_VALUE  # noqa: F401  (config.DNS1123_LABEL)

MESH_FILE = "mesh.yaml"
ROLES = ("primary", "remote")

CLUSTER_KEYS = {"name", "context", "kubeconfig", "network", "role", "apiServer",
                "injectNamespaces", "eastWestAddress"}
CLUSTER_REQUIRED = ("name", "context", "network")
MESH_KEYS = {"meshID", "trustDomain", "clusterDomain", "istio", "ca"}
ISTIO_KEYS = {"revision", "values", "sidecar"}
RESOURCE_KEYS = {"cpu", "memory"}
CA_KEYS = {"dir", "key", "rootDays", "intermediateDays", "organization", "workloadCertTTL"}
# Istio's DEFAULT_WORKLOAD_CERT_TTL (and a proxy's SECRET_TTL): how long a workload
# certificate issued under an old intermediate may still be in use.
WORKLOAD_CERT_TTL = "24h"


@dataclass(frozen=True)
class Resources:
    """CPU and memory requests, kept as the user wrote them and as numbers."""

    cpu: str
    memory: str

    @property
    def cpu_cores(self) -> float:
        return float(parse_quantity(self.cpu))

    @property
    def memory_bytes(self) -> int:
        return int(parse_quantity(self.memory))


@dataclass(frozen=True)
class Cluster:
    """One cluster file: how to reach the cluster and what it is in the mesh."""

    name: str
    context: str
    network: str
    source: Path
    role: str = "primary"
    kubeconfig: str | None = None
    api_server: str | None = None
    inject_namespaces: tuple[str, ...] = ()
    east_west_address: str | None = None

    @property
    def is_primary(self) -> bool:
        return self.role == "primary"


@dataclass(frozen=True)
class CASettings:
    """Where the root CA lives (the operator's machine only) and how certificates are made.

    A relative ``ca.dir`` is ``dir`` from ``mesh.yaml``'s folder, the same from every
    working directory; ``cwd_dir`` is where earlier meshctl looked (from the working
    directory; ``None`` when absolute): a root only there is refused, never doubled."""

    dir: Path = Path(".meshctl/ca")
    key: str = "rsa-4096"
    root_days: int = 3650
    intermediate_days: int = 730
    organization: str = "meshctl"
    cwd_dir: Path | None = None
    # seconds; root rotation waits this long after step 2 before step 3 may drop the old root
    workload_cert_ttl: float = durations.parse(WORKLOAD_CERT_TTL)


@dataclass(frozen=True)
class IstioSettings:
    revision: str = ""
    values: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    sidecar: Resources = Resources(cpu="100m", memory="128Mi")


@dataclass(frozen=True)
class Mesh:
    """``mesh.yaml``: settings shared by every cluster of the mesh."""

    mesh_id: str
    source: Path
    trust_domain: str = "cluster.local"
    istio: IstioSettings = IstioSettings()
    # The clusters' DNS domain (kubelet's clusterDomain): service host names end in it.
    # Not the trust domain, which names identities and may differ.
    cluster_domain: str = "cluster.local"
    ca: CASettings = CASettings()


@dataclass(frozen=True)
class Config:
    """Everything in a clusters folder, validated."""

    dir: Path
    mesh: Mesh
    clusters: Mapping[str, Cluster]

    def cluster(self, name: str, *, flag: str = "--cluster") -> Cluster:
        """The cluster ``name`` or a usage error that lists the ones that exist."""
        try:
            return self.clusters[name]
        except KeyError:
            known = ", ".join(sorted(self.clusters)) or "none"
            raise UsageError(
                f"{flag} {name}: no cluster file {self.dir / (name + '.yaml')} "
                f"(clusters in {self.dir}: {known})") from None


# --- YAML --------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML silently keeps the last one."""


def _mapping_no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _mapping_no_duplicates)


def read_yaml(path: Path) -> Any:
    """Parse one YAML file, turning every read or parse failure into a ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None


# --- validation helpers ------------------------------------------------------------


def _mapping(path: Path, where: str, value: Any) -> dict:
    if not isinstance(value, dict):
        shown = "empty" if value is None else type(value).__name__
        raise ConfigError(f"{path}: {where} must be a mapping, got {shown}")
    return value


def _check_keys(path: Path, where: str, data: dict, allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"{path}: unknown key '{prefix}{key}' "
                              f"(allowed: {', '.join(sorted(allowed))})")


def _string(path: Path, key: str, value: Any, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise ConfigError(f"{path}: missing required key '{key}'")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: key '{key}' must be a non-empty string")
    return value


def _label(path: Path, key: str, value: str, *, longest: int = 63, why: str = "") -> str:
    if not names.dns_label(value, longest=longest):
        raise ConfigError(f"{path}: key '{key}': {names.shown(value)} is not a DNS-1123 label "
                          f"(lower-case letters, digits and '-', at most {longest}, "
                          f"starting and ending alphanumeric{why})")
    return value


def _label_value(path: Path, key: str, value: str, becomes: str) -> str:
    if not names.label_value(value):
        raise ConfigError(f"{path}: key '{key}': {names.shown(value)} is not a valid label "
                          "value (at most 63 letters, digits, '-', '_' and '.', starting and "
                          f"ending alphanumeric; it becomes {becomes})")
    return value


def _positive_int(path: Path, key: str, value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{path}: key '{key}' must be a positive whole number of days, "
                          f"got {value!r}")
    return value


def _duration(path: Path, key: str, value: Any, default: float) -> float:
    if value is None:
        return default
    try:
        seconds = durations.parse(value)
    except ValueError:
        raise ConfigError(f"{path}: key '{key}': {value!r} is not a duration with a unit "
                          "(e.g. 24h, 90m, 1h30m)") from None
    if seconds <= 0:
        raise ConfigError(f"{path}: key '{key}' must be longer than 0, got {value!r}")
    return seconds


def _quantity(path: Path, key: str, value: Any, default: str) -> str:
    if value is None:
        return default
    text = str(value)
    try:
        amount = parse_quantity(text)
    except ValueError:
        raise ConfigError(f"{path}: key '{key}': {text!r} is not a Kubernetes quantity "
                          "(e.g. 100m, 0.5, 128Mi)") from None
    if amount < 0:
        raise ConfigError(f"{path}: key '{key}' must not be negative")
    return text


def _api_server(path: Path, value: str | None) -> str | None:
    if value is None:
        return None
    problem = names.https_url_problem(value)
    if problem:  # written into remote secrets, whose reader refuses the same
        raise ConfigError(f"{path}: key 'apiServer': {names.shown(value)} {problem}")
    return value.rstrip("/")


def _near(path: Path, value: str | None) -> str | None:
    """A relative path from ``path``'s file: beside that file, not in the working dir."""
    if value is None or value.startswith("~") or Path(value).is_absolute():
        return value
    return str(path.parent / value)


# --- loaders -----------------------------------------------------------------------


def load_cluster(path: Path) -> Cluster:
    """Read and validate one ``clusters/<name>.yaml``."""
    data = _mapping(path, "the file", read_yaml(path))
    _check_keys(path, "", data, CLUSTER_KEYS)
    name = _label(path, "name", _string(path, "name", data.get("name"), required=True),
                  longest=names.CLUSTER_NAME_MAX, why="; meshctl-eastwest-<name> becomes a label "
                  "value of at most 63")
    if name != path.stem:
        raise ConfigError(f"{path}: key 'name': {name!r} does not match the file name "
                          f"{path.stem!r}")
    context = _string(path, "context", data.get("context"), required=True)
    network = _label_value(path, "network",
                           _string(path, "network", data.get("network"), required=True) or "",
                           "the topology.istio.io/network label")
    role = data.get("role", "primary")
    if role not in ROLES:
        raise ConfigError(f"{path}: key 'role': {role!r} is not one of {', '.join(ROLES)}")
    namespaces = data.get("injectNamespaces") or []
    if not isinstance(namespaces, list):
        raise ConfigError(f"{path}: key 'injectNamespaces' must be a list of namespace names")
    for ns in namespaces:
        _label(path, "injectNamespaces", _string(path, "injectNamespaces", ns) or "")
    if len(set(namespaces)) != len(namespaces):
        raise ConfigError(f"{path}: key 'injectNamespaces' lists a namespace twice")
    address = _string(path, "eastWestAddress", data.get("eastWestAddress"))
    if address is not None and not names.address(address):
        # a remote's istiod address: an Endpoints IP, else an ExternalName Service
        raise ConfigError(f"{path}: key 'eastWestAddress': {names.shown(address)} is neither "
                          "an IP address nor a DNS name (e.g. 203.0.113.7, gw.example.com)")
    return Cluster(
        name=name,
        context=context,
        network=network,
        source=path,
        role=role,
        kubeconfig=_near(path, _string(path, "kubeconfig", data.get("kubeconfig"))),
        api_server=_api_server(path, _string(path, "apiServer", data.get("apiServer"))),
        inject_namespaces=tuple(namespaces),
        east_west_address=address,
    )


def load_mesh(path: Path) -> Mesh:
    """Read and validate ``mesh.yaml``."""
    data = _mapping(path, "the file", read_yaml(path))
    _check_keys(path, "", data, MESH_KEYS)
    mesh_id = _label_value(path, "meshID",
                           _string(path, "meshID", data.get("meshID"), required=True) or "",
                           "the meshctl.io/mesh label")
    trust_domain = _string(path, "trustDomain", data.get("trustDomain")) or "cluster.local"
    if not names.dns_name(trust_domain):  # Istio's rule; it names every SPIFFE identity
        raise ConfigError(f"{path}: key 'trustDomain': {names.shown(trust_domain)} is not a "
                          "trust domain (DNS-1123 labels joined by '.', e.g. cluster.local)")
    cluster_domain = _string(path, "clusterDomain", data.get("clusterDomain")) or "cluster.local"
    if not names.dns_name(cluster_domain):
        raise ConfigError(f"{path}: key 'clusterDomain': {names.shown(cluster_domain)} is not "
                          "a DNS domain (DNS-1123 labels joined by '.', e.g. cluster.local)")

    istio_raw = _mapping(path, "key 'istio'", data.get("istio") or {})
    _check_keys(path, "istio", istio_raw, ISTIO_KEYS)
    revision = _string(path, "istio.revision", istio_raw.get("revision") or None) or ""
    if revision:
        _label(path, "istio.revision", revision, longest=names.REVISION_MAX,
               why="; istiod-<revision> becomes a Service name of at most 63")
    values = _mapping(path, "key 'istio.values'", istio_raw.get("values") or {})
    sidecar_raw = _mapping(path, "key 'istio.sidecar'", istio_raw.get("sidecar") or {})
    _check_keys(path, "istio.sidecar", sidecar_raw, RESOURCE_KEYS)
    sidecar = Resources(
        cpu=_quantity(path, "istio.sidecar.cpu", sidecar_raw.get("cpu"), "100m"),
        memory=_quantity(path, "istio.sidecar.memory", sidecar_raw.get("memory"), "128Mi"),
    )

    ca_raw = _mapping(path, "key 'ca'", data.get("ca") or {})
    _check_keys(path, "ca", ca_raw, CA_KEYS)
    key = ca_raw.get("key", CASettings.key)
    if key not in pki.KEY_TYPES:
        raise ConfigError(f"{path}: key 'ca.key': {key!r} is not one of "
                          f"{', '.join(pki.KEY_TYPES)}")
    root_days = _positive_int(path, "ca.rootDays", ca_raw.get("rootDays"), CASettings.root_days)
    inter_days = _positive_int(path, "ca.intermediateDays", ca_raw.get("intermediateDays"),
                               CASettings.intermediate_days)
    if inter_days > root_days:
        raise ConfigError(f"{path}: key 'ca.intermediateDays' ({inter_days}) is longer than "
                          f"'ca.rootDays' ({root_days}): an intermediate cannot outlive its root")
    ca_dir = Path(_string(path, "ca.dir", ca_raw.get("dir")) or str(CASettings.dir))
    ca_dir = ca_dir.expanduser()  # relative: mesh.yaml's folder, whatever the working dir
    organization = _string(path, "ca.organization", ca_raw.get("organization")) or "meshctl"
    workload_ttl = _duration(path, "ca.workloadCertTTL", ca_raw.get("workloadCertTTL"),
                             CASettings.workload_cert_ttl)
    return Mesh(
        mesh_id=mesh_id,
        source=path,
        trust_domain=trust_domain,
        cluster_domain=cluster_domain,
        istio=IstioSettings(revision=revision, values=MappingProxyType(dict(values)),
                            sidecar=sidecar),
        ca=CASettings(dir=ca_dir if ca_dir.is_absolute() else path.parent / ca_dir,
                      cwd_dir=None if ca_dir.is_absolute() else ca_dir, key=key,
                      root_days=root_days, intermediate_days=inter_days,
                      organization=organization, workload_cert_ttl=workload_ttl),
    )


def load(directory: Path) -> Config:
    """Load every cluster file and ``mesh.yaml`` from ``directory``.

    All cluster files are validated, not only the ones a command names: a clusters
    folder is one unit, and a broken file in it is better found now than mid-rotation.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"clusters folder {directory} does not exist "
                         "(hint: pass --clusters-dir or set MESHCTL_CLUSTERS_DIR)")
    mesh_path = directory / MESH_FILE
    if not mesh_path.is_file():
        raise ConfigError(f"{mesh_path}: missing (every clusters folder needs a mesh.yaml)")
    mesh = load_mesh(mesh_path)
    clusters: dict[str, Cluster] = {}
    files = sorted(p for p in directory.iterdir()
                   if p.suffix in (".yaml", ".yml") and p.stem != "mesh")
    for path in files:
        cluster = load_cluster(path)
        if cluster.name in clusters:
            other = clusters[cluster.name].source
            raise ConfigError(f"{path}: key 'name': cluster {cluster.name!r} is also defined "
                              f"in {other}")
        clusters[cluster.name] = cluster
    return Config(dir=directory, mesh=mesh, clusters=MappingProxyType(clusters))
