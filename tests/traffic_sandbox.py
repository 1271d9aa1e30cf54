"""The bootstrapped sandbox that the canary and verify tests share (label ``traffic``).

One two-cluster sandbox, one small node each, bootstrapped once by the real
``meshctl bootstrap`` (real istioctl: Istio's CRDs, so the API server validates every
VirtualService and DestinationRule against Istio's schemas).  The sandbox runs the
real istiod for each cluster (meshctl/sandbox/istiod.py): Istio's injector adds the
sidecar to the pod spec (no container runs) and Istio's validation webhook checks
every Istio object.  A module that asks again gets the same sandbox and
a bootstrap re-run that has nothing to do.
"""

from __future__ import annotations

from pathlib import Path

from tests.factories import meshctl
from tests.sandbox_fixtures import SandboxFactory, SandboxHandle

LABEL = "traffic"
_DONE: set[Path] = set()


def bootstrapped(factory: SandboxFactory) -> SandboxHandle:
    """The sandbox, bootstrapped once per session (the first module to ask does it).

    Once only, because a second bootstrap's preflight counts Istio's own requests as
    taken and can refuse a small node that already runs istiod.
    """
    handle = factory(2, nodes=1, cpu="2", memory="8Gi", label=LABEL)
    if handle.state_dir not in _DONE:
        result = meshctl("bootstrap", "--main", "cluster1", "--remote", "cluster2",
                         "--clusters-dir", str(handle.clusters_dir), env=handle.env())
        assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
        _DONE.add(handle.state_dir)
    return handle
