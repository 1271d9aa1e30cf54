"""The resource-sufficiency check: what the mesh will ask of a cluster, and whether it fits.

Demand comes from what meshctl will install, not from guesses: istiod's requests
and replicas from the values it renders (Istio's defaults, 500m / 2Gi, unless
``mesh.yaml``'s ``istio.values.pilot`` overrides them), one pod per gateway the
plan puts on the cluster, and one sidecar (``istio.sidecar``) per existing pod in
``injectNamespaces``, since each of those pods comes back with a proxy on restart.
The verdict is by placement (``capacity.place``), and a FAIL says by how
much and what to add, in sizes people can order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from meshctl.config import Config
from meshctl.preflight import capacity as cap
from meshctl.preflight.checks import FAIL, PASS, Result, result
from meshctl.preflight.facts import Facts, merged_nodes

ISTIOD = ("500m", "2048Mi")
GATEWAY = ("100m", "128Mi")


def _requests(component: Mapping[str, Any], default: tuple[str, str]) -> tuple[int, int]:
    req = (component.get("resources") or {}).get("requests") or {}
    return (cap.millicores(str(req.get("cpu", default[0]))),
            cap.bytes_of(str(req.get("memory", default[1]))))


def _replicas(component: Mapping[str, Any]) -> int:
    """``replicaCount``, raised to ``autoscaleMin`` while the HPA is on (Istio's default)."""
    count = int(component.get("replicaCount") or 1)
    if component.get("autoscaleEnabled", True):
        count = max(count, int(component.get("autoscaleMin") or 1))
    return count


def demand(facts: Facts, values: Mapping[str, Any], sidecar: tuple[int, int]) -> list[cap.Item]:
    """What the mesh adds to this cluster, as items to place.

    Pods of it that already run (a re-run, or a partial earlier install) are in the
    nodes' used sums already: only the missing ones are demanded again.
    """
    items: list[cap.Item] = []
    fp = facts.footprint
    running = facts.istio_pods
    if fp.istiod:
        pilot = values.get("pilot") or {}
        cpu, mem = _requests(pilot, ISTIOD)
        missing = max(0, _replicas(pilot) - running.get("istiod", 0))
        items += [cap.Item(f"istiod#{i + 1}", cpu, mem, first=True) for i in range(missing)]
    gateway = (values.get("gateways") or {}).get("istio-ingressgateway") or {}
    gw_cpu, gw_mem = _requests(gateway, GATEWAY)
    ingress = _replicas(gateway) - running.get("istio-ingressgateway", 0)
    if fp.ingress_gateway and ingress > 0:
        items.append(cap.Item("istio-ingressgateway", gw_cpu, gw_mem, ingress))
    if fp.east_west_gateway and not running.get("istio-eastwestgateway"):
        items.append(cap.Item("istio-eastwestgateway", gw_cpu, gw_mem))
    injected = sum(facts.inject_pods.values())
    if injected:
        items.append(cap.Item("sidecars", sidecar[0], sidecar[1], injected, slot=False))
    return items


def check(facts: Facts, config: Config) -> Result:
    """PASS when everything the mesh adds can be placed; FAIL with the deficit and fix."""
    if facts.nodes_error or facts.pods_error:
        why = facts.nodes_error or facts.pods_error
        return result(facts, "resources", FAIL, f"cannot read nodes and pods: {why}",
                      hint="the context needs 'list nodes' and 'list pods' (all namespaces)")
    sidecar = (cap.millicores(config.mesh.istio.sidecar.cpu),
               cap.bytes_of(config.mesh.istio.sidecar.memory))
    items = demand(facts, config.mesh.istio.values, sidecar)
    nodes = merged_nodes(facts)
    placed = cap.place(nodes, items)
    numbers = _numbers(nodes, items, placed, sum(facts.inject_pods.values()))
    if placed.ok:
        return result(facts, "resources", PASS,
                      f"fits: needs {cap.fmt_cpu(numbers['demandCpuMilli'])} CPU/"
                      f"{cap.fmt_memory(numbers['demandMemoryBytes'])} "
                      f"({_what(items)}); free {cap.fmt_cpu(numbers['freeCpuMilli'])} CPU/"
                      f"{cap.fmt_memory(numbers['freeMemoryBytes'])} on "
                      f"{numbers['eligibleNodes']} node(s)", **numbers)
    message, hint = _deficit(nodes, items, placed)
    return result(facts, "resources", FAIL, message, hint=hint, **numbers)


def _what(items: list[cap.Item]) -> str:
    """``istiod, istio-ingressgateway, 20 sidecars``: the demand in words."""
    counts: dict[str, int] = {}
    for i in items:
        base = i.name.split("#")[0]
        counts[base] = counts.get(base, 0) + i.count
    return ", ".join(k if n == 1 else f"{n} {k}" for k, n in counts.items()) or "nothing"


def _numbers(nodes: list[cap.Node], items: list[cap.Item], placed: cap.Placement,
             injected: int) -> dict[str, Any]:
    eligible = [n for n in nodes if not n.excluded]
    return {
        "eligibleNodes": len(eligible),
        "freeCpuMilli": sum(max(0, n.free_cpu) for n in eligible),
        "freeMemoryBytes": sum(max(0, n.free_memory) for n in eligible),
        "freePods": sum(max(0, n.free_pods) for n in eligible),
        "demandCpuMilli": sum(i.cpu * i.count for i in items),
        "demandMemoryBytes": sum(i.memory * i.count for i in items),
        "demandPods": sum(i.count for i in items if i.slot),
        "sidecars": injected,
        "shortCpuMilli": placed.short_cpu,
        "shortMemoryBytes": placed.short_memory,
        "shortPods": placed.short_pods,
        "unplaced": dict(placed.unplaced),
    }


def _largest(nodes: list[cap.Node], item: cap.Item) -> cap.Node | None:
    """The eligible node that comes closest to holding ``item``."""
    eligible = [n for n in nodes if not n.excluded]

    def closeness(n: cap.Node) -> float:
        return min(n.free_cpu / max(1, item.cpu), n.free_memory / max(1, item.memory))

    return max(eligible, key=closeness, default=None)


def _deficit(nodes: list[cap.Node], items: list[cap.Item],
             placed: cap.Placement) -> tuple[str, str]:
    """The FAIL line: how much is missing, why istiod does not fit, and what to add."""
    parts = []
    short = [f"{cap.fmt_cpu(placed.short_cpu)} CPU" if placed.short_cpu else "",
             f"{cap.fmt_memory(placed.short_memory)} memory" if placed.short_memory else "",
             f"{placed.short_pods} pod slots" if placed.short_pods else ""]
    if any(short):
        parts.append("short " + ", ".join(s for s in short if s))
    istiod = next((i for i in items if i.first and i.name in placed.unplaced), None)
    if istiod:
        big = _largest(nodes, istiod)
        has = (f"largest free node has {cap.fmt_cpu(max(0, big.free_cpu))}/"
               f"{cap.fmt_memory(max(0, big.free_memory))}" if big else "no schedulable node")
        parts.append(f"istiod needs {cap.fmt_cpu(istiod.cpu)}/{cap.fmt_memory(istiod.memory)} "
                     f"on one node, {has}")
    others = {k: v for k, v in placed.unplaced.items() if not k.startswith("istiod")}
    if others and not any(short):
        listed = ", ".join(f"{v} {k}" for k, v in others.items())
        parts.append(f"{listed} fit in total but on no single node")
    elif others and not istiod:
        parts.append("left over: " + ", ".join(f"{v} {k}" for k, v in others.items()))
    return "; ".join(parts) or "does not fit", _fix(nodes, placed)


def _fix(nodes: list[cap.Node], placed: cap.Placement) -> str:
    need_cpu = max(placed.unplaced_cpu, placed.short_cpu)
    need_mem = max(placed.unplaced_memory, placed.short_memory)
    if not need_cpu and not need_mem:
        return "add a node, or raise the kubelet's maxPods"
    cores, gib = cap.node_size(need_cpu, need_mem)
    fix = f"add a node with ≥ {cores} CPU/{gib}Gi"
    if len(nodes) == 1:  # one node: most likely minikube or kind on a laptop
        node = nodes[0]
        total_cores, total_gib = cap.node_size(node.cpu + need_cpu, node.memory + need_mem)
        fix += (f", or start minikube with --cpus={total_cores} "
                f"--memory={math.ceil(total_gib)}g")
    return fix


def revision_check(facts: Facts, config: Config, revision: str) -> Result:
    """Can a second istiod (an upgrade's revision ``revision``) run beside everything that
    runs now?  The install check's placement with only that istiod demanded: its pods
    are new, while the old revision's stay until the upgrade finishes."""
    if facts.nodes_error or facts.pods_error:
        why = facts.nodes_error or facts.pods_error
        return result(facts, "upgrade resources", FAIL, f"cannot read nodes and pods: {why}",
                      hint="the context needs 'list nodes' and 'list pods' (all namespaces)")
    pilot = config.mesh.istio.values.get("pilot") or {}
    cpu, mem = _requests(pilot, ISTIOD)
    items = [cap.Item(f"istiod-{revision}#{i + 1}", cpu, mem, first=True)
             for i in range(_replicas(pilot))]
    nodes = merged_nodes(facts)
    placed = cap.place(nodes, items)
    numbers = _numbers(nodes, items, placed, 0)
    if placed.ok:
        return result(facts, "upgrade resources", PASS,
                      f"istiod-{revision} fits: needs {cap.fmt_cpu(numbers['demandCpuMilli'])} "
                      f"CPU/{cap.fmt_memory(numbers['demandMemoryBytes'])}; free "
                      f"{cap.fmt_cpu(numbers['freeCpuMilli'])} CPU/"
                      f"{cap.fmt_memory(numbers['freeMemoryBytes'])} on "
                      f"{numbers['eligibleNodes']} node(s)", **numbers)
    message, hint = _deficit(nodes, items, placed)
    return result(facts, "upgrade resources", FAIL, f"a second istiod (istiod-{revision}) "
                  f"does not fit: {message}", hint=hint, **numbers)
