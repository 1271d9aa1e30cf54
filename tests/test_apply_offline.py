"""Pure halves of ``kube.apply`` that bootstrap's facts-first pass relies on (offline).

``predicted_conflicts`` reads ``managedFields`` the way the API server decides a
server-side apply conflict (another manager owns a field meshctl would set to another
value), so bootstrap can refuse before its first write; ``without_ownership`` is what
``--force`` writes over an object someone else made: fields, never meshctl's labels.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshctl import kube, ownership

DESIRED = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
           "metadata": {"name": "cross-network-gateway", "namespace": "istio-system",
                        "labels": ownership.labels("mesh1")},
           "spec": {"selector": {"istio": "eastwestgateway"},
                    "servers": [{"port": {"number": 15443}}]}}


def live(spec: dict, labels: dict | None = None, *managers: tuple[str, str, dict]) -> dict:
    return {"metadata": {"name": "cross-network-gateway", "labels": labels or {},
                         "managedFields": [{"manager": m, "operation": op, "fieldsV1": f}
                                           for m, op, f in managers]},
            "spec": spec}


SELECTOR = {"f:spec": {"f:selector": {"f:istio": {}}}}
SERVERS = {"f:spec": {"f:servers": {}}}
LABELS = {"f:metadata": {"f:labels": {"f:team": {}}}}


@pytest.mark.parametrize(("obj", "expected"), [
    (live({"selector": {"istio": "ingressgateway"}}, None, ("kubectl", "Update", SELECTOR)),
     [("kubectl", ".spec.selector.istio")]),
    (live({"servers": [{"port": {"number": 80}}]}, None, ("helm", "Apply", SERVERS)),
     [("helm", ".spec.servers")]),
    # the same value: shared ownership, no conflict
    (live({"selector": {"istio": "eastwestgateway"}}, None, ("kubectl", "Update", SELECTOR)),
     []),
    # meshctl's own apply entry never conflicts with meshctl
    (live({"selector": {"istio": "x"}}, None, (ownership.FIELD_MANAGER, "Apply", SELECTOR)),
     []),
    # a field meshctl does not set
    (live({"selector": {"istio": "eastwestgateway"}}, {"team": "a"},
          ("kubectl", "Update", LABELS)), []),
    # meshctl's restore writes are another manager
    (live({"selector": {"istio": "x"}}, None, (ownership.RESTORE_FIELD_MANAGER, "Update",
                                               SELECTOR)),
     [(ownership.RESTORE_FIELD_MANAGER, ".spec.selector.istio")]),
], ids=["other-value", "list", "same-value", "ours", "unrelated", "restore-manager"])
def test_predicted_conflicts(obj: dict, expected: list[tuple[str, str]]) -> None:
    assert kube.predicted_conflicts(obj, DESIRED) == expected


@pytest.mark.parametrize(("labels", "mine"), [
    ({"team": "a"}, False), ({ownership.MANAGED_BY: ownership.MANAGER}, True),
    (ownership.labels("mesh1"), True), (ownership.labels("mesh2"), False), ({}, False)])
def test_not_ours(labels: dict[str, Any], mine: bool) -> None:
    assert kube.not_ours(live({}, labels), DESIRED) is (not mine)
    assert kube.not_ours(None, DESIRED) is False


def test_force_writes_fields_not_ownership() -> None:
    stripped = ownership.without_ownership(
        {**DESIRED, "metadata": {**DESIRED["metadata"],
                                 "labels": {**ownership.labels("mesh1"), "app": "x"}}})
    assert stripped["metadata"]["labels"] == {"app": "x"}
    assert not ownership.is_managed(stripped)
    bare = ownership.without_ownership(DESIRED)
    assert "labels" not in bare["metadata"] and bare["spec"] == DESIRED["spec"]
    assert DESIRED["metadata"]["labels"] == ownership.labels("mesh1")  # not changed in place
