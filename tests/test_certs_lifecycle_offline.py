"""Pure parts of the certificate lifecycle, no cluster: status judgements, rotation stages
and step order.  The same logic runs against real API servers in test_certs_sandbox.py."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from meshctl import config
from meshctl.ca import certs, pki, rotation, rotation_wait
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


# --- issue 21: root lifetimes in certs.status, the step-3 wait, unreadable cacerts ---------


def test_root_near_its_end_is_a_warning_unless_a_rotation_replaces_it() -> None:
    s = config.CASettings(dir=Path("/nonexistent"), key="ecdsa-p256", root_days=40,
                          intermediate_days=30, organization="meshctl-test")
    short = certs.make_root(s)
    bundle = certs.make_intermediate(short, "c1", s)
    got = cert_status.judge_cluster("c1", secret_of(bundle), local_roots=[short.cert],
                                    local_files=bundle.files(), state=None)
    warns = [c.message for c in got.checks if c.level == "WARN"]
    assert got.level == "WARN" and any(
        m.startswith(f"root {pki.fingerprint(short.cert)[:23]}… expires in 40 days")
        and "certs.rotate --root --step 1" in m for m in warns), got.checks
    # mid-rotation away from it: its end is being dealt with, no warning about it
    rotating = rotation.State(old_root=pki.fingerprint(short.cert), new_root=FP_NEW, step=1,
                              complete=True, clusters=("c1",), started="t", updated="t")
    moving = certs.make_intermediate(short, "c1", s, roots=(short.cert, NEW.cert))
    got = cert_status.judge_cluster("c1", secret_of(moving), local_roots=[short.cert],
                                    local_files=moving.files(), state=rotating)
    assert not any("root" in c.message and "expires in" in c.message for c in got.checks)
    # a root with years left: nothing to say
    assert judge(certs.make_intermediate(OLD, "c1", S)).level == "PASS"


def _encrypted_key(bundle: certs.Bundle) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bundle.ca_key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"pw"))


def _ed25519_key(_: certs.Bundle) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


GOOD = certs.make_intermediate(OLD, "c1", S)
BAD_FIELDS = [
    ("ca-key-encrypted", "ca-key.pem", _encrypted_key, "encrypted"),
    ("ca-key-junk", "ca-key.pem", lambda b: b"-----BEGIN PRIVATE KEY-----\nAAAA\n"
     b"-----END PRIVATE KEY-----\n", "not a PEM private key"),
    ("ca-key-ed25519", "ca-key.pem", _ed25519_key, "unsupported private key type"),
    ("ca-cert-truncated", "ca-cert.pem", lambda b: pki.cert_pem(b.ca_cert)[:200],
     "not PEM certificates"),
    ("root-cert-empty", "root-cert.pem", lambda b: b"", "not PEM certificates"),
]


@pytest.mark.parametrize("field,make,needle", [c[1:] for c in BAD_FIELDS],
                         ids=[c[0] for c in BAD_FIELDS])
def test_unreadable_cacerts_names_the_field(field: str, make, needle: str) -> None:
    """Never a TypeError: parse names the field, from_secret says None, problem is one
    line naming cluster, Secret and field, certs.status a FAIL row saying the same."""
    from meshctl.ca import cacerts

    secret = secret_of(GOOD)
    secret["data"][field] = base64.b64encode(make(GOOD)).decode()
    with pytest.raises(ValueError) as e:
        cacerts.parse("c1", secret)
    assert str(e.value).startswith(f"{field}: ") and needle in str(e.value)
    assert cacerts.from_secret("c1", secret) is None
    line = cacerts.problem("c1", secret)
    assert line is not None and "\n" not in line
    assert line.startswith("c1: Secret istio-system/cacerts is not a usable CA bundle: "
                           f"{field}: ")
    got = cert_status.judge_cluster("c1", secret, local_roots=[OLD.cert],
                                    local_files=GOOD.files(), state=None)
    [check] = got.checks
    assert got.level == "FAIL" and field in check.message and needle in check.message
    assert cacerts.conflict("c1", secret, GOOD) == (
        f"the cluster's Secret is not a CA bundle ({e.value})")


def test_cacerts_data_not_base64_names_the_field() -> None:
    from meshctl.ca import cacerts

    secret = secret_of(GOOD)
    secret["data"]["ca-key.pem"] = "not base64!"
    assert cacerts.problem("c1", secret).endswith("ca-key.pem: not base64")


def test_local_key_file_encrypted_is_a_config_error(tmp_path: Path) -> None:
    """The same parse for ca.dir: an encrypted local ca-key.pem or root-key.pem is one
    ConfigError (exit 2) naming the file, not a TypeError."""
    from meshctl.errors import ConfigError

    s = config.CASettings(dir=tmp_path / "ca", key="ecdsa-p256", root_days=3650,
                          intermediate_days=730, organization="meshctl-test")
    root, _ = certs.init_root(s)
    bundle, _ = certs.ensure_intermediate(root, "c1", s)
    (certs.cluster_dir(s, "c1") / "ca-key.pem").write_bytes(_encrypted_key(bundle))
    with pytest.raises(ConfigError, match=r"ca-key\.pem: the private key is encrypted"):
        certs.load_bundle(certs.cluster_dir(s, "c1"), "c1")
    (s.dir / "root-key.pem").write_bytes(_encrypted_key(bundle))
    with pytest.raises(ConfigError, match=r"root-key\.pem is unreadable or not PEM: the "
                                          r"private key is encrypted"):
        certs.load_root(s)


# --- the wait between root rotation step 2 and step 3 -------------------------------------


def _after_step2(finished: datetime | None, updated: str = "t") -> rotation.State:
    return rotation.State(old_root=FP_OLD, new_root=FP_NEW, step=2, complete=True,
                          clusters=("c1",), started="t", updated=updated,
                          step2_finished=finished.isoformat() if finished else None)


DAY = rotation_wait.Wait(86400.0, "ca.workloadCertTTL")


def test_step3_refused_until_the_workload_ttl_has_passed() -> None:
    from meshctl.errors import CheckFailed

    done = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    state = _after_step2(done)
    warned: list[str] = []
    with pytest.raises(CheckFailed) as e:
        rotation_wait.check(state, DAY, force=False, warn=warned.append,
                            now=done + timedelta(hours=1))
    message = str(e.value)
    assert e.value.exit_code == 1 and "\n" not in message
    assert message.startswith("root rotation step 3 refused: 23h00m left (until "
                              "2026-01-02 12:00:00 UTC)")
    assert "24h00m (ca.workloadCertTTL)" in message and "--force" in message
    # --force: goes on, after saying the risk
    rotation_wait.check(state, DAY, force=True, warn=warned.append,
                        now=done + timedelta(hours=1))
    [warning] = warned
    assert "forced 23h00m early" in warning and "mTLS fails" in warning
    # once the TTL has passed: no refusal, nothing to warn about
    rotation_wait.check(state, DAY, force=False, warn=warned.append,
                        now=done + timedelta(hours=24))
    assert len(warned) == 1
    assert rotation_wait.step3_from(state, DAY) == done + timedelta(days=1)


def test_state_from_before_the_field_waits_from_its_update_time() -> None:
    done = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    legacy = _after_step2(None, updated=done.isoformat())
    assert legacy.step2_time == done
    assert rotation_wait.step3_from(legacy, DAY) == done + timedelta(days=1)


def test_step2_time_survives_the_state_file(tmp_path: Path) -> None:
    s = config.CASettings(dir=tmp_path, key="ecdsa-p256")
    done = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    rotation.save_state(s, _after_step2(done))
    assert rotation.load_state(s).step2_time == done
    doc = json.loads((tmp_path / "rotation.json").read_text())
    doc["step2_finished"] = "yesterday-ish"
    (tmp_path / "rotation.json").write_text(json.dumps(doc))
    with pytest.raises(UsageError, match="unreadable root rotation state"):
        rotation.load_state(s)


def _deployments(*envs: list[dict]) -> dict:
    return {"items": [{"spec": {"template": {"spec": {"containers": [
        {"name": "discovery", "env": env}]}}}} for env in envs]}


@pytest.mark.parametrize("envs,ttls", [
    ([[]], []),
    ([[{"name": "DEFAULT_WORKLOAD_CERT_TTL", "value": "1h"}]], [3600.0]),
    ([[{"name": "DEFAULT_WORKLOAD_CERT_TTL", "value": "48h"}],
      [{"name": "DEFAULT_WORKLOAD_CERT_TTL", "value": "90s"}]], [172800.0, 90.0]),
    ([[{"name": "DEFAULT_WORKLOAD_CERT_TTL", "value": "soon"}]], [86400.0]),
    ([[{"name": "DEFAULT_WORKLOAD_CERT_TTL", "valueFrom": {"configMapKeyRef": {}}}]], []),
    ([[{"name": "PILOT_TRACE_SAMPLING", "value": "1"}]], []),
], ids=["unset", "set", "two-istiods", "junk-is-istiods-default", "value-from", "other-var"])
def test_istiod_ttls(envs: list, ttls: list) -> None:
    assert rotation_wait.istiod_ttls(_deployments(*envs)) == ttls
    assert rotation_wait.istiod_ttls({"items": "junk"}) == []


def test_workload_cert_ttl_in_mesh_yaml(tmp_path: Path) -> None:
    from tests.factories import cluster_doc, mesh_doc, write_folder

    folder = write_folder(tmp_path, [cluster_doc("c1")], mesh_doc(tmp_path,
                                                                  workloadCertTTL="1h30m"))
    assert config.load(folder).mesh.ca.workload_cert_ttl == 5400.0
    folder = write_folder(tmp_path, [cluster_doc("c1")], mesh_doc(tmp_path))
    assert config.load(folder).mesh.ca.workload_cert_ttl == 86400.0


PARSED_BY_STAND_IN = [c for c in BAD_FIELDS if c[1] in ("ca-cert.pem", "ca-key.pem")]


@pytest.mark.parametrize("field,make,needle", [c[1:] for c in PARSED_BY_STAND_IN],
                         ids=[c[0] for c in PARSED_BY_STAND_IN])
def test_sandbox_stand_in_ignores_an_unreadable_cacerts(field: str, make, needle: str) -> None:
    """The sandbox's webhook stand-in reads cacerts too: unreadable means 'no mesh CA'
    (serve with its own), never an exception that stops every webhook of the cluster."""
    from meshctl.sandbox import webhooks

    secret = secret_of(GOOD)
    secret["data"]["cert-chain.pem"] = secret["data"]["ca-cert.pem"]
    secret["data"][field] = base64.b64encode(make(GOOD)).decode()

    class OneSecret:  # the stand-in's own API protocol: get(path) -> dict
        def get(self, path: str) -> dict:
            return secret

    assert webhooks.mesh_issuer(OneSecret()) is None  # type: ignore[arg-type]
    secret["data"][field] = secret_of(GOOD)["data"][field]
    assert webhooks.mesh_issuer(OneSecret()).cert == GOOD.ca_cert  # type: ignore[arg-type]
