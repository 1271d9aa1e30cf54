"""Server-side apply decisions that need no cluster: when is a re-apply a no-op, and
how a 409 from apply names the field and its manager.  The live behaviour (conflicts
with kubectl, --force, zero writes on a re-run) is tested on the sandbox in
test_ownership.py and test_bootstrap.py."""

from __future__ import annotations

import pytest

from meshctl import kube
from meshctl.errors import one_line


def live(labels: dict, annotations: dict | None, owned: dict) -> dict:
    meta = {"name": "istio-system", "labels": labels,
            "managedFields": [{"manager": "meshctl", "operation": "Apply",
                               "fieldsV1": {"f:metadata": owned}}]}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


DESIRED = {"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": "istio-system", "labels": {"net": "n1"}}}


@pytest.mark.parametrize("obj,expected", [
    (live({"net": "n1", "team": "a"}, None, {"f:labels": {".": {}, "f:net": {}}}), True),
    (live({"net": "n2"}, None, {"f:labels": {"f:net": {}}}), False),
    # meshctl once set an annotation it no longer wants: the apply must drop it
    (live({"net": "n1"}, {"cp": "c1"}, {"f:labels": {"f:net": {}},
                                        "f:annotations": {"f:cp": {}}}), False),
    # the right value, but set by another manager only: apply once to own it
    ({"apiVersion": "v1", "kind": "Namespace",
      "metadata": {"name": "istio-system", "labels": {"net": "n1"}}}, False),
], ids=["in-sync", "value-differs", "stale-owned-annotation", "not-owned-yet"])
def test_in_sync(obj: dict, expected: bool) -> None:
    assert kube.in_sync(obj, DESIRED) is expected


def test_in_sync_treats_a_list_as_one_field() -> None:
    obj = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "x", "managedFields": [{
               "manager": "meshctl", "operation": "Apply",
               "fieldsV1": {"f:spec": {"f:hosts": {"v:\"a\"": {}}}}}]},
           "spec": {"hosts": ["a"]}}
    assert kube.in_sync(obj, {"metadata": {"name": "x"}, "spec": {"hosts": ["a"]}})
    assert not kube.in_sync(obj, {"metadata": {"name": "x"}, "spec": {"hosts": ["b"]}})


@pytest.mark.parametrize("message,expected", [
    ('Apply failed with 1 conflict: conflict with "kubectl-label": .metadata.labels.net',
     [("kubectl-label", ".metadata.labels.net")]),
    ('Apply failed with 2 conflicts: conflicts with "helm" using v1:\n- .metadata.labels.a\n'
     '- .spec.b', [("helm", ".metadata.labels.a"), ("helm", ".spec.b")]),
    ('Operation cannot be fulfilled: the object has been modified', []),
], ids=["one", "several-folded", "not-an-apply-conflict"])
def test_conflicts_parsed(message: str, expected: list) -> None:
    assert kube.conflicts(one_line(message)) == expected
