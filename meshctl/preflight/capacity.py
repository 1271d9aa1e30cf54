"""Resource sufficiency as pure arithmetic: pods and nodes (raw JSON) in, a verdict out.

Why placement and not totals: a cluster with 3 × 1 CPU free cannot run a 2-CPU pod,
and istiod stuck Pending is exactly the failure preflight exists to predict.  So the
demand is placed the way a scheduler would have to place it: istiod first (it must
fit on one node), then the rest first-fit-decreasing.  Sidecars are identical items,
so they are placed in bulk (node by node) instead of one by one: the same result as
FFD over identical items, without an items × nodes loop on a 150,000-pod cluster.

Units are integers (millicores, bytes, pod slots) so sums never drift.  Quantities
go through ``kubernetes.utils.parse_quantity``, cached per distinct string: a large
cluster has few distinct request strings and many pods.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from kubernetes.utils import parse_quantity

GI = 1024**3
MI = 1024**2
TERMINAL_PHASES = ("Succeeded", "Failed")
# Taint effects that keep a pod without a matching toleration off a node.
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


# --- quantities ------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def millicores(value: str) -> int:
    """``"250m"`` → 250, ``"2"`` → 2000 (rounded up, as the scheduler does)."""
    return math.ceil(parse_quantity(value) * 1000)


@lru_cache(maxsize=4096)
def bytes_of(value: str) -> int:
    return math.ceil(parse_quantity(value))


def fmt_cpu(milli: int) -> str:
    """``500`` → ``500m``, ``1400`` → ``1.4``: how people write CPU."""
    if milli % 1000 == 0:
        return str(milli // 1000)
    if milli < 1000:
        return f"{milli}m"
    return f"{milli / 1000:.1f}".rstrip("0").rstrip(".")


def fmt_memory(value: int) -> str:
    """``2147483648`` → ``2Gi``, ``943718400`` → ``900Mi``."""
    if value >= GI:
        text = f"{value / GI:.1f}".rstrip("0").rstrip(".")
        return f"{text}Gi"
    return f"{math.ceil(value / MI)}Mi"


# --- pods --------------------------------------------------------------------------------


def _requests(container: Mapping[str, Any]) -> tuple[int, int]:
    req = (container.get("resources") or {}).get("requests") or {}
    cpu = req.get("cpu")
    mem = req.get("memory")
    return (millicores(str(cpu)) if cpu is not None else 0,
            bytes_of(str(mem)) if mem is not None else 0)


def pod_requests(pod: Mapping[str, Any]) -> tuple[int, int]:
    """CPU (m) and memory (bytes) the scheduler reserves for ``pod``.

    As the scheduler computes it: app containers summed; restartable init containers
    (native sidecars) run alongside them and add to the sum; each ordinary init
    container runs alone (plus the sidecars started before it), so the pod needs the
    larger of that and the sum; pod overhead on top.
    """
    spec = pod.get("spec") or {}
    cpu = mem = 0
    for c in spec.get("containers") or ():
        c_cpu, c_mem = _requests(c)
        cpu += c_cpu
        mem += c_mem
    side_cpu = side_mem = init_cpu = init_mem = 0
    for c in spec.get("initContainers") or ():
        c_cpu, c_mem = _requests(c)
        if c.get("restartPolicy") == "Always":
            side_cpu += c_cpu
            side_mem += c_mem
        else:
            init_cpu = max(init_cpu, side_cpu + c_cpu)
            init_mem = max(init_mem, side_mem + c_mem)
    cpu, mem = max(cpu + side_cpu, init_cpu), max(mem + side_mem, init_mem)
    overhead = spec.get("overhead") or {}
    if "cpu" in overhead:
        cpu += millicores(str(overhead["cpu"]))
    if "memory" in overhead:
        mem += bytes_of(str(overhead["memory"]))
    return cpu, mem


def is_active(pod: Mapping[str, Any]) -> bool:
    """Non-terminated: the scheduler still counts its requests on its node."""
    return (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES


# --- nodes -------------------------------------------------------------------------------


@dataclass
class Node:
    """What is left of one node: allocatable minus the requests of its pods."""

    name: str
    cpu: int
    memory: int
    pods: int
    excluded: str = ""  # why Istio pods cannot go here ("" = eligible)
    used_cpu: int = 0
    used_memory: int = 0
    used_pods: int = 0

    @property
    def free_cpu(self) -> int:
        return self.cpu - self.used_cpu

    @property
    def free_memory(self) -> int:
        return self.memory - self.used_memory

    @property
    def free_pods(self) -> int:
        return self.pods - self.used_pods


def _ready(node: Mapping[str, Any]) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def exclusion(node: Mapping[str, Any]) -> str:
    """Why no Istio pod would be scheduled on ``node``; "" when one would.

    istiod and gateways carry no tolerations of their own, so any NoSchedule or
    NoExecute taint keeps them off (cordoning adds such a taint too).
    """
    spec = node.get("spec") or {}
    if not _ready(node):
        return "NotReady"
    if spec.get("unschedulable"):
        return "cordoned"
    for taint in spec.get("taints") or ():
        if taint.get("effect") in BLOCKING_EFFECTS:
            value = f"={taint['value']}" if taint.get("value") else ""
            return f"taint {taint.get('key')}{value}:{taint.get('effect')}"
    return ""


def node_from(node: Mapping[str, Any]) -> Node:
    alloc = (node.get("status") or {}).get("allocatable") or {}
    return Node(name=node["metadata"]["name"],
                cpu=millicores(str(alloc.get("cpu", "0"))),
                memory=bytes_of(str(alloc.get("memory", "0"))),
                pods=int(parse_quantity(str(alloc.get("pods", "0")))),
                excluded=exclusion(node))


# --- demand and placement ----------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """Something to place: ``count`` identical pods of ``cpu``/``memory`` each."""

    name: str
    cpu: int
    memory: int
    count: int = 1
    slot: bool = True  # takes a pod slot (a sidecar joins an existing pod: no)
    first: bool = False  # placed before everything else (istiod: the one that must run)


@dataclass
class Placement:
    """The outcome: what did not fit, and the numbers a message needs."""

    unplaced: dict[str, int] = field(default_factory=dict)  # item name -> pods left over
    short_cpu: int = 0
    short_memory: int = 0
    short_pods: int = 0
    unplaced_cpu: int = 0
    unplaced_memory: int = 0

    @property
    def ok(self) -> bool:
        return not self.unplaced


def _share(item: Item, nodes: list[Node]) -> float:
    """The FFD sort key: the item's larger share of the biggest node's CPU or memory."""
    top_cpu = max((n.cpu for n in nodes), default=1) or 1
    top_mem = max((n.memory for n in nodes), default=1) or 1
    return max(item.cpu / top_cpu, item.memory / top_mem)


def _fits(node: Node, item: Item, cpu: int, mem: int, pods: int) -> int:
    """How many of ``item`` fit in the remaining ``cpu``/``mem``/``pods`` of a node."""
    limits = []
    if item.cpu:
        limits.append(cpu // item.cpu)
    if item.memory:
        limits.append(mem // item.memory)
    if item.slot:
        limits.append(pods)
    return max(0, min(limits)) if limits else item.count


def place(nodes: Iterable[Node], items: Iterable[Item]) -> Placement:
    """First-fit-decreasing of ``items`` onto the eligible ``nodes``."""
    eligible = [n for n in nodes if not n.excluded]
    free = {n.name: [max(0, n.free_cpu), max(0, n.free_memory), max(0, n.free_pods)]
            for n in eligible}
    result = Placement()
    ordered = sorted(items, key=lambda i: (i.first, _share(i, eligible)), reverse=True)
    for item in ordered:
        left = item.count
        for n in eligible:
            if left == 0:
                break
            cpu, mem, pods = free[n.name]
            k = min(left, _fits(n, item, cpu, mem, pods))
            if k:
                free[n.name] = [cpu - k * item.cpu, mem - k * item.memory,
                                pods - (k if item.slot else 0)]
                left -= k
        if left:
            result.unplaced[item.name] = left
            result.unplaced_cpu += left * item.cpu
            result.unplaced_memory += left * item.memory
    demand_cpu = sum(i.cpu * i.count for i in ordered)
    demand_mem = sum(i.memory * i.count for i in ordered)
    demand_pods = sum(i.count for i in ordered if i.slot)
    result.short_cpu = max(0, demand_cpu - sum(max(0, n.free_cpu) for n in eligible))
    result.short_memory = max(0, demand_mem - sum(max(0, n.free_memory) for n in eligible))
    result.short_pods = max(0, demand_pods - sum(max(0, n.free_pods) for n in eligible))
    return result


def node_size(cpu: int, memory: int) -> tuple[int, int]:
    """A node size people can order: CPUs and GiB, powers of two, at least 2 / 4Gi."""
    cores = max(2, 2 ** math.ceil(math.log2(max(1, math.ceil(cpu / 1000)))))
    gib = max(4, 2 ** math.ceil(math.log2(max(1, math.ceil(memory / GI)))))
    return cores, gib
