"""Pytest fixtures over ``meshctl.sandbox``: real clusters, shared per module by shape.

Starting a cluster costs seconds and hundreds of MiB, so within a test module clusters
are reused by every test that asks for the same shape and label, and stopped when the
module ends (a whole-suite run must not keep every module's clusters up at once); isolation
between tests comes from a fresh namespace each (``namespace``).  The fixtures never build:
binaries missing means skip with one line, or fail when ``MESHCTL_REQUIRE_SANDBOX=1``
(CI), so CI can never pass by skipping.  Every sandbox started here is stopped at the
end of the session, also after Ctrl-C (``pytest_sessionfinish`` and ``atexit``).

Every test that uses them must be marked ``@pytest.mark.sandbox`` so that
``pytest -m "not sandbox"`` needs no Go, no built binaries and starts nothing: collection
stops, naming them, for unmarked tests whose fixtures include ``SANDBOX_FIXTURES``
(``pytest_collection_modifyitems``), and a test that still reaches the binaries or starts
a sandbox unmarked (say through ``request.getfixturevalue``) fails there
(``_require_sandbox_marker``).
"""

from __future__ import annotations

import atexit
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from meshctl.sandbox import build as sandbox_build
from meshctl.sandbox import lifecycle as sbx
from meshctl.sandbox.cluster import Shape

DEFAULT_SHAPE = Shape(nodes=3, cpu="4", memory="8Gi", pods=110)

_STARTED: list[Path] = []

#: The fixtures that need the sandbox binaries or a running sandbox.  A test whose fixture
#: closure holds any of them must carry the ``sandbox`` marker (checked at collection).
SANDBOX_FIXTURES = frozenset({"sandbox_bin", "sandbox_bin_previous", "sandbox_factory",
                              "sandbox", "namespace_factory", "namespace"})
MARKER = "sandbox"

# The test being run (setup, call and teardown), for the run-time marker check.
_RUNNING: list[pytest.Item] = []


def _down_all() -> None:
    while _STARTED:
        state = _STARTED.pop()
        try:
            sbx.down(state)
        except Exception as e:  # teardown reports, it must not hide the test result
            print(f"sandbox teardown of {state} failed: {e}")


atexit.register(_down_all)


SLOT_ENV = "MESHCTL_SANDBOX_SLOT"
MAX_SLOT = 9  # meshctl/sandbox/cluster.py: slot()

# Why this worker cannot have a slot of its own (``worker_slot``), reported only when a
# test asks for the sandbox: the fast tier runs on workers too and needs no slot.
_SLOT_PROBLEM: list[str] = []


def worker_slot(base: str | None, worker_id: str) -> int:
    """The sandbox slot of pytest-xdist worker ``gwN``: the run's base slot plus N.

    Two workers (``pytest -m sandbox -n 2``) start their clusters at the same time; each
    slot has its own node addresses, Service ranges and workload addresses, so slots
    ``base`` and ``base + 1`` never bind the same address.  ``base`` is the slot the
    user set (``$MESHCTL_SANDBOX_SLOT``, default 0).  Raises ValueError, in words, when
    the base is not a slot or the worker's slot would be past the last one.
    """
    raw = "0" if base is None else base
    if not raw.isdigit() or int(raw) > MAX_SLOT:
        raise ValueError(f"{SLOT_ENV}={raw!r}: expected a number from 0 to {MAX_SLOT}")
    if not (worker_id.startswith("gw") and worker_id[2:].isdigit()):
        raise ValueError(f"pytest-xdist worker id {worker_id!r} is not gw<N>")
    mine = int(raw) + int(worker_id[2:])
    if mine > MAX_SLOT:
        raise ValueError(f"pytest-xdist worker {worker_id} with {SLOT_ENV}={raw} would need "
                         f"slot {mine}; slots go to {MAX_SLOT} (lower the slot or -n)")
    return mine


