"""Bootstrap fan-out on the sandbox: 1 main + 1 remote against 1 main + N remotes.

Prints, from one run on one sandbox: wall time of a first bootstrap of 1+1 (the
baseline), of 1+N, and of a re-run of each, with the write requests meshctl itself
sent (istioctl's own requests are counted by tests/test_bootstrap.py through a proxy).
Targets (issue 7): 1+N ≤ 2× of 1+1; re-run ≤ 25% of the first run, 0 writes.

    python bench/bootstrap_fanout.py [--remotes 4] [--multi-network/--one-network]

All clusters are primaries (multi-primary: every cluster holds every other's secret,
the heavier case); with --multi-network each has its own network and east-west gateway.
Needs the sandbox binaries (meshctl sandbox.build).  Runs against loopback only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

from meshctl import bootstrap, config, sandbox, topology


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


def timed(cfg: config.Config, plan: topology.Plan) -> tuple[float, int]:
    start = time.perf_counter()
    outcome = bootstrap.run(cfg, plan)
    return time.perf_counter() - start, outcome.mutations


def measure(base: Path, sb: sandbox.Sandbox, names: list[str],
            multi_network: bool) -> dict[str, float]:
    cfg = config.load(folder(base, sb, names, multi_network))
    plan = topology.plan(cfg, names[0], names[1:])
    first, first_writes = timed(cfg, plan)
    again, again_writes = timed(cfg, plan)
    start = time.perf_counter()
    bootstrap.teardown(cfg, plan)
    down = time.perf_counter() - start
    return {"first": first, "first_writes": first_writes, "rerun": again,
            "rerun_writes": again_writes, "teardown": down}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remotes", type=int, default=4)
    parser.add_argument("--one-network", action="store_true")
    args = parser.parse_args()
    bins = sandbox.locate()
    if bins is None:
        print("sandbox binaries missing: run 'meshctl sandbox.build'", file=sys.stderr)
        return 2
    import os

    os.environ.setdefault("MESHCTL_ISTIOCTL", str(bins / "istioctl"))
    count = args.remotes + 1
    with tempfile.TemporaryDirectory(prefix="meshctl-bench-") as tmp:
        base = Path(tmp)
        start = time.perf_counter()
        sb = sandbox.up(base / "sandbox", clusters=count, nodes=1, cpu="8", memory="16Gi",
                        binaries=bins)
        print(f"sandbox: {count} clusters up in {time.perf_counter() - start:.1f}s")
        try:
            names = [c.name for c in sb.clusters]
            small = measure(base / "a", sb, names[:2], not args.one_network)
            large = measure(base / "b", sb, names, not args.one_network)
        finally:
            sandbox.down(base / "sandbox")
    print(f"\n{'':24}{'1+1 (baseline)':>16}{f'1+{args.remotes}':>12}{'ratio':>8}")
    for key, label in (("first", "first bootstrap, s"), ("rerun", "re-run, s"),
                       ("teardown", "teardown, s")):
        print(f"{label:24}{small[key]:>16.1f}{large[key]:>12.1f}"
              f"{large[key] / small[key]:>7.2f}x")
    for key, label in (("first_writes", "writes, first run"), ("rerun_writes", "writes, re-run")):
        print(f"{label:24}{small[key]:>16.0f}{large[key]:>12.0f}")
    print(f"\n1+{args.remotes} vs 1+1: {large['first'] / small['first']:.2f}x (target <= 2x); "
          f"re-run vs first: {small['rerun'] / small['first']:.0%} and "
          f"{large['rerun'] / large['first']:.0%} (target <= 25%, 0 writes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
