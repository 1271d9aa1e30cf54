"""The offline CA: Istio's tools/certs conventions, checked with openssl and cryptography."""

from __future__ import annotations

import os
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshctl import config
from meshctl.ca import certs, pki
from meshctl.errors import UsageError
from tests.factories import cluster_doc, mesh_doc, meshctl, write_folder


def settings(tmp_path: Path, key: str = "ecdsa-p256") -> config.CASettings:
    return config.CASettings(dir=tmp_path / "ca", key=key, root_days=3650,
                             intermediate_days=730, organization="meshctl-test")


def openssl_verify(root: Path, cert: Path, untrusted: Path | None = None) -> str:
    cmd = ["openssl", "verify", "-CAfile", str(root)]
    if untrusted:
        cmd += ["-untrusted", str(untrusted)]
    result = subprocess.run([*cmd, str(cert)], capture_output=True, text=True, check=False)
    return result.stdout + result.stderr


def leaf(bundle: certs.Bundle) -> x509.Certificate:
    return certs.workload_cert(bundle, namespace="default", service_account="reviews")


@pytest.mark.parametrize("key_type,key_class,size", [
    ("rsa-2048", rsa.RSAPrivateKey, 2048),
    ("rsa-4096", rsa.RSAPrivateKey, 4096),
    ("ecdsa-p256", ec.EllipticCurvePrivateKey, 256),
])
def test_chain_and_extensions(tmp_path: Path, key_type: str, key_class: type, size: int) -> None:
    s = settings(tmp_path, key_type)
    root, backup = certs.init_root(s)
    assert backup is None
    bundle, created = certs.ensure_intermediate(root, "cluster1", s)
    assert created
    d = certs.cluster_dir(s, "cluster1")

    # openssl: intermediate to root, and a workload leaf through the chain
    assert "ca-cert.pem: OK" in openssl_verify(d / "root-cert.pem", d / "ca-cert.pem")
    (tmp_path / "leaf.pem").write_bytes(pki.cert_pem(leaf(bundle)))
    assert "leaf.pem: OK" in openssl_verify(d / "root-cert.pem", tmp_path / "leaf.pem",
                                            untrusted=d / "ca-cert.pem")
    # cryptography: signature and the webpki-style chain for a leaf
    bundle.ca_cert.verify_directly_issued_by(root.cert)
    root.cert.verify_directly_issued_by(root.cert)
    assert isinstance(root.key, key_class) and root.key.key_size == size

    # root: self-signed, CA:true critical, keyCertSign critical, SHA-256
    assert root.cert.subject == root.cert.issuer
    bc = root.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length is None
    ku = root.cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert root.cert.signature_hash_algorithm.name == "sha256"

    # intermediate: CA:true pathlen:0, L=<cluster>, SAN istiod, signed by root
    ca = bundle.ca_cert
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.digital_signature
    with pytest.raises(x509.ExtensionNotFound):
        ca.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    san = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["istiod.istio-system.svc"]
    assert ca.subject.get_attributes_for_oid(NameOID.LOCALITY_NAME)[0].value == "cluster1"
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "meshctl-test"
    assert ca.issuer == root.cert.subject
    assert ca.signature_hash_algorithm.name == "sha256"
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc) == timedelta(days=730)

    # files: cert-chain = intermediate + root; keys 0600; root key only in ca.dir
    chain = pki.load_certs((d / "cert-chain.pem").read_bytes())
    assert chain == [ca, root.cert]
    assert pki.load_certs((d / "root-cert.pem").read_bytes()) == [root.cert]
    assert stat.S_IMODE(os.stat(d / "ca-key.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(s.dir / "root-key.pem").st_mode) == 0o600
    root_key = pki.key_pem(root.key)
    assert not any(root_key in p.read_bytes() for p in d.iterdir())


def test_leaf_verifies_with_cryptography_policy(tmp_path: Path) -> None:
    """cryptography's own path builder accepts root → intermediate → leaf."""
    from cryptography.x509.verification import PolicyBuilder, Store

    s = settings(tmp_path)
    root, _ = certs.init_root(s)
    bundle, _ = certs.ensure_intermediate(root, "c1", s)
    verifier = PolicyBuilder().store(Store([root.cert])).build_client_verifier()
    verified = verifier.verify(leaf(bundle), [bundle.ca_cert])
    assert verified.chain[-1] == root.cert
    assert verified.subjects == [x509.UniformResourceIdentifier(
        "spiffe://cluster.local/ns/default/sa/reviews")]
    eku = verified.chain[0].extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_other_root_does_not_verify(tmp_path: Path) -> None:
    s = settings(tmp_path)
    root, _ = certs.init_root(s)
    other = certs.make_root(s)
    bundle, _ = certs.ensure_intermediate(root, "c1", s)
    (tmp_path / "other.pem").write_bytes(pki.cert_pem(other.cert))
    out = openssl_verify(tmp_path / "other.pem", certs.cluster_dir(s, "c1") / "ca-cert.pem")
    assert "OK" not in out and "unable to get local issuer certificate" in out
    assert "not signed by root" in certs.chain_problem(bundle, other.cert)


def test_ensure_intermediate_is_idempotent(tmp_path: Path) -> None:
    s = settings(tmp_path)
    root, _ = certs.init_root(s)
    first, created = certs.ensure_intermediate(root, "c1", s)
    again, created_again = certs.ensure_intermediate(root, "c1", s)
    assert created and not created_again
    assert again.ca_cert == first.ca_cert


def test_expired_intermediate_is_replaced_with_backup(tmp_path: Path) -> None:
    s = settings(tmp_path)
    root, _ = certs.init_root(s)
    old = certs.make_intermediate(root, "c1", s, days=1,
                                  not_before=datetime.now(UTC) - timedelta(days=3))
    certs.write_bundle(certs.cluster_dir(s, "c1"), old)
    assert "expired" in certs.chain_problem(old, root.cert)
    new, created = certs.ensure_intermediate(root, "c1", s)
    assert created and new.ca_cert != old.ca_cert
    backups = list((s.dir / "backups").glob("c1.backup-*"))
    assert len(backups) == 1
    assert certs.load_bundle(backups[0], "c1").ca_cert == old.ca_cert
    assert stat.S_IMODE(os.stat(backups[0] / "ca-key.pem").st_mode) == 0o600


def test_init_force_backs_up_first(tmp_path: Path) -> None:
    s = settings(tmp_path)
    first, _ = certs.init_root(s)
    with pytest.raises(UsageError, match="already exists"):
        certs.init_root(s)
    second, backup = certs.init_root(s, force=True)
    # one backup layout, inside ca.dir: the root key never goes anywhere else
    assert backup is not None and backup.parent == s.dir / "backups"
    assert backup.name.startswith("root.backup-")
    assert sorted(p.name for p in backup.iterdir()) == ["root-cert.pem", "root-key.pem"]
    assert pki.load_certs((backup / "root-cert.pem").read_bytes())[0] == first.cert
    assert stat.S_IMODE(os.stat(backup / "root-key.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o700
    assert [p.name for p in s.dir.parent.iterdir()] == [s.dir.name]  # nothing beside it
    assert certs.load_root(s).cert == second.cert != first.cert


def test_write_is_atomic_and_private(tmp_path: Path) -> None:
    """Keys are created 0600 from their first byte: no temp file is ever wider."""
    from meshctl import files

    target = tmp_path / "k.pem"
    files.write_atomic(target, b"secret", mode=files.PRIVATE)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]  # no temp file left


def test_repr_never_shows_key(tmp_path: Path) -> None:
    s = settings(tmp_path)
    root = certs.make_root(s)
    bundle = certs.make_intermediate(root, "c1", s)
    for text in (repr(root), repr(bundle), str(root), str(bundle)):
        assert "PRIVATE KEY" not in text and "key=" not in text


def test_certs_cli_init_and_issue_no_apply(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, [cluster_doc("c1"), cluster_doc("c2")], mesh_doc(tmp_path))
    init = meshctl("certs.init", "--clusters-dir", str(folder))
    assert init.returncode == 0, init.stderr
    assert "BEGIN" not in init.stdout + init.stderr
    issued = meshctl("certs.issue", "--no-apply", "--cluster", "c1", "--cluster", "c2",
                     "--clusters-dir", str(folder))
    assert issued.returncode == 0, issued.stderr
    assert "issued" in issued.stdout and "BEGIN" not in issued.stdout
    again = meshctl("certs.issue", "--no-apply", "--cluster", "c1", "--clusters-dir", str(folder))
    assert "kept" in again.stdout
    ca = tmp_path / "ca"
    for c in ("c1", "c2"):
        assert "OK" in openssl_verify(ca / "root-cert.pem", ca / c / "ca-cert.pem")
    forced = meshctl("certs.init", "--force", "--clusters-dir", str(folder))
    assert forced.returncode == 0 and "backed up" in forced.stderr


# --- lifetimes and subjects (issue 21, item 6) -------------------------------------------


def _openssl_at(root: Path, cert: Path, when: datetime, untrusted: Path | None = None) -> str:
    cmd = ["openssl", "verify", "-attime", str(int(when.timestamp())), "-CAfile", str(root)]
    if untrusted:
        cmd += ["-untrusted", str(untrusted)]
    result = subprocess.run([*cmd, str(cert)], capture_output=True, text=True, check=False)
    return result.stdout + result.stderr


def test_intermediate_and_leaf_never_outlive_their_issuer(tmp_path: Path) -> None:
    """A root with 10 days left issues a '730-day' intermediate: its notAfter is the
    root's, and a leaf under it ends there too.  openssl agrees at both ends."""
    s = config.CASettings(dir=tmp_path / "ca", key="ecdsa-p256", root_days=10,
                          intermediate_days=730, organization="meshctl-test")
    root, _ = certs.init_root(s)
    bundle, _ = certs.ensure_intermediate(root, "c1", s)
    assert bundle.ca_cert.not_valid_after_utc == root.cert.not_valid_after_utc
    hours = certs.workload_cert(bundle, namespace="ns", service_account="sa", hours=24 * 400)
    assert hours.not_valid_after_utc == bundle.ca_cert.not_valid_after_utc
    d = certs.cluster_dir(s, "c1")
    (tmp_path / "leaf.pem").write_bytes(pki.cert_pem(hours))
    inside = root.cert.not_valid_after_utc - timedelta(hours=1)
    assert "ca-cert.pem: OK" in _openssl_at(d / "root-cert.pem", d / "ca-cert.pem", inside)
    assert "leaf.pem: OK" in _openssl_at(d / "root-cert.pem", tmp_path / "leaf.pem", inside,
                                         d / "ca-cert.pem")
    bundle.ca_cert.verify_directly_issued_by(root.cert)
    hours.verify_directly_issued_by(bundle.ca_cert)


@pytest.mark.parametrize("days,not_before,needle", [
    (1, datetime.now(UTC) - timedelta(days=3), "expired"),
    (30, datetime.now(UTC) + timedelta(days=2), "not valid before"),
], ids=["expired", "not-yet-valid"])
def test_no_intermediate_under_an_unusable_root(tmp_path: Path, days: int,
                                                 not_before: datetime, needle: str) -> None:
    """Every signing path goes through make_intermediate, which refuses such a root:
    certs.issue, bootstrap, certs.rotate --cluster, root rotation step 2."""
    from meshctl.errors import ConfigError

    s = settings(tmp_path)
    key = pki.generate_key("ecdsa-p256")
    root = certs.RootCA(cert=pki.self_signed_ca(subject=pki.name(common_name="r"), key=key,
                                                days=days, not_before=not_before), key=key)
    for build in (lambda: certs.make_intermediate(root, "c1", s),
                  lambda: certs.make_intermediates(root, ["c1", "c2"], s)):
        with pytest.raises(ConfigError) as e:
            build()
        assert needle in str(e.value) and "no intermediate is issued" in str(e.value)


def test_each_root_has_its_own_subject_and_old_roots_stay_valid(tmp_path: Path) -> None:
    s = settings(tmp_path)
    one, two = certs.make_root(s), certs.make_root(s)
    assert one.cert.subject != two.cert.subject
    for root in (one, two):
        [cn] = root.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        [org] = root.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        assert org.value == "meshctl-test"
        assert cn.value == (f"Root CA {root.cert.not_valid_before_utc:%Y-%m-%d} "
                            f"{root.cert.serial_number:x}"[:27])
        assert root.cert.subject == root.cert.issuer
    (tmp_path / "one.pem").write_bytes(pki.cert_pem(one.cert))
    shown = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in",
                            str(tmp_path / "one.pem")], capture_output=True, text=True,
                           check=True).stdout
    assert "CN=Root CA 20" in shown.replace(" = ", "=")

    # a root from before (O=<org>, CN=Root CA) on disk still loads and issues
    key = pki.generate_key("ecdsa-p256")
    legacy = pki.self_signed_ca(subject=pki.name(organization="meshctl-test",
                                                 common_name="Root CA"), key=key, days=100)
    s.dir.mkdir(mode=0o700)
    (s.dir / "root-cert.pem").write_bytes(pki.cert_pem(legacy))
    (s.dir / "root-key.pem").write_bytes(pki.key_pem(key))
    bundle, created = certs.ensure_intermediate(certs.load_root(s), "c1", s)
    assert created and bundle.ca_cert.issuer == legacy.subject
    d = certs.cluster_dir(s, "c1")
    assert "ca-cert.pem: OK" in openssl_verify(d / "root-cert.pem", d / "ca-cert.pem")
