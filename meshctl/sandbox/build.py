"""Building the sandbox binaries from the pinned Go modules under ``sandbox/``, cached.

The cache folder is named by a hash of every wrapper module's ``go.mod``, ``go.sum``
and Go source plus the build flags, so a rebuild happens exactly when a pin or a flag
changes, and never otherwise.  Builds go to a temporary folder that is renamed into
place, so an interrupted build never leaves a folder that looks complete.  ``locate``
never builds: the test fixtures use it to skip (or fail, in CI) when nothing is built.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshctl.errors import ClusterError, UsageError

Progress = Callable[[str], None]

REPO = Path(__file__).resolve().parents[2]
SOURCES = REPO / "sandbox"


@dataclass(frozen=True)
class GoBuild:
    """One ``go build`` in one wrapper module: packages in, binaries out."""

    module: str
    packages: tuple[str, ...]
    outputs: tuple[str, ...]
    ldflags: str = ""
    # One ``go build -o <output>`` per package, for packages whose directory name is not
    # the binary's name (Istio's echo ``cmd/server`` and ``cmd/client``).
    one_by_one: bool = False


def _module_version(module: str, path: str) -> str:
    """The version a wrapper module's go.mod pins for ``path`` ('' outside a checkout)."""
    try:
        for line in (SOURCES / module / "go.mod").read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in (path, "require") and path in words:
                return words[words.index(path) + 1]
    except OSError:
        pass
    return ""


def _kube_ldflags(version: str) -> str:
    """Stamp the version the way Kubernetes' own build does (hack/lib/version.sh).

    Without it the API server reports ``v0.0.0-master+$Format:%H$``, which istioctl's
    version checks (``x precheck``, ``install``) refuse to parse.
    """
    if not version:
        return ""
    major, minor = version.lstrip("v").split(".")[:2]
    return " ".join(f"-X k8s.io/{pkg}/version.{key}={value}"
                    for pkg in ("component-base", "client-go/pkg")
                    for key, value in (("gitVersion", version), ("gitMajor", major),
                                       ("gitMinor", minor), ("gitTreeState", "clean")))


KUBERNETES_VERSION = _module_version("kubernetes", "k8s.io/kubernetes")


def _istio_dev_version(module: str, line: str) -> str:
    """``1.31-dev.20260827``: the dev line and the snapshot date of a module's Istio pin.

    Both Istio pins are untagged master snapshots of the same development line (their
    VERSION file says 1.31), so the minor alone cannot tell them apart; the date of the
    pseudo-version (``v0.0.0-20260827124520-eed52ebb66ad``) can, and says what the
    build is: a snapshot, never a release.  ``line`` is that VERSION file's content; a
    pin moved to another line must change it too.
    """
    m = re.fullmatch(r"v0\.0\.0-(\d{8})\d{6}-[0-9a-f]{12}",
                     _module_version(module, "istio.io/istio"))
    return f"{line}-dev.{m.group(1)}" if m else f"{line}-dev"


# Istio's own hub for development builds (its profiles' default, so the manifests only
# differ from an unstamped build's by the tag).  istioctl puts ``hub``/``tag`` over the
# profile only when both are stamped (operator/pkg/render's hubTagOverlay), and the tag
# is the stamped version: so an istiod pod's image names the build that rendered it, and
# the sandbox runs the matching pilot-discovery (ISTIOD_BINARIES).  Nothing is pulled.
ISTIO_HUB = "registry.istio.io/testing"
ISTIO_BUILD_VERSION = _istio_dev_version("istioctl", "1.31")
ISTIO_PREVIOUS_BUILD_VERSION = _istio_dev_version("istio-previous", "1.31")


def _istio_ldflags(version: str) -> str:
    """Stamp the version (else Istio reports "unknown") and the hub (for the image tag)."""
    return (f"-X istio.io/istio/pkg/version.buildVersion={version} "
            f"-X istio.io/istio/pkg/version.buildHub={ISTIO_HUB}")


# The build flags are part of the cache key: change one and the cache rebuilds.
BUILDS = (
    GoBuild("etcd", (".",), ("etcd",)),
    GoBuild("kwok", ("sigs.k8s.io/kwok/cmd/kwok",), ("kwok",)),
    GoBuild("kubernetes", ("k8s.io/kubernetes/cmd/kube-apiserver",
                           "k8s.io/kubernetes/cmd/kube-controller-manager",
                           "k8s.io/kubernetes/cmd/kube-scheduler"),
            ("kube-apiserver", "kube-controller-manager", "kube-scheduler"),
            _kube_ldflags(KUBERNETES_VERSION)),
    # istiod (pilot-discovery) comes from the same module and version as istioctl.
    GoBuild("istioctl", ("istio.io/istio/istioctl/cmd/istioctl",
                         "istio.io/istio/pilot/cmd/pilot-discovery"),
            ("istioctl", "pilot-discovery"), _istio_ldflags(ISTIO_BUILD_VERSION)),
    # The sandbox's workloads (sandbox.workload): pilot-agent and Istio's echo server and
    # client, same pin, proxyless gRPC.  Not needed to start a sandbox.
    GoBuild("workload", ("istio.io/istio/pilot/cmd/pilot-agent",
                         "istio.io/istio/pkg/test/echo/cmd/server",
                         "istio.io/istio/pkg/test/echo/cmd/client"),
            ("pilot-agent", "echo-server", "echo-client"),
            _istio_ldflags(ISTIO_BUILD_VERSION), one_by_one=True),
    # An older Istio beside the pin, for upgrade tests: same folder, "-previous" names.
    # Not needed to start a sandbox, nor by any test that does not upgrade.
    GoBuild("istio-previous", ("istio.io/istio/istioctl/cmd/istioctl",
                               "istio.io/istio/pilot/cmd/pilot-discovery"),
            ("istioctl-previous", "pilot-discovery-previous"),
            _istio_ldflags(ISTIO_PREVIOUS_BUILD_VERSION), one_by_one=True),
)
BINARIES = tuple(out for b in BUILDS for out in b.outputs)
PREVIOUS = ("istioctl-previous", "pilot-discovery-previous")
# What the tests and benches need unless they upgrade: a bin folder built before the
# previous Istio was added still serves them (``locate``'s default).
CURRENT = tuple(name for name in BINARIES if name not in PREVIOUS)
# What ``up`` runs (pilot-discovery for every istiod pod, see sandbox.istiod); istioctl
# is built alongside for tests and users, not needed to start.
RUNTIME = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
           "pilot-discovery")
