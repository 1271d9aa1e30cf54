"""Bootstrap fan-out on the sandbox: 1 main + 1 remote against 1 main + N remotes.

Each run starts a fresh sandbox of N+1 clusters and measures, on it: a first bootstrap
of 1+1 (the baseline, same run), its re-run and teardown; then the same for 1+N.  It
prints every run and the medians, with the write requests meshctl sent and the number
of istioctl processes (counted by a wrapper that logs each call, then execs the real
istioctl), and how long the first bootstrap spent in each phase of the flow.  Before
each measurement it waits until the machine is idle, so no run pays for the one before.
Targets: 1+N at most 1.5x of 1+1 (the median of the per-run ratios, each 1+N against
the 1+1 of its own run, 3 runs); re-run at most 25% of the first run with 0 writes.

    python bench/bootstrap_fanout.py [--remotes 4] [--runs 3] [--one-network]
    python bench/bootstrap_fanout.py --repeat 5      # stress: 1+N from fresh sandboxes

All clusters are primaries (multi-primary: every cluster holds every other's secret,
the heavier case); by default each has its own network and east-west gateway.  Needs
the sandbox binaries (meshctl sandbox.build); runs against loopback only.  A failed
run is one line with its cause, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from meshctl import config, topology
from meshctl.errors import MeshctlError
from meshctl.mesh import bootstrap, flow
from meshctl.sandbox import build as sandbox_build
from meshctl.sandbox import lifecycle as sandbox


def folder(base: Path, sb: sandbox.Sandbox, names: list[str], multi_network: bool) -> Path:
    out = base / f"clusters-{len(names)}"
    out.mkdir(parents=True)
    for i, name in enumerate(names):
        doc = yaml.safe_load((sb.clusters_dir / f"{name}.yaml").read_text())
        doc["network"] = f"network{i + 1}" if multi_network else "network1"
        (out / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    mesh = yaml.safe_load((sb.clusters_dir / "mesh.yaml").read_text())
    mesh["ca"]["dir"] = str(base / "ca")
    (out / "mesh.yaml").write_text(yaml.safe_dump(mesh))
    return out


class Istioctl:
    """A wrapper script in front of the real istioctl that counts its processes."""

    def __init__(self, base: Path, real: Path) -> None:
        self.log = base / "istioctl.log"
        self.path = base / "istioctl"
        self.path.write_text(f'#!/bin/sh\necho "$1" >> "{self.log}"\nexec "{real}" "$@"\n')
        self.path.chmod(0o755)
        os.environ["MESHCTL_ISTIOCTL"] = str(self.path)

    def calls(self) -> int:
        try:
            return len(self.log.read_text().splitlines())
        except FileNotFoundError:
            return 0


PHASE = "phase: "  # key prefix of the per-phase seconds in a measurement


def failure(e: Exception) -> str:
    """A failed run as one line: meshctl's own message, or a bug's type and message."""
    return str(e) if isinstance(e, MeshctlError) else f"{type(e).__name__}: {e}"


class PhaseClock:
    """Seconds spent in each phase of the flow, from the ``step N/M … done`` lines.

    A phase starts when the one before it ended (phases never overlap) and ends with its
    last step, so the phases add up to the whole run.
    """

    def __init__(self, steps: list[flow.Step]) -> None:
        self.phase_of = {i: s.phase for i, s in enumerate(steps, start=1)}
        self.ends: dict[str, float] = {}
        self.start = time.perf_counter()

    def progress(self, cluster: str, message: str) -> None:
        del cluster
        words = message.split()
        if len(words) > 2 and words[0] == "step" and words[-1] == "done":
            number = int(words[1].split("/")[0])
            self.ends[self.phase_of[number]] = time.perf_counter()

    def spent(self) -> dict[str, float]:
        out, last = {}, self.start
        for phase in dict.fromkeys(self.phase_of.values()):
            end = self.ends.get(phase, last)
            out[phase], last = end - last, end
        return out


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait, all


def settle(*, idle: float = 0.6, window: float = 1.0, timeout: float = 60.0) -> float:
    """Wait until the machine is mostly idle for two windows running; the seconds waited.

    A measurement must not pay for the previous one's leftovers (an istiod still
    stopping, a namespace still being emptied): on 2 cores they cost seconds.
    """
    start, quiet = time.perf_counter(), 0
    while time.perf_counter() - start < timeout and quiet < 2:
        idle0, all0 = _cpu_times()
        time.sleep(window)
        idle1, all1 = _cpu_times()
        quiet = quiet + 1 if (idle1 - idle0) >= idle * max(all1 - all0, 1) else 0
    return time.perf_counter() - start


def measure(base: Path, sb: sandbox.Sandbox, names: list[str], multi_network: bool,
            ctl: Istioctl) -> dict[str, float]:
    cfg = config.load(folder(base, sb, names, multi_network))
    settled = settle()
    plan = topology.plan(cfg, names[0], names[1:])
    before = ctl.calls()
    clock = PhaseClock(flow.steps(cfg, plan))
    start = clock.start
    first = bootstrap.run(cfg, plan, progress=clock.progress)
    first_s = time.perf_counter() - start
    procs = ctl.calls() - before
    start = time.perf_counter()
    again = bootstrap.run(cfg, plan)
    rerun_s = time.perf_counter() - start
    start = time.perf_counter()
    bootstrap.teardown(cfg, plan)
    return {"first": first_s, "first_writes": first.mutations, "rerun": rerun_s,
            "rerun_writes": again.mutations, "teardown": time.perf_counter() - start,
            "istioctl": procs, "settle": settled,
            **{PHASE + k: v for k, v in clock.spent().items()}}



def one_run(base: Path, bins: Path, count: int, multi_network: bool,
            only_large: bool = False) -> tuple[dict[str, float] | None, dict[str, float]]:
    ctl = Istioctl(base, bins / "istioctl")
    start = time.perf_counter()
    sb = sandbox.up(base / "sandbox", clusters=count, nodes=1, cpu="8", memory="16Gi",
                    binaries=bins)
    print(f"  sandbox: {count} clusters up in {time.perf_counter() - start:.1f}s", flush=True)
    try:
        names = [c.name for c in sb.clusters]
        small = None if only_large else measure(base / "a", sb, names[:2], multi_network, ctl)
        large = measure(base / "b", sb, names, multi_network, ctl)
    finally:
        sandbox.down(base / "sandbox")
    return small, large


def report(runs: list[tuple[dict[str, float], dict[str, float]]], remotes: int) -> None:
    print(f"\n{'median of ' + str(len(runs)) + ' runs':28}{'1+1 (baseline)':>16}"
          f"{f'1+{remotes}':>10}{'ratio':>8}")
    print("(each column is its own median; the target is the median of the per-run "
          "ratios, below)")
    for key, label in (("first", "first bootstrap, s"), ("rerun", "re-run, s"),
                       ("teardown", "teardown, s"), ("istioctl", "istioctl processes"),
                       ("first_writes", "writes, first run"),
                       ("settle", "idle wait before, s"),
                       ("rerun_writes", "writes, re-run")):
        small = statistics.median(r[0][key] for r in runs)
        large = statistics.median(r[1][key] for r in runs)
        ratio = f"{large / small:>7.2f}x" if small else ""
        print(f"{label:28}{small:>16.1f}{large:>10.1f}{ratio}")
    for key in (k for k in runs[0][1] if k.startswith(PHASE)):
        small = statistics.median(r[0].get(key, 0.0) for r in runs)
        large = statistics.median(r[1].get(key, 0.0) for r in runs)
        ratio = f"{large / small:>7.2f}x" if small >= 0.05 else ""
        print(f"{'  ' + key[len(PHASE):] + ', s':28}{small:>16.1f}{large:>10.1f}{ratio}")
    ratios = [r[1]["first"] / r[0]["first"] for r in runs]
    print(f"\n1+{remotes} vs 1+1, per run: {', '.join(f'{x:.2f}x' for x in ratios)}; "
          f"median {statistics.median(ratios):.2f}x (target <= 1.5x)")
    pairs = [r[i] for r in runs for i in (0, 1)]
    reruns = [p["rerun"] / p["first"] for p in pairs]
    clean = "yes" if all(p["rerun_writes"] == 0 for p in pairs) else "NO"
    print(f"re-run vs first run: {min(reruns):.0%}-{max(reruns):.0%} (target <= 25%; "
          f"0 writes: {clean})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remotes", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=0,
                        help="stress: bootstrap 1+N from this many fresh sandboxes")
    parser.add_argument("--one-network", action="store_true")
    args = parser.parse_args()
    bins = sandbox_build.locate()
    if bins is None:
        print("sandbox binaries missing: run 'meshctl sandbox.build'", file=sys.stderr)
        return 2
    count, multi = args.remotes + 1, not args.one_network
    if args.repeat:
        ok = 0
        for i in range(args.repeat):
            print(f"stress run {i + 1}/{args.repeat}:", flush=True)
            with tempfile.TemporaryDirectory(prefix="meshctl-bench-") as tmp:
                try:
                    _, large = one_run(Path(tmp), bins, count, multi, only_large=True)
                    ok += 1
                    print(f"  1+{args.remotes}: {large['first']:.1f}s, "
                          f"{large['istioctl']:.0f} istioctl processes")
                except Exception as e:  # one line each, and the next run goes on
                    print(f"  failed: {failure(e)}")
        print(f"\nstress: {ok}/{args.repeat} bootstraps of 1+{args.remotes} succeeded")
        return 0 if ok == args.repeat else 1
    runs = []
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}:", flush=True)
        with tempfile.TemporaryDirectory(prefix="meshctl-bench-") as tmp:
            try:
                small, large = one_run(Path(tmp), bins, count, multi)
            except Exception as e:  # one line with its cause, never a traceback
                print(f"  failed: {failure(e)}")
                return 1
        assert small is not None
        print(f"  1+1 {small['first']:.1f}s ({small['istioctl']:.0f} istioctl), "
              f"1+{args.remotes} {large['first']:.1f}s ({large['istioctl']:.0f} istioctl): "
              f"{large['first'] / small['first']:.2f}x", flush=True)
        runs.append((small, large))
    report(runs, args.remotes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