def pytest_configure(config: pytest.Config) -> None:
    """On a pytest-xdist worker, give this process (and its children) a slot of its own.

    ``workerinput`` exists only in xdist workers, not in a child pytest that a test runs
    (which inherits the worker's environment, slot already set, and must keep it).
    """
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker is None:
        return
    try:
        os.environ[SLOT_ENV] = str(worker_slot(os.environ.get(SLOT_ENV), worker))
    except ValueError as e:
        _SLOT_PROBLEM.append(str(e))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Covers Ctrl-C: pytest may skip fixture teardown but always finishes the session."""
    _down_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _RUNNING.append(item)
    try:
        yield
    finally:
        _RUNNING.remove(item)


def _require_sandbox_marker(what: str) -> None:
    """Fail the running test if it reaches the sandbox without ``@pytest.mark.sandbox``.

    The collection check (tests/conftest.py) sees only declared fixtures; this one also
    catches ``request.getfixturevalue`` and direct calls, before anything is looked up
    or started.
    """
    if _RUNNING and _RUNNING[-1].get_closest_marker(MARKER) is None:
        pytest.fail(f"{_RUNNING[-1].nodeid} uses {what} but is not marked "
                    f"@pytest.mark.{MARKER}: 'pytest -m \"not {MARKER}\"' must start no "
                    "cluster and need no Go-built binary", pytrace=False)


def unmarked_sandbox_tests(items: list[pytest.Item]) -> list[str]:
    """``nodeid (uses ...)`` for every item that needs the sandbox but is not marked."""
    found = []
    for item in items:
        used = SANDBOX_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if used and item.get_closest_marker(MARKER) is None:
            found.append(f"{item.nodeid} (uses {', '.join(sorted(used))})")
    return found


@pytest.hookimpl(tryfirst=True)  # before -m deselects: the check holds for every selection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stop the collection, naming them, if tests use the sandbox without its marker."""
    unmarked = unmarked_sandbox_tests(items)
    if unmarked:
        raise pytest.UsageError(
            f"{len(unmarked)} test(s) use the sandbox fixtures without "
            f"@pytest.mark.{MARKER} (mark the test, or set pytestmark in its module):\n  "
            + "\n  ".join(unmarked))


def require_bin(names: Sequence[str] = sandbox_build.CURRENT) -> Path:
    """The sandbox bin dir, located without building; skip (or fail in CI) if missing.

    By default the previous Istio (for upgrade tests) is not required.
    """
    _require_sandbox_marker("the sandbox binaries")
    if _SLOT_PROBLEM:
        pytest.fail(_SLOT_PROBLEM[0], pytrace=False)
    found = sandbox_build.locate(names)
    if found is not None:
        return found
    missing = sandbox_build.missing_binaries(sandbox_build.bin_dir(), names)
    reason = (f"sandbox binaries not built (looked in {sandbox_build.bin_dir()}"
              f"{': no ' + ', '.join(missing) if missing else ''}); "
              "run 'meshctl sandbox.build' or set MESHCTL_SANDBOX_BIN")
    if os.environ.get("MESHCTL_REQUIRE_SANDBOX") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@dataclass
class Cluster:
    """One sandbox cluster as a test sees it."""

    name: str
    context: str
    kubeconfig: Path
    api_url: str
    ip: str
    shape: Shape
    _client: k8s.ApiClient | None = field(default=None, repr=False)

    @property
    def kubernetes(self) -> k8s.ApiClient:
        """A ``kubernetes`` ApiClient for this cluster's admin context (made once)."""
        if self._client is None:
            self._client = k8s_config.new_client_from_config(
                config_file=str(self.kubeconfig), context=self.context)
        return self._client

    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.kubernetes)

    def apps(self) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(self.kubernetes)


@dataclass
class SandboxHandle:
    """A running sandbox: its clusters, the clusters dir for --clusters-dir, the binaries."""

    state_dir: Path
    kubeconfig: Path
    clusters_dir: Path
    bin_dir: Path
    clusters: tuple[Cluster, ...]

    def __getitem__(self, key: int | str) -> Cluster:
        if isinstance(key, int):
            return self.clusters[key]
        for c in self.clusters:
            if c.name == key:
                return c
        raise KeyError(key)

    def env(self) -> dict[str, str]:
        """os.environ with the sandbox's binaries first on PATH and its kubeconfig set."""
        return dict(os.environ, PATH=f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                    KUBECONFIG=str(self.kubeconfig),
                    MESHCTL_ISTIOCTL=str(self.bin_dir / "istioctl"))


def _handle(sb: sbx.Sandbox) -> SandboxHandle:
    clusters = tuple(Cluster(name=c.name, context=c.context, kubeconfig=c.kubeconfig,
                             api_url=c.server, ip=c.ip, shape=c.shape) for c in sb.clusters)
    return SandboxHandle(state_dir=sb.state_dir, kubeconfig=sb.kubeconfig,
                         clusters_dir=sb.clusters_dir, bin_dir=sb.bin_dir, clusters=clusters)


SandboxFactory = Callable[..., SandboxHandle]