# Which pilot-discovery runs an istiod pod, by its image tag (the stamped version).  The
# current build last: should both stamps ever be equal (no go.mod to date them, outside
# a checkout), the tag means the current build.
ISTIOD_BINARIES = {ISTIO_PREVIOUS_BUILD_VERSION: "pilot-discovery-previous",
                   ISTIO_BUILD_VERSION: "pilot-discovery"}


# --- build and cache -------------------------------------------------------------------

def build_hash(sources: Path = SOURCES) -> str:
    """sha256 over every wrapper module's go.mod, go.sum and Go source, plus the flags."""
    h = hashlib.sha256(repr(BUILDS).encode())
    for path in sorted([*sources.glob("*/go.mod"), *sources.glob("*/go.sum"),
                        *sources.glob("*/*.go")]):
        h.update(str(path.relative_to(sources)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meshctl" / "sandbox"


def bin_dir() -> Path:
    """Where the binaries are (or would be): ``$MESHCTL_SANDBOX_BIN``, else the cache."""
    override = os.environ.get("MESHCTL_SANDBOX_BIN")
    if override:
        return Path(override).expanduser().resolve()
    return cache_root() / build_hash() / "bin"


def missing_binaries(directory: Path, names: Sequence[str] = BINARIES) -> list[str]:
    return [b for b in names if not os.access(directory / b, os.X_OK)]


def locate(names: Sequence[str] = CURRENT) -> Path | None:
    """The bin dir if every named binary is there, else None; never builds (fixtures).

    Upgrade tests ask for ``BINARIES`` (with the previous Istio); the rest do not need it.
    """
    if not SOURCES.is_dir() and not os.environ.get("MESHCTL_SANDBOX_BIN"):
        return None
    directory = bin_dir()
    return directory if not missing_binaries(directory, names) else None


@dataclass(frozen=True)
class BuildResult:
    bin_dir: Path
    built: bool
    seconds: float


def build(*, progress: Progress | None = None) -> BuildResult:
    """Build the sandbox binaries unless the cache already has them all.

    Builds into a temporary folder next to the target and renames at the end, so an
    interrupted build never leaves a cache entry that looks complete.
    """
    say = progress or (lambda _m: None)
    target = bin_dir()
    start = time.monotonic()
    if not missing_binaries(target):
        say(f"sandbox binaries up to date in {target}")
        return BuildResult(target, False, 0.0)
    if not SOURCES.is_dir():
        raise UsageError(f"sandbox Go modules not found at {SOURCES}",
                         hint="run meshctl from a source checkout")
    go = shutil.which("go")
    if go is None:
        raise UsageError("'go' not found on PATH; the sandbox is built from Go modules",
                         hint="install Go (see sandbox/README.md) or set MESHCTL_SANDBOX_BIN "
                              "to a folder with prebuilt binaries")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.parent.name}.partial-",
                                dir=target.parent.parent))
    try:
        for b in BUILDS:
            say(f"go build {b.module}: {', '.join(b.outputs)}")
            _go_build(go, b, tmp / "bin")
        _install(tmp / "bin", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.monotonic() - start
    say(f"built sandbox binaries in {seconds:.0f}s: {target}")
    return BuildResult(target, True, seconds)


def _go_build(go: str, b: GoBuild, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    flags = ["-ldflags", b.ldflags] if b.ldflags else []
    if b.one_by_one:
        calls = [[go, "build", *flags, "-o", str(out / name), pkg]
                 for pkg, name in zip(b.packages, b.outputs, strict=True)]
    else:
        dest = str(out / b.outputs[0]) if b.packages == (".",) else f"{out}/"
        calls = [[go, "build", *flags, "-o", dest, *b.packages]]
    for argv in calls:
        _run_go(argv, b.module)


def _run_go(argv: list[str], module: str) -> None:
    result = subprocess.run(argv, cwd=SOURCES / module, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        last = " | ".join((result.stderr or result.stdout).strip().splitlines()[-4:])
        raise ClusterError(f"go build in sandbox/{module} failed "
                           f"(exit {result.returncode}): {last}")


def _install(built: Path, target: Path) -> None:
    """Move the fresh binaries into place: a whole-folder rename for the cache."""
    if os.environ.get("MESHCTL_SANDBOX_BIN"):
        target.mkdir(parents=True, exist_ok=True)
        for name in BINARIES:
            os.replace(built / name, target / name)
        return
    entry = target.parent
    if entry.exists():
        shutil.rmtree(entry)
    os.replace(built.parent, entry)
