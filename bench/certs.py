"""Bench: a root + N intermediates with meshctl vs Istio's ``tools/certs`` openssl commands.

Usage: ``.venv/bin/python bench/certs.py [--key rsa-4096] [--count 20] [--repeat 3]
[--gil-keys 4]``

Both sides do the same work in the same run, into fresh temporary folders: the
root key, certificate, and per cluster the intermediate key, certificate, cert-chain
and a copy of the root certificate.  The baseline runs the openssl commands of
Istio's ``Makefile.selfsigned.mk`` / ``common.mk`` (``genrsa``, ``req -new -config``,
``x509 -req -extfile``) with the same key type; the config files and the
``cat``/``cp`` steps are done in Python for it, which only flatters the baseline.
meshctl's side is ``certs.init_root`` + ``certs.ensure_intermediates`` (atomic,
fsynced writes included), the path ``certs.issue`` and bootstrap take, which generates
the intermediates' keys on one thread per CPU; beside it, the same work one
``certs.ensure_intermediate`` per cluster (keys one after another: the path before).
RSA key generation time varies a lot from key to key (prime search), so each side
runs ``--repeat`` times, interleaved, and the medians are compared.

First, the measurement that decides threads over processes: ``--gil-keys`` keys made
one after another vs on 2 threads (``pki.generate_keys``).  If ``cryptography`` held
the GIL during key generation the two would take the same time; on 2 free cores,
released, the threads take about half (the CPU seconds per wall second it prints say
how many cores were free).  And a pure-Python loop beside a key-generating thread,
which would stall (near 0 of its rate alone) if generation held the GIL.  Prints
figures; asserts nothing (tests hold no timing asserts; figures live here, beside a
baseline measured in the same run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from meshctl import config
from meshctl.ca import certs, pki

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


def _settings(work: Path, key: str) -> config.CASettings:
    return config.CASettings(dir=work / "ca", key=key, root_days=3650,
                             intermediate_days=730, organization="meshctl")


def run_meshctl(work: Path, key: str, count: int) -> float:
    """The production path: one call for every cluster, keys generated in parallel."""
    settings = _settings(work, key)
    start = time.perf_counter()
    root, _ = certs.init_root(settings)
    certs.ensure_intermediates(root, [f"cluster{i}" for i in range(count)], settings)
    return time.perf_counter() - start


def run_meshctl_serial(work: Path, key: str, count: int) -> float:
    """The path before: one ensure_intermediate per cluster, one key after another."""
    settings = _settings(work, key)
    start = time.perf_counter()
    root, _ = certs.init_root(settings)
    for i in range(count):
        certs.ensure_intermediate(root, f"cluster{i}", settings)
    return time.perf_counter() - start


def _spin_rate(until) -> float:
    """Iterations a second of a pure-Python loop, run until ``until()`` is true."""
    n, start = 0, time.perf_counter()
    while not until():
        n += 1
    return n / (time.perf_counter() - start)


def gil_check(key: str, count: int, repeat: int) -> None:
    """Does ``cryptography`` release the GIL while it generates a key?  Two measures.

    1. ``count`` keys one after another vs on 2 threads, interleaved, ``repeat`` times,
       with the CPU time the process used per second of wall time for the threads (2.0
       if both cores were ours; other load on the machine lowers it and the speed-up).
    2. A pure-Python loop's rate while another thread generates keys, against its rate
       alone: near 0 if generation held the GIL (the loop would wait for each key).
    """
    serial, threads, usage = [], [], []
    for _ in range(repeat):
        for workers, times in ((1, serial), (2, threads)):
            start, cpu = time.perf_counter(), os.times()
            pki.generate_keys(key, count, workers=workers)
            wall, after = time.perf_counter() - start, os.times()
            times.append(wall)
            if workers == 2:
                usage.append((after.user - cpu.user + after.system - cpu.system) / wall)
    alone_until = time.perf_counter() + 1.0
    alone = _spin_rate(lambda: time.perf_counter() >= alone_until)
    worker = threading.Thread(target=pki.generate_keys, args=(key, count), kwargs={"workers": 1})
    worker.start()
    beside = _spin_rate(lambda: not worker.is_alive())
    worker.join()
    s, t = statistics.median(serial), statistics.median(threads)
    print(f"GIL check: {count} {key} keys, {repeat} runs each, {pki.cpus()} CPUs")
    print(f"  one after another: median {s:6.2f}s  runs " + " ".join(f"{x:.2f}" for x in serial))
    print(f"  2 threads:         median {t:6.2f}s  runs " + " ".join(f"{x:.2f}" for x in threads)
          + "  (CPU s per wall s: " + " ".join(f"{u:.2f}" for u in usage) + ")")
    print(f"  speed-up {s / t:.2f}x (1.0x if key generation held the GIL, up to 2.0x if not)")
    print(f"  a Python loop beside a key-generating thread ran at {beside / alone:.2f} of its "
          f"rate alone (near 0 if generation held the GIL)")
    released = s / t > 1.3 or beside / alone > 0.2
    print(f"  GIL {'released: threads run in parallel' if released else 'apparently held'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", default="rsa-4096", choices=("rsa-2048", "rsa-4096",
                                                              "ecdsa-p256"))
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gil-keys", type=int, default=4,
                        help="keys for the GIL check, serial vs 2 threads (0: skip it)")
    args = parser.parse_args(argv)
    version = subprocess.run(["openssl", "version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    load = os.getloadavg()[0]  # other work on the machine takes cores from the threads
    if args.gil_keys and args.key.startswith("rsa-"):
        gil_check(args.key, args.gil_keys, args.repeat)
    ours, serial, theirs = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-certs-") as tmp:
        for r in range(args.repeat):
            for name, fn, times in (("openssl", run_openssl, theirs),
                                    ("serial", run_meshctl_serial, serial),
                                    ("meshctl", run_meshctl, ours)):
                work = Path(tmp) / f"{name}-{r}"
                work.mkdir()
                times.append(fn(work, args.key, args.count))
    m, s, o = statistics.median(ours), statistics.median(serial), statistics.median(theirs)
    print(f"root + {args.count} intermediates, {args.key}, {args.repeat} runs each "
          f"(interleaved), {version}, {pki.cpus()} CPUs, load average {load:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    print(f"  openssl CLI (Istio tools/certs commands):   median {o:6.2f}s  runs "
          + " ".join(f"{t:.2f}" for t in theirs))
    print(f"  meshctl, one ensure_intermediate a cluster: median {s:6.2f}s  runs "
          + " ".join(f"{t:.2f}" for t in serial))
    print(f"  meshctl, ensure_intermediates (parallel):   median {m:6.2f}s  runs "
          + " ".join(f"{t:.2f}" for t in ours))
    print(f"  ratio meshctl/openssl: {m / o:.2f}x parallel, {s / o:.2f}x one a cluster "
          f"(target <= 0.2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
