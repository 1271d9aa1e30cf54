"""Bench: a root + N intermediates with meshctl vs Istio's ``tools/certs`` openssl commands.

Usage: ``.venv/bin/python bench/certs.py [--key rsa-4096] [--count 20] [--repeat 3]``

Both sides do the same work in the same run, into fresh temporary folders: the
root key, certificate, and per cluster the intermediate key, certificate, cert-chain
and a copy of the root certificate.  The baseline runs the openssl commands of
Istio's ``Makefile.selfsigned.mk`` / ``common.mk`` (``genrsa``, ``req -new -config``,
``x509 -req -extfile``) with the same key type; the config files and the
``cat``/``cp`` steps are done in Python for it, which only flatters the baseline.
meshctl's side is ``certs.init_root`` + ``certs.ensure_intermediate`` (atomic,
fsynced writes included).  RSA key generation time varies a lot from key to key
(prime search), so each side runs ``--repeat`` times, interleaved, and the medians
are compared.  Prints figures; asserts nothing (TESTING.md: no timing asserts).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meshctl import config
from meshctl.ca import certs

ROOT_CONF = """[ req ]
encrypt_key = no
prompt = no
utf8 = yes
default_md = sha256
default_bits = {bits}
req_extensions = req_ext
x509_extensions = req_ext
distinguished_name = req_dn
[ req_ext ]
subjectKeyIdentifier = hash
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign
[ req_dn ]
O = meshctl
CN = Root CA
"""

INTERMEDIATE_CONF = """[ req ]
encrypt_key = no
prompt = no
utf8 = yes
default_md = sha256
default_bits = {bits}
req_extensions = req_ext
x509_extensions = req_ext
distinguished_name = req_dn
[ req_ext ]
subjectKeyIdentifier = hash
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign
subjectAltName=@san
[ san ]
DNS.1 = istiod.istio-system.svc
[ req_dn ]
O = meshctl
CN = Intermediate CA
L = {cluster}
"""


def genkey_cmd(key: str, out: Path) -> list[str]:
    """The Makefile's ``openssl genrsa -out X 4096``; its EC equivalent for ecdsa-p256."""
    if key.startswith("rsa-"):
        return ["openssl", "genrsa", "-out", str(out), key.split("-")[1]]
    return ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", str(out)]


def openssl(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


def run_openssl(work: Path, key: str, count: int) -> float:
    """Istio's tools/certs recipe: root-ca, then <cluster>-cacerts for each cluster."""
    bits = key.split("-")[1] if key.startswith("rsa-") else "256"
    start = time.perf_counter()
    (work / "root-ca.conf").write_text(ROOT_CONF.format(bits=bits))
    subprocess.run(genkey_cmd(key, work / "root-key.pem"), check=True, capture_output=True)
    openssl("openssl", "req", "-new", "-key", work / "root-key.pem", "-config",
            work / "root-ca.conf", "-out", work / "root-cert.csr")
    openssl("openssl", "x509", "-req", "-days", "3650", "-signkey", work / "root-key.pem",
            "-extensions", "req_ext", "-extfile", work / "root-ca.conf",
            "-in", work / "root-cert.csr", "-out", work / "root-cert.pem")
    for i in range(count):
        d = work / f"cluster{i}"
        d.mkdir()
        (d / "intermediate.conf").write_text(INTERMEDIATE_CONF.format(bits=bits,
                                                                      cluster=d.name))
        subprocess.run(genkey_cmd(key, d / "ca-key.pem"), check=True, capture_output=True)
        openssl("openssl", "req", "-new", "-config", d / "intermediate.conf",
                "-key", d / "ca-key.pem", "-out", d / "cluster-ca.csr")
        openssl("openssl", "x509", "-req", "-days", "730", "-CA", work / "root-cert.pem",
                "-CAkey", work / "root-key.pem", "-CAcreateserial",
                "-CAserial", work / "root-cert.srl", "-extensions", "req_ext",
                "-extfile", d / "intermediate.conf", "-in", d / "cluster-ca.csr",
                "-out", d / "ca-cert.pem")
        (d / "cert-chain.pem").write_bytes((d / "ca-cert.pem").read_bytes()
                                           + (work / "root-cert.pem").read_bytes())
        shutil.copyfile(work / "root-cert.pem", d / "root-cert.pem")
    return time.perf_counter() - start


def run_meshctl(work: Path, key: str, count: int) -> float:
    settings = config.CASettings(dir=work / "ca", key=key, root_days=3650,
                                 intermediate_days=730, organization="meshctl")
    start = time.perf_counter()
    root, _ = certs.init_root(settings)
    for i in range(count):
        certs.ensure_intermediate(root, f"cluster{i}", settings)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", default="rsa-4096", choices=("rsa-2048", "rsa-4096",
                                                              "ecdsa-p256"))
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    version = subprocess.run(["openssl", "version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    ours, theirs = [], []
    with tempfile.TemporaryDirectory(prefix="bench-certs-") as tmp:
        for r in range(args.repeat):
            for name, fn, times in (("openssl", run_openssl, theirs),
                                    ("meshctl", run_meshctl, ours)):
                work = Path(tmp) / f"{name}-{r}"
                work.mkdir()
                times.append(fn(work, args.key, args.count))
    m, o = statistics.median(ours), statistics.median(theirs)
    print(f"root + {args.count} intermediates, {args.key}, {args.repeat} runs each "
          f"(interleaved), {version}")
    print(f"  openssl CLI (Istio tools/certs commands): median {o:6.2f}s  runs "
          + " ".join(f"{t:.2f}" for t in theirs))
    print(f"  meshctl (certs.init_root + ensure_intermediate): median {m:6.2f}s  runs "
          + " ".join(f"{t:.2f}" for t in ours))
    print(f"  ratio meshctl/openssl: {m / o:.2f}x (target <= 1.1x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
