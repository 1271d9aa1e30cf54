"""Pure parts of the certificate lifecycle, no cluster: status judgements, rotation stages
and step order.  The same logic runs against real API servers in test_certs_sandbox.py."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from meshctl import config
from meshctl.ca import certs, pki, rotation
from meshctl.ca import status as cert_status
from meshctl.errors import UsageError

S = config.CASettings(dir=Path("/nonexistent"), key="ecdsa-p256", root_days=3650,
                      intermediate_days=730, organization="meshctl-test")
OLD, NEW, OTHER = certs.make_root(S), certs.make_root(S), certs.make_root(S)
FP_OLD, FP_NEW = pki.fingerprint(OLD.cert), pki.fingerprint(NEW.cert)


def secret_of(bundle: certs.Bundle) -> dict:
    return {"metadata": {"name": "cacerts"},
            "data": {k: base64.b64encode(v).decode() for k, v in bundle.files().items()}}


def judge(bundle: certs.Bundle | None, *, local: bool = True,
          state: rotation.State | None = None) -> cert_status.ClusterCerts:
    return cert_status.judge_cluster(
        "c1", secret_of(bundle) if bundle else None, local_roots=[OLD.cert],
        local_files=bundle.files() if (bundle and local) else None, state=state)


@pytest.mark.parametrize("bundle,level,needle", [
    (certs.make_intermediate(OLD, "c1", S), "PASS", "chain verifies"),
    (certs.make_intermediate(OLD, "c1", S, days=10), "WARN", "expires in"),
    (certs.make_intermediate(OLD, "c1", S, days=1,
                             not_before=datetime.now(UTC) - timedelta(days=2)), "FAIL", "expired"),
    (certs.make_intermediate(OLD, "c1", S,
                             not_before=datetime.now(UTC) + timedelta(days=2)), "FAIL",
     "not valid before"),
    (certs.make_intermediate(OTHER, "c1", S), "FAIL", "not to the local root"),
    (None, "FAIL", "no istio-system/cacerts"),
], ids=["good", "expires-soon", "expired", "not-yet-valid", "other-root", "absent"])
def test_judge_cluster(bundle: certs.Bundle | None, level: str, needle: str) -> None:
    got = judge(bundle)
    assert got.level == level, got.checks
    assert any(needle in c.message for c in got.checks), got.checks
    assert "PRIVATE KEY" not in repr(got.to_json())


def test_local_mismatch_is_a_warning_saying_what_differs() -> None:
    live = certs.make_intermediate(OLD, "c1", S)
    local = certs.make_intermediate(OLD, "c1", S)
    got = cert_status.judge_cluster("c1", secret_of(live), local_roots=[OLD.cert],
                                    local_files=local.files(), state=None)
    assert got.level == "WARN" and not got.matches_local and got.chain_verifies
    assert any("intermediate serial" in c.message for c in got.checks)


def test_cross_checks_name_the_odd_one_out() -> None:
    good = [judge(certs.make_intermediate(OLD, n, S)) for n in ("c1", "c2")]
    odd = cert_status.judge_cluster("c3", secret_of(certs.make_intermediate(OTHER, "c3", S)),
                                    local_roots=[OLD.cert], local_files=None, state=None)
    common, checks = cert_status.cross_checks([*good, odd], (FP_OLD,))
    assert common is None
    fails = [c.message for c in checks if c.level == "FAIL"]
    assert fails[0].startswith("no root common to all clusters: c3 does not trust")
    assert any("does not trust c3's intermediate" in m for m in fails)
    common, checks = cert_status.cross_checks(good, (FP_OLD,))
    assert common == FP_OLD and [c.level for c in checks] == ["PASS"]


@pytest.mark.parametrize("roots,signer,stage", [
    ((OLD,), OLD, 0), ((OLD, NEW), OLD, 1), ((OLD, NEW), NEW, 2), ((NEW,), NEW, 3),
    ((NEW, OLD), NEW, None), ((OTHER,), OTHER, None), ((NEW,), OLD, None),
], ids=["0", "1", "2", "3", "reversed-bundle", "foreign", "dropped-too-early"])
def test_stage_of(roots: tuple, signer: certs.RootCA, stage: int | None) -> None:
    bundle = certs.make_intermediate(signer, "c1", S, roots=tuple(r.cert for r in roots))
    assert rotation.stage_of(bundle, FP_OLD, FP_NEW) == stage


def state(step: int, complete: bool) -> rotation.State:
    return rotation.State(old_root=FP_OLD, new_root=FP_NEW, step=step, complete=complete,
                          clusters=("c1",), started="t", updated="t")


@pytest.mark.parametrize("current,step,refused_with", [
    (None, 1, None), (None, 2, "--step 1"), (None, 3, "--step 1"),
    (state(1, False), 1, None), (state(1, True), 1, None), (state(1, True), 2, None),
    (state(1, True), 3, "--step 2"), (state(2, True), 1, "--step 3"),
    (state(2, False), 2, None), (state(2, False), 3, "--step 2"),
    (state(3, True), 3, None), (state(3, True), 1, None), (state(3, True), 2, "--step 1"),
    (None, 4, "1, 2 or 3"),
])
def test_step_order(current: rotation.State | None, step: int, refused_with: str | None) -> None:
    if refused_with is None:
        rotation._order(current, step)
        return
    with pytest.raises(UsageError) as e:
        rotation._order(current, step)
    assert refused_with in str(e.value) and e.value.exit_code == 2


def test_root_key_is_never_pushed() -> None:
    """cacerts.apply refuses a bundle whose key is a root's, before any API call."""
    from meshctl.ca import cacerts

    bad = certs.Bundle(cluster="c1", ca_cert=OLD.cert, ca_key=OLD.key, roots=(OLD.cert,))
    with pytest.raises(UsageError, match="root's key"):
        # no client is needed: the refusal comes first (only .cluster is read)
        cacerts.apply(SimpleNamespace(cluster="c1"), bad,  # type: ignore[arg-type]
                      mesh_id="mesh1", backup_dir=Path("/nonexistent"))


def test_status_with_unreachable_clusters_is_a_fail_row(tmp_path) -> None:
    """No cluster answers: each is a FAIL row naming why, exit 1, no traceback."""
    import json as _json
    import socket

    import yaml as _yaml

    from tests.factories import cluster_doc, meshctl, write_folder

    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kc = tmp_path / "kubeconfig"
    kc.write_text(_yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    folder = write_folder(tmp_path, [cluster_doc("c1", context="c", kubeconfig=str(kc)),
                                     cluster_doc("c2", context="c", kubeconfig=str(kc))])
    assert meshctl("certs.init", "--clusters-dir", str(folder)).returncode == 0
    result = meshctl("certs.status", "--json", "--clusters-dir", str(folder),
                     env={"MESHCTL_API_DEADLINE": "1"})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    doc = _json.loads(result.stdout)
    assert [(c["name"], c["level"]) for c in doc["clusters"]] == [("c1", "FAIL"), ("c2", "FAIL")]
    assert "connection refused" in doc["clusters"][0]["checks"][0]["message"]
