"""Upgrade on the sandbox: a full Istio upgrade of 1+1 against 1+N, measured in the same run.

For each size (``--sizes 1,4``: 1 main + 1, 1 main + 4) a fresh sandbox of that many
clusters + 1, all primaries on one network (multi-primary), is bootstrapped by meshctl
with the previous istioctl (the older Istio build beside the pinned one), with one
injected namespace holding a Deployment on every cluster.  Then ``meshctl upgrade`` runs
its three stages with the pinned istioctl, each a subprocess of the console script timed
with ``time.monotonic()``: start (``--to``), ``--move``, ``--finish``.  It prints the
seconds per stage and in total for each size, and the ratio of each size to the smallest
(the baseline, measured in the same round).  Start installs on every cluster in
parallel, so its ratio should stay well under N; finish moves the tags in parallel but
removes the old revision one cluster at a time (remotes first); move goes one cluster
per wave, with verify between waves, so it grows with N by design.

    python bench/upgrade.py [--rounds 1] [--sizes 1,4]

Needs the sandbox binaries with the previous Istio (meshctl sandbox.build); loopback
only.  A sandbox lives in ``$MESHCTL_SANDBOX_DIR`` when set and is stopped whatever
happens.  A failed run is one line with its cause, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from meshctl.errors import MeshctlError
from meshctl.sandbox import build as sandbox_build
from meshctl.sandbox import lifecycle as sandbox

MESHCTL = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "meshctl"
NEW = "canary"  # the revision the upgrade installs
NS = "bench"  # the injected namespace that --move relabels and restarts
STAGES = ("start", "move", "finish")
TIMEOUT = 900.0  # seconds, per meshctl command


class Failed(Exception):
    """A command of the bench failed: its message is the one line printed."""


def folder(base: Path, sb: sandbox.Sandbox) -> Path:
    out = base / "clusters"
    out.mkdir(parents=True)
    for c in sb.clusters:
        doc = yaml.safe_load((sb.clusters_dir / f"{c.name}.yaml").read_text())
        doc.update(role="primary", network="network1", injectNamespaces=[NS])
        (out / f"{c.name}.yaml").write_text(yaml.safe_dump(doc))
    mesh = yaml.safe_load((sb.clusters_dir / "mesh.yaml").read_text())
    mesh["ca"]["dir"] = str(base / "ca")
    (out / "mesh.yaml").write_text(yaml.safe_dump(mesh))
    return out


def timed(what: str, cmd: list[str], env: dict[str, str], timeout: float = TIMEOUT,
          expect: str = "") -> float:
    """Run ``cmd``; its wall seconds, or Failed naming ``what`` with its last line (also
    when its output lacks ``expect``: a stage that did not complete is no measurement)."""
    start = time.monotonic()
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                             check=False)
    except subprocess.TimeoutExpired:
        raise Failed(f"{what}: no exit within {timeout:.0f}s") from None
    if out.returncode != 0 or expect not in out.stdout:
        lines = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()
        raise Failed(f"{what}: exit {out.returncode}: {lines[-1]}")
    return time.monotonic() - start


def one_size(base: Path, bins: Path, remotes: int) -> dict[str, float]:
    """A fresh sandbox of 1 + ``remotes`` clusters: bootstrap old, then upgrade, timed."""
    state = Path(os.environ.get("MESHCTL_SANDBOX_DIR") or base / "sandbox")
    start = time.monotonic()
    sb = sandbox.up(state, clusters=remotes + 1, nodes=1, cpu="16", memory="32Gi",
                    binaries=bins)
    out = {"sandbox up": time.monotonic() - start}
    try:
        clusters = folder(base / f"mesh-{remotes}", sb)
        env = {**os.environ, "COLUMNS": "200", "KUBECONFIG": str(sb.kubeconfig),
               "PATH": f"{bins}{os.pathsep}{os.environ.get('PATH', '')}"}
        names = [c.name for c in sb.clusters]
        for name in names:  # something for --move to relabel and restart
            kubectl = ["kubectl", "--kubeconfig", str(sb.kubeconfig), "--context", name]
            timed("kubectl create namespace", [*kubectl, "create", "namespace", NS], env, 60)
            timed("kubectl create deployment",
                  [*kubectl, "create", "deployment", "web", "-n", NS, "--image=nginx"], env, 60)
        args = ["--main", names[0], *[p for n in names[1:] for p in ("--remote", n)],
                "--clusters-dir", str(clusters)]
        old, new = str(bins / "istioctl-previous"), str(bins / "istioctl")
        out["bootstrap (previous)"] = timed("meshctl bootstrap", [str(MESHCTL), "bootstrap", *args],
                                            {**env, "MESHCTL_ISTIOCTL": old})
        env["MESHCTL_ISTIOCTL"] = new
        for stage, flags in zip(STAGES, (["--to", NEW, "--istioctl", new], ["--move"],
                                         ["--finish", "--istioctl", new]), strict=True):
            out[stage] = timed(f"meshctl upgrade {flags[0]}",
                               [str(MESHCTL), "upgrade", *args, *flags], env,
                               expect=f"-> {NEW}: {stage} done")
        out["total"] = sum(out[s] for s in STAGES)
        return out
    finally:
        sandbox.down(state)


def load() -> str:
    return "load " + ", ".join(f"{x:.1f}" for x in os.getloadavg())


def report(rounds: list[dict[int, dict[str, float]]], sizes: list[int]) -> None:
    base = sizes[0]
    print(f"\n{'median of ' + str(len(rounds)) + ' round(s), s':26}"
          + "".join(f"{f'1+{n}':>10}" for n in sizes)
          + "".join(f"{f'1+{n}/1+{base}':>12}" for n in sizes[1:]))
    for key in (*STAGES, "total", "bootstrap (previous)", "sandbox up"):
        values = [statistics.median(r[n][key] for r in rounds) for n in sizes]
        ratios = [statistics.median(r[n][key] / r[base][key] for r in rounds)
                  for n in sizes[1:]]
        print(f"{key:26}" + "".join(f"{v:>10.1f}" for v in values)
              + "".join(f"{x:>11.2f}x" for x in ratios))
    for n in sizes[1:]:
        per = [r[n]["total"] / r[base]["total"] for r in rounds]
        print(f"full upgrade, 1+{n} vs 1+{base}, per round: "
              f"{', '.join(f'{x:.2f}x' for x in per)} (clusters: {(n + 1) / (base + 1):.1f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sizes", default="1,4", help="remotes per size, the first the baseline")
    args = parser.parse_args()
    try:
        sizes = sorted({int(x) for x in args.sizes.split(",")})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1 or args.rounds < 1:
        print(f"--sizes {args.sizes!r} --rounds {args.rounds}: expected numbers >= 1, "
              "e.g. --sizes 1,4", file=sys.stderr)
        return 2
    bins = sandbox_build.locate(sandbox_build.BINARIES)
    if bins is None or not MESHCTL.exists():
        print("sandbox binaries with the previous Istio, or .venv/bin/meshctl, missing: run "
              "'meshctl sandbox.build' and 'pip install -e .'", file=sys.stderr)
        return 2
    print(f"start: {load()} (2 cores)", flush=True)
    rounds: list[dict[int, dict[str, float]]] = []
    for i in range(args.rounds):
        got: dict[int, dict[str, float]] = {}
        order = sizes if i % 2 == 0 else sizes[::-1]  # neither size always goes first
        for n in order:
            with tempfile.TemporaryDirectory(prefix="mub-") as tmp:
                try:
                    got[n] = one_size(Path(tmp), bins, n)
                except (Failed, MeshctlError, OSError) as e:  # one line, never a traceback
                    print(f"round {i + 1}, 1+{n}: failed: {e}", file=sys.stderr)
                    return 1
            print(f"round {i + 1}, 1+{n}: " + ", ".join(f"{k} {v:.1f}s"
                                                        for k, v in got[n].items())
                  + f"; {load()}", flush=True)
        rounds.append(got)
    report(rounds, sizes)
    print(f"end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