@pytest.fixture(scope="session")
def sandbox_bin() -> Path:
    """The folder with etcd, kube-*, kwok and istioctl (skips if not built)."""
    return require_bin()


@pytest.fixture(scope="session")
def sandbox_bin_previous() -> Path:
    """The same folder, also holding the previous Istio that upgrades start from."""
    return require_bin(sandbox_build.BINARIES)


# Running sandboxes by (shapes, label).  A sandbox lives until the end of the test module
# that made it (``_sandboxes_end_with_their_module``): a whole-suite run would otherwise
# keep every module's clusters (and their istiods) up at once, over 20 control planes on a
# 2-core machine, and the load makes istioctl time out.
_LIVE: dict[tuple[tuple[Shape, ...], str], SandboxHandle] = {}


def _down(key: tuple[tuple[Shape, ...], str]) -> None:
    handle = _LIVE.pop(key)
    if handle.state_dir in _STARTED:
        _STARTED.remove(handle.state_dir)
        sbx.down(handle.state_dir)


@pytest.fixture(scope="session")
def sandbox_factory(tmp_path_factory: pytest.TempPathFactory,
                    sandbox_bin: Path) -> Iterator[SandboxFactory]:
    """``sandbox_factory(clusters=2 | [Shape, ...], nodes=, cpu=, memory=, pods=, label=)``.

    Returns a :class:`SandboxHandle`; within one test module the same shapes and label
    give the same running sandbox (use a new label for a sandbox a test may damage).
    Call it from module- or function-scoped fixtures only: the sandbox stops when the
    module ends.
    """

    def make(clusters: int | Sequence[Shape] = 2, *, nodes: int = DEFAULT_SHAPE.nodes,
             cpu: str = DEFAULT_SHAPE.cpu, memory: str = DEFAULT_SHAPE.memory,
             pods: int = DEFAULT_SHAPE.pods, label: str = "default") -> SandboxHandle:
        _require_sandbox_marker(f"a sandbox (label {label!r})")
        shapes = sbx.shapes(clusters, nodes=nodes, cpu=cpu, memory=memory, pods=pods)
        key = (shapes, label)
        if key not in _LIVE:
            state = tmp_path_factory.mktemp(f"sandbox-{label}")
            _STARTED.append(state)
            _LIVE[key] = _handle(sbx.up(state, clusters=shapes, binaries=sandbox_bin))
        return _LIVE[key]

    yield make
    for key in list(_LIVE):
        _down(key)


@pytest.fixture(scope="module", autouse=True)
def _sandboxes_end_with_their_module() -> Iterator[None]:
    """Stop every sandbox a module started when the module is done (see ``_LIVE``)."""
    yield
    for key in list(_LIVE):
        _down(key)


@pytest.fixture(scope="module")
def sandbox(sandbox_factory: SandboxFactory) -> SandboxHandle:
    """The default sandbox: cluster1 and cluster2, 3 nodes × 4 CPU / 8Gi each."""
    return sandbox_factory(2)


def _wait_default_sa(core: k8s.CoreV1Api, namespace: str, timeout: float = 60.0) -> None:
    """Pods are refused until the controller manager made the namespace's ServiceAccount."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_service_account("default", namespace)
            return
        except k8s.ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


NamespaceFactory = Callable[[SandboxHandle], str]


@pytest.fixture
def namespace_factory(request: pytest.FixtureRequest) -> Iterator[NamespaceFactory]:
    """``namespace_factory(handle)``: a fresh namespace on every cluster of ``handle``.

    The same name on each cluster (as a multi-cluster test wants); all deleted after
    the test.  Waits for the namespace's default ServiceAccount so pods are accepted.
    """
    made: list[tuple[Cluster, str]] = []
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())[:40]

    def make(handle: SandboxHandle) -> str:
        name = f"t-{base.strip('-')}-{uuid.uuid4().hex[:6]}"
        for cl in handle.clusters:
            cl.core().create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
            made.append((cl, name))
        for cl in handle.clusters:
            _wait_default_sa(cl.core(), name)
        return name

    yield make
    for cl, name in made:
        try:
            cl.core().delete_namespace(name)
        except k8s.ApiException as e:
            if e.status != 404:
                raise


@pytest.fixture
def namespace(sandbox: SandboxHandle, namespace_factory: NamespaceFactory) -> str:
    """A fresh namespace, same name on every cluster of ``sandbox``, deleted afterwards."""
    return namespace_factory(sandbox)
