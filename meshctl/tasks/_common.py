"""What every task shares: the error guard and where cluster files live."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from invoke import task
from invoke.exceptions import Exit

from meshctl import files
from meshctl.errors import MeshctlError, UsageError

if TYPE_CHECKING:
    from meshctl import config

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CLUSTERS_DIR = "clusters"
CLUSTERS_DIR_HELP = "folder of cluster files (default: $MESHCTL_CLUSTERS_DIR or ./clusters)"


def guard(fn: F) -> F:
    """Turn a :class:`MeshctlError` into one stderr line and its exit code, never a traceback.

    Also the start of every task: scratch folders of meshctl runs that died (SIGKILL)
    are removed here, so key files a library wrote never outlive the next run.  A
    local file error that escaped the code that should have named it is still one line
    (exit 2: the operator's disk or folder, not a cluster).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        files.sweep_scratch()
        try:
            return fn(*args, **kwargs)
        except MeshctlError as e:
            raise Exit(f"error: {e}", e.exit_code) from None
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            raise Exit(f"error: {where}{e.strerror or type(e).__name__}", 2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def clusters_dir(flag: str | None) -> Path:
    """``--clusters-dir``, else ``$MESHCTL_CLUSTERS_DIR``, else ``./clusters``."""
    return Path(flag or os.environ.get("MESHCTL_CLUSTERS_DIR") or DEFAULT_CLUSTERS_DIR)


def mesh_task(*, help: dict[str, str], iterable: tuple[str, ...] = ()) -> Callable[[F], Any]:
    """invoke's ``@task`` for a task that reads cluster files: ``--clusters-dir`` in its
    help, and its body run inside :func:`guard`."""
    def wrap(fn: F) -> Any:
        return task(iterable=list(iterable),
                    help={**help, "clusters-dir": CLUSTERS_DIR_HELP})(guard(fn))
    return wrap


def load(flag: str | None) -> config.Config:
    """The cluster files of ``--clusters-dir`` (see :func:`clusters_dir`), validated,
    and ``ca.dir`` checked against a root left where an earlier meshctl put it."""
    from meshctl import config  # imported when a task runs: `meshctl --help` stays fast

    cfg = config.load(clusters_dir(flag))
    refuse_stray_root(cfg.mesh)
    return cfg


def refuse_stray_root(mesh: config.Mesh) -> None:
    """A relative ``ca.dir`` is read from ``mesh.yaml``'s folder; meshctl before that
    read it from the working directory.  A root found only there (or a different one
    there) means a second root would be made or used: refuse, naming both paths."""
    from meshctl.ca import certs

    old, new = mesh.ca.cwd_dir, mesh.ca.dir
    if old is None or old.resolve() == new.resolve():
        return
    old_cert, old_key = certs.root_paths(dataclasses.replace(mesh.ca, dir=old))
    if not (old_cert.exists() or old_key.exists()):
        return
    new_cert = certs.root_paths(mesh.ca)[0]
    try:
        if new_cert.read_bytes() == old_cert.read_bytes():
            return  # the same root in both places: nothing is doubled
    except OSError:
        pass
    found = "a different root CA" if certs.root_exists(mesh.ca) else "no root CA"
    raise UsageError(
        f"{mesh.source}: key 'ca.dir': a root CA is in {old.absolute()} (working directory) "
        f"and {found} in {new.absolute()} (mesh.yaml's folder); refusing a second root",
        hint="meshctl reads a relative ca.dir from mesh.yaml's folder, earlier versions from "
             "the working directory: move that root, or make ca.dir the absolute path of the "
             "root your clusters use")


def selected(cfg: config.Config, names: list[str] | None) -> list[str]:
    """``--cluster`` values (each must have a cluster file), else every cluster."""
    chosen = names or sorted(cfg.clusters)
    for name in chosen:
        cfg.cluster(name)
    return chosen


def number(flag: str, value: object, *, default: float, minimum: float = 0,
           whole: bool = True) -> float:
    """A numeric flag, parsed here rather than by invoke.

    Numeric flags take string defaults (``None``) on purpose: invoke converts an int
    default's flag with ``int()`` in its parser, where a bad value becomes a traceback.
    """
    if value is None:
        return default
    try:
        parsed = int(str(value)) if whole else float(str(value))
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise UsageError(f"{flag} {value}: not {kind}") from None
    if parsed < minimum:
        raise UsageError(f"{flag} {value}: must be at least {minimum:g}")
    return parsed


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def dns_label(flag: str, value: object, *, default: str) -> str:
    """A flag naming a Kubernetes namespace (a DNS-1123 label), checked before any work."""
    if value is None:
        return default
    text = str(value)
    if not _DNS_LABEL.fullmatch(text):
        raise UsageError(f"{flag} {text[:70]!r}: not a DNS-1123 label (lower-case letters, "
                         "digits and '-', at most 63)")
    return text


MAX_OBSERVE = 10000


def observe_count(value: object) -> int:
    """``--observe N``: 0 when not given, else a whole number from 1 to 10000 (exit 2)."""
    if value is None or value is False:
        return 0
    try:
        n = int(str(value))
    except ValueError:
        raise UsageError(f"--observe must be a whole number of calls, got {value!r}") from None
    if not 1 <= n <= MAX_OBSERVE:
        raise UsageError(f"--observe must be from 1 to {MAX_OBSERVE}, got {n}")
    return n


def sandbox_probe(cfg: config.Config) -> Any:
    """The sandbox's workload probe when every cluster of the folder is a sandbox's, else None.

    A sandbox cluster runs no container, so verify's sidecar pods could never answer
    there; its own real workloads can (meshctl.sandbox.probe).
    """
    from meshctl.sandbox import probe as sandbox_probe

    paths = [Path(c.kubeconfig) if c.kubeconfig else Path(os.environ.get(
        "KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]) for c in cfg.clusters.values()]
    sb = sandbox_probe.detect(paths)
    return sandbox_probe.Probe(sb) if sb is not None else None


def probe_for(cfg: config.Config, *, needed_by: str) -> Any:
    """The traffic probe for these clusters, or a usage error naming the flag.

    Only the sandbox has a probe that can tell the versions of an arbitrary service
    apart, so elsewhere the flag that needs one is refused before anything is written.
    """
    probe = sandbox_probe(cfg)
    if probe is None:
        raise UsageError(f"{needed_by} needs a probe that can tell versions apart; meshctl "
                         "has one for sandbox clusters only (meshctl sandbox.workload)")
    return probe
