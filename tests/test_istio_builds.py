"""The sandbox's two Istio builds: stamped apart, and each istiod pod run by its own build.

Both pins are master snapshots of the 1.31 line, so each build is stamped with its
snapshot date as its version and with a hub, which makes istioctl put that version in
the image tag it renders; the sandbox's kubelet for istiod picks the pilot-discovery
build by that tag.  The offline tests need no build; the sandbox ones run the real
binaries (the previous Istio's only where a test asks for it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from meshctl import names
from meshctl.mesh import install_record
from meshctl.sandbox import build
from meshctl.sandbox import istiod_report as report
from meshctl.upgrade import skew
from tests.factories import REPO
from tests.sandbox_fixtures import SandboxFactory

PILOT = f"{build.ISTIO_HUB}/pilot"
ISTIO_BUILDS = [b for b in build.BUILDS if "istio.io/istio" in " ".join(b.packages)]


def pinned_date(module: str) -> str:
    """The snapshot date of the istio.io/istio pseudo-version a wrapper module pins."""
    text = (REPO / "sandbox" / module / "go.mod").read_text()
    return re.search(r"istio\.io/istio v0\.0\.0-(\d{8})\d{6}-", text).group(1)  # type: ignore[union-attr]


# --- offline: the stamps ----------------------------------------------------------------

def test_each_istio_build_is_stamped_with_its_snapshot_date() -> None:
    current, previous = build.ISTIO_BUILD_VERSION, build.ISTIO_PREVIOUS_BUILD_VERSION
    assert current == f"1.31-dev.{pinned_date('istioctl')}"
    assert previous == f"1.31-dev.{pinned_date('istio-previous')}"
    assert pinned_date("workload") == pinned_date("istioctl")  # workloads: the same pin
    # told apart, ordered by date, and never mistaken for a release
    older, newer = skew.parse(previous), skew.parse(current)
    assert older and newer and older.dev and newer.dev and older.patch is None
    assert skew.compare(older, newer) == -1
    # istioctl writes the version into a label (operator.istio.io/version) and the
    # install record; both must take it
    for version in (current, previous):
        assert names.label_value(version) and install_record.VERSION_TEXT.fullmatch(version)
    stamps = {b.module: b.ldflags for b in ISTIO_BUILDS}
    assert set(stamps) == {"istioctl", "workload", "istio-previous"}
    for module, flags in stamps.items():
        version = previous if module == "istio-previous" else current
        assert f"-X istio.io/istio/pkg/version.buildVersion={version}" in flags, module
        assert f"-X istio.io/istio/pkg/version.buildHub={build.ISTIO_HUB}" in flags, module
    by_tag = {current: "pilot-discovery", previous: "pilot-discovery-previous"}
    assert by_tag == build.ISTIOD_BINARIES


def test_the_previous_build_sits_beside_the_current_one() -> None:
    prev = next(b for b in build.BUILDS if b.module == "istio-previous")
    assert prev.outputs == build.PREVIOUS == ("istioctl-previous", "pilot-discovery-previous")
    assert prev.one_by_one  # output names that are not the packages' own
    assert len(set(build.BINARIES)) == len(build.BINARIES)
    assert "pilot-discovery-previous" not in build.RUNTIME  # `up` never needs it


def test_locate_needs_the_previous_istio_only_when_asked(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for name in build.CURRENT:
        (tmp_path / name).write_text("#!/bin/sh\n")
        os.chmod(tmp_path / name, 0o755)
    monkeypatch.setenv("MESHCTL_SANDBOX_BIN", str(tmp_path))
    assert build.locate() == tmp_path  # a folder built before the previous Istio was added
    assert build.locate(build.BINARIES) is None


# --- offline: which build runs an istiod pod --------------------------------------------

def istiod_pod(image: str | None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "discovery", "args": ["discovery"]}
    if image is not None:
        container["image"] = image
    return {"spec": {"containers": [container]}}


@pytest.mark.parametrize("image,built,binary,note", [
    (f"{PILOT}:{build.ISTIO_BUILD_VERSION}", True, "pilot-discovery", None),
    (f"{PILOT}:{build.ISTIO_PREVIOUS_BUILD_VERSION}", True, "pilot-discovery-previous", None),
    (f"{PILOT}:{build.ISTIO_PREVIOUS_BUILD_VERSION}@sha256:{'0' * 64}", True,
     "pilot-discovery-previous", None),
    (f"localhost:5000/pilot:{build.ISTIO_PREVIOUS_BUILD_VERSION}", True,
     "pilot-discovery-previous", None),
    (f"{PILOT}:{build.ISTIO_PREVIOUS_BUILD_VERSION}", False, "pilot-discovery",
     "not built in"),
    (f"{PILOT}:latest", True, "pilot-discovery", "'latest' is no sandbox build's"),
    ("docker.io/istio/pilot:1.24.2", True, "pilot-discovery", "'1.24.2' is no sandbox"),
    ("localhost:5000/pilot", True, "pilot-discovery", "'(none)' is no sandbox build's"),
    (None, True, "pilot-discovery", "'(none)' is no sandbox build's"),
], ids=["current", "previous", "previous-digest", "previous-registry-port",
        "previous-not-built", "latest", "release", "no-tag", "no-image"])
def test_istiod_pod_runs_the_build_its_image_tag_names(
        tmp_path: Path, image: str | None, built: bool, binary: str, note: str | None) -> None:
    for name in ("pilot-discovery", *(["pilot-discovery-previous"] if built else [])):
        (tmp_path / name).write_text("#!/bin/sh\n")
        os.chmod(tmp_path / name, 0o755)
    chosen, said = report.binary_for(istiod_pod(image), tmp_path)
    assert chosen == tmp_path / binary
    if note is None:
        assert said is None
    else:
        assert said is not None and note in said and "running pilot-discovery" in said, said


# --- sandbox: the real binaries -------------------------------------------------------------

def _run(argv: list[Any], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


@pytest.mark.sandbox
@pytest.mark.parametrize("fixture,istioctl,version", [
    ("sandbox_bin", "istioctl", build.ISTIO_BUILD_VERSION),
    ("sandbox_bin_previous", "istioctl-previous", build.ISTIO_PREVIOUS_BUILD_VERSION),
], ids=["current", "previous"])
def test_each_istioctl_says_its_version_and_renders_it_as_the_pilot_tag(
        request: pytest.FixtureRequest, tmp_path: Path, fixture: str, istioctl: str,
        version: str) -> None:
    ctl = request.getfixturevalue(fixture) / istioctl
    said = _run([ctl, "version", "--remote=false", "-o", "json"])
    assert said.returncode == 0, said.stderr[-800:]
    assert json.loads(said.stdout)["clientVersion"]["version"] == version
    iop = tmp_path / "iop.yaml"
    iop.write_text("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n"
                   "spec:\n  profile: default\n")
    rendered = _run([ctl, "manifest", "generate", "-f", iop])
    assert rendered.returncode == 0, rendered.stderr[-800:]
    istiod = next(d for d in yaml.safe_load_all(rendered.stdout)
                  if d and d.get("kind") == "Deployment" and d["metadata"]["name"] == "istiod")
    containers = {c["name"]: c for c in istiod["spec"]["template"]["spec"]["containers"]}
    assert containers["discovery"]["image"] == f"{PILOT}:{version}"


@pytest.mark.sandbox
def test_each_istiod_pod_runs_the_pilot_discovery_its_image_tag_names(
        sandbox_bin_previous: Path, sandbox_factory: SandboxFactory) -> None:
    """The controller log names the binary each pod's process was started from."""
    sb = sandbox_factory(1, nodes=1, cpu="8", memory="16Gi", label="istiod-builds")
    core = sb["cluster1"].core()
    ns = "istiod-builds"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns)))
    tags = {"current": build.ISTIO_BUILD_VERSION,
            "previous": build.ISTIO_PREVIOUS_BUILD_VERSION, "other": "latest"}
    deadline = time.monotonic() + 60
    while True:  # pods are refused until the namespace's ServiceAccount exists
        try:
            core.read_namespaced_service_account("default", ns)
            break
        except k8s.ApiException:
            assert time.monotonic() < deadline, "no ServiceAccount default"
            time.sleep(0.5)
    for name, tag in tags.items():
        core.create_namespaced_pod(ns, k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name=name, labels={"app": "istiod"}),
            spec=k8s.V1PodSpec(containers=[k8s.V1Container(
                name="discovery", image=f"{PILOT}:{tag}", args=["discovery"])])))
    log = sb.state_dir / "logs" / "sandbox-lb.log"
    want = {"current": "started pilot-discovery pid",
            "previous": "started pilot-discovery-previous pid",
            "other": "started pilot-discovery pid"}
    try:
        deadline = time.monotonic() + 90
        while True:
            text = log.read_text()
            seen = {n: f"{ns}/{n}: {w}" in text for n, w in want.items()}
            if all(seen.values()):
                break
            assert time.monotonic() < deadline, (seen, text[-3000:])
            time.sleep(1.0)
        assert f"{ns}/other: image tag 'latest' is no sandbox build's" in text
        assert f"{ns}/current: image tag" not in text
        assert f"{ns}/previous: image tag" not in text
    finally:
        core.delete_namespace(ns)
