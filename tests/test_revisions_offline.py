"""meshctl.revisions' pure parts and status's revision fields, without a cluster.

The objects are the ones a real ``istioctl`` made (tests/fixtures/revisions/): a meshctl
2-primary mesh on the sandbox after a second revision ``canary`` was installed as an
upgrade would, and the unrevisioned injector as Istio's chart renders it (no tag
webhook).  Other shapes are built from those by changing one label, named in each case.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from meshctl import report, revisions
from meshctl.mesh import status
from meshctl.mesh.status import ClusterStatus, RevisionStatus
from tests.test_report import NARROW, render

FIXTURES = Path(__file__).parent / "fixtures" / "revisions"
TWO = json.loads((FIXTURES / "two-revisions.json").read_text())
UNTAGGED = json.loads((FIXTURES / "untagged-injector.json").read_text())
VERSION = "1.31-dev.20260827"


def webhook(name: str, source: dict[str, Any] = TWO) -> dict[str, Any]:
    return copy.deepcopy(next(w for w in source["mutatingwebhookconfigurations"]
                              if w["metadata"]["name"] == name))


def ns(name: str, **labels: str) -> dict[str, Any]:
    """A Namespace; ``istio_injection=`` spells the label ``istio-injection``."""
    return {"metadata": {"name": name,
                         "labels": {k.replace("_", "-"): v for k, v in labels.items()}}}


def labelled(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


# --- control planes ------------------------------------------------------------------------

def test_control_planes_of_two_revisions_as_istioctl_installed_them() -> None:
    assert revisions.control_planes_from(TWO["deployments"]) == [
        revisions.ControlPlane("canary", "istiod-canary", VERSION, True,
                               "meshctl-cluster1-canary"),
        revisions.ControlPlane("default", "istiod", VERSION, True, "meshctl-cluster1")]


def test_version_falls_back_to_the_discovery_image_tag_and_names_decide_the_revision() -> None:
    dep = copy.deepcopy(TWO["deployments"][1])  # istiod-canary
    del dep["metadata"]["labels"]["operator.istio.io/version"]
    del dep["metadata"]["labels"]["istio.io/rev"]
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "reg:5000/istio/pilot:1.30.2"
    cp = revisions.control_plane_from(dep)
    assert (cp.revision, cp.version) == ("canary", "1.30.2")
    dep["metadata"]["name"] = "istiod"
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "pilot@sha256:abc"
    assert (revisions.control_plane_from(dep).revision,
            revisions.control_plane_from(dep).version) == ("default", None)


def test_a_deployment_without_available_replicas_is_not_ready() -> None:
    dep = copy.deepcopy(TWO["deployments"][0])
    dep["status"] = {"replicas": 1, "conditions": [{"type": "Available", "status": "False"}]}
    assert revisions.control_plane_from(dep).ready is False


@pytest.mark.parametrize(("image", "tag"), [
    ("registry.istio.io/testing/pilot:1.31-dev.20260827", "1.31-dev.20260827"),
    ("localhost:5000/pilot", None), ("pilot", None), ("pilot@sha256:00", None), ("", None)],
    ids=["tag", "port-not-tag", "bare", "digest", "empty"])
def test_image_tag(image: str, tag: str | None) -> None:
    assert revisions.image_tag(image) == tag


# --- tags --------------------------------------------------------------------------------

def test_tags_after_a_second_revision_default_still_on_the_first() -> None:
    configs = TWO["mutatingwebhookconfigurations"]
    assert revisions.tags_from(configs) == {"default": "default"}
    assert revisions.injector_revisions_from(configs) == {"canary": VERSION,
                                                          "default": VERSION}


def test_tag_moved_to_canary_moves_the_default() -> None:
    tag = webhook("istio-revision-tag-default")
    tag["metadata"]["labels"]["istio.io/rev"] = "canary"  # what `tag set --overwrite` does
    configs = [tag, webhook("istio-sidecar-injector"), webhook("istio-sidecar-injector-canary")]
    assert revisions.tags_from(configs) == {"default": "canary"}


def test_no_tag_webhook_the_active_injector_serves_injection_enabled() -> None:
    """Istio's chart without istioctl's tag step: ``istio-sidecar-injector`` itself selects
    ``istio-injection=enabled``; the deactivated one on the sandbox does not count."""
    assert revisions.tags_from(UNTAGGED["mutatingwebhookconfigurations"]) == {
        "default": "default"}
    assert revisions.tags_from([webhook("istio-sidecar-injector"),
                                webhook("istio-sidecar-injector-canary")]) == {}


def test_no_tag_webhook_a_revisioned_injector_serving_injection_enabled_is_the_default() -> None:
    # the chart's injector, given the canary revision's name and label (a Helm install of
    # revision canary as the only, default, revision)
    canary = webhook("istio-sidecar-injector", UNTAGGED)
    canary["metadata"]["name"] = "istio-sidecar-injector-canary"
    canary["metadata"]["labels"]["istio.io/rev"] = "canary"
    assert revisions.tags_from([canary]) == {"default": "canary"}


def test_other_tags_and_unrelated_webhooks() -> None:
    prod = webhook("istio-revision-tag-default")
    prod["metadata"]["name"] = "istio-revision-tag-prod"
    prod["metadata"]["labels"].update({"istio.io/tag": "prod", "istio.io/rev": "canary"})
    other = labelled("cert-manager-webhook", {"app": "webhook"})
    configs = [*TWO["mutatingwebhookconfigurations"], prod, other]
    assert revisions.tags_from(configs) == {"default": "default", "prod": "canary"}
    assert set(revisions.injector_revisions_from(configs)) == {"canary", "default"}


# --- namespaces --------------------------------------------------------------------------

def test_namespaces_by_revision_follow_istios_selection() -> None:
    tags = {"default": "default", "prod": "canary"}
    found = revisions.namespaces_from([
        ns("a", istio_injection="enabled"),
        ns("b", **{"istio.io/rev": "canary"}),
        ns("c", **{"istio.io/rev": "prod"}),  # a tag name
        ns("d", istio_injection="enabled", **{"istio.io/rev": "canary"}),  # both: injection
        ns("e", istio_injection="disabled", **{"istio.io/rev": "canary"}),  # never injected
        ns("f", **{"istio.io/rev": "gone"}),  # names nothing that exists
        ns("g"), {"metadata": {"name": "h"}}], tags)
    assert found == {"canary": ["b", "c"], "default": ["a", "d"], "gone": ["f"]}


def test_injection_enabled_without_a_default_tag_stays_under_default() -> None:
    assert revisions.namespaces_from([ns("a", istio_injection="enabled")], {}) == {
        "default": ["a"]}


# --- proxies -----------------------------------------------------------------------------

def test_proxy_count_leaves_out_istioctls_own_debug_clients() -> None:
    """``/debug/syncz`` on the sandbox right after ``istioctl proxy-status``: istioctl's
    XDS debug client (Istio's pkg/adsc, node ``test-1.default``) is still listed."""
    istioctl_client = {"proxy": "test-1.default", "proxy_type": "sidecar",
                       "istio_version": "65536.65536.65536"}
    sidecar = {"proxy": "echo-v1-0.sample", "proxy_type": "sidecar",
               "istio_version": VERSION, "cluster_id": "cluster1"}
    assert revisions.proxy_count([istioctl_client, istioctl_client]) == 0
    assert revisions.proxy_count([istioctl_client, sidecar, dict(sidecar, proxy="b")]) == 2
    assert revisions.proxy_count(None) == 0


def test_name() -> None:
    assert (revisions.name(""), revisions.name("canary")) == ("default", "canary")


# --- status ------------------------------------------------------------------------------

def row(revision: str, version: str | None, **kw: Any) -> RevisionStatus:
    return RevisionStatus(revision, kw.pop("deployment", f"istiod-{revision}"), version,
                          kw.pop("ready", True), kw.pop("proxies", 0), **kw)


@pytest.mark.parametrize(("rows", "default", "expected"), [
    ((row("default", "1.30.1"), row("canary", "1.31.0")), "default", "1.30.1"),
    ((row("default", "1.30.1"), row("canary", "1.31.0")), "canary", "1.31.0"),
    ((row("canary", "1.31.0"),), None, "1.31.0"),
    ((row("a", "1.30.1"), row("b", "1.31.0")), None, None),
    ((), None, None)], ids=["default", "moved", "only-one", "two-no-default", "none"])
def test_istio_version_is_the_default_revisions_else_the_only_one(rows, default,
                                                                    expected) -> None:
    assert status.istio_version(rows, default) == expected


def two_revision_status() -> list[ClusterStatus]:
    rows = (row("canary", VERSION, proxies=None,
                proxies_error="cluster1: port-forward to istio-system/istiod-canary-1:15014 "
                              "/debug/syncz: ApiException: (403)"),
            row("default", VERSION, deployment="istiod", proxies=3, tags=("default",)))
    remote = (RevisionStatus("default", None, VERSION, None, None,
                             "no istiod on a remote-role cluster: its proxies are counted "
                             "by its primary's istiod", ("default",)),)
    return [ClusterStatus("cluster1", "primary", "network1", True, VERSION, ("cluster2",),
                          (), 730.0, None, None, rows, "default", {"default": "default"},
                          {"canary": ["moved"], "default": ["default"], "gone": ["gone"]},
                          ("cluster1: namespace(s) gone select revision 'gone', which has no "
                           "istiod or injector here: their new pods get no sidecar",)),
            ClusterStatus("cluster2", "remote", "network1", True, VERSION, (), (), 730.0,
                          revisions=remote, default_revision="default",
                          tags={"default": "default"})]


def test_status_json_keys_only_added() -> None:
    doc = two_revision_status()[0].to_dict()
    assert list(doc)[:11] == ["name", "role", "network", "reachable", "istio_version",
                              "links", "link_errors", "cert_days_left",
                              "east_west_address", "error", "revisions"]
    assert doc["revisions"][1] == {"revision": "default", "deployment": "istiod",
                                   "version": VERSION, "ready": True, "proxies": 3,
                                   "proxies_error": None, "tags": ("default",)}
    assert doc["default_revision"] == "default"
    assert doc["namespaces"]["gone"] == ["gone"]


def test_status_table_shows_revisions_namespaces_and_says_why_proxies_are_missing() -> None:
    rows = two_revision_status()
    out = render(report.status_table(rows), 200)
    assert f"default {VERSION} ready, 3 proxies, tags: default" in out
    assert f"canary {VERSION} ready, proxies unknown" in out
    assert "gone (no such revision): gone" in out
    assert "proxies: see its primary" in out  # the remote-role cluster
    notes = report.status_notes(rows)
    assert any("proxies of revision canary: cluster1: port-forward" in n for n in notes)
    assert any("select revision 'gone'" in n for n in notes)
    assert not any("cluster2" in n for n in notes)  # a remote's missing count is no problem
    narrow = render(report.status_table(rows), NARROW)
    assert "  revisions: canary" in narrow and "…" not in narrow
