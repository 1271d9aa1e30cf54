"""Root rotation's wait between step 2 and step 3: a workload certificate's lifetime.

Why: step 3 drops the old root from every ``root-cert.pem``.  A workload certificate
that istiod issued before step 2 chains to the old root (through the old
intermediate), and a sidecar keeps presenting it until it is renewed, which takes up to
its TTL (24 h by default: a proxy's ``SECRET_TTL``, istiod's
``DEFAULT_WORKLOAD_CERT_TTL``).  Drop the old root sooner and peers refuse those
certificates: mTLS fails across the mesh until every one of them is re-issued.

So step 2 records when it finished on every cluster (``step2_finished`` in
``rotation.json``), and step 3 refuses (:class:`CheckFailed`, exit 1, one line with
the time left) until the longest workload certificate TTL has passed since then.
That TTL is ``ca.workloadCertTTL`` in ``mesh.yaml`` (default ``24h``; a sandbox or a
mesh whose proxies ask for shorter certificates sets it lower), or longer when a live
istiod's ``DEFAULT_WORKLOAD_CERT_TTL`` says so.  ``--force`` goes ahead anyway and
prints the risk first.  Simple and explicit on purpose: meshctl cannot list every
workload certificate in use (they live in the proxies' memory), so the clock is the
evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from meshctl import durations, kube
from meshctl.ca.rotation_state import State
from meshctl.config import CASettings
from meshctl.errors import CheckFailed

ISTIOD_ENV = "DEFAULT_WORKLOAD_CERT_TTL"
ISTIOD_DEPLOYMENTS = "/apis/apps/v1/namespaces/istio-system/deployments"
ISTIOD_DEFAULT = durations.parse("24h")  # what istiod uses when its variable is junk


@dataclass(frozen=True)
class Wait:
    """How long step 3 waits after step 2, and where that figure comes from."""

    seconds: float
    source: str  # "ca.workloadCertTTL" or "<cluster>: istiod DEFAULT_WORKLOAD_CERT_TTL"

    def describe(self) -> str:
        return f"{durations.show(self.seconds)} ({self.source})"


def istiod_ttls(deployments: Mapping[str, object]) -> list[float]:
    """Each ``DEFAULT_WORKLOAD_CERT_TTL`` set on an istiod container of a Deployment
    list, in seconds.  Pure.  A value meshctl cannot read (``valueFrom``) is skipped;
    one that is not a duration counts as istiod's own fallback, 24 h."""
    found = []
    items = deployments.get("items") if isinstance(deployments, Mapping) else None
    for item in items if isinstance(items, list) else []:
        spec = (((item or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
        for container in spec.get("containers") or []:
            for var in (container or {}).get("env") or []:
                if not isinstance(var, Mapping) or var.get("name") != ISTIOD_ENV:
                    continue
                value = var.get("value")
                if not isinstance(value, str) or not value:
                    continue
                try:
                    seconds = durations.parse(value)
                except ValueError:
                    seconds = ISTIOD_DEFAULT
                found.append(seconds if seconds > 0 else ISTIOD_DEFAULT)
    return found


def wait_for(settings: CASettings, clients: Mapping[str, kube.Kube]) -> Wait:
    """``ca.workloadCertTTL``, or the longest istiod ``DEFAULT_WORKLOAD_CERT_TTL`` of
    any cluster when that is longer (an istiod may hand out longer certificates than
    the files say; the wait must cover the longest)."""
    wait = Wait(settings.workload_cert_ttl, "ca.workloadCertTTL")
    for name in sorted(clients):
        listing = clients[name].request(
            "GET", ISTIOD_DEPLOYMENTS, query={"labelSelector": "app=istiod"},
            what="list istiod Deployments in istio-system") or {}
        for seconds in istiod_ttls(listing):
            if seconds > wait.seconds:
                wait = Wait(seconds, f"{name}: istiod {ISTIOD_ENV}")
    return wait


def step3_from(state: State, wait: Wait) -> datetime | None:
    """The first moment step 3 may run, or ``None`` when step 2 has not finished."""
    finished = state.step2_time
    return None if finished is None else finished + timedelta(seconds=wait.seconds)


def check(state: State, wait: Wait, *, force: bool, warn: Callable[[str], None],
          now: datetime | None = None) -> None:
    """Refuse step 3 (exit 1, the time left) while workload certificates under the old
    root may still be in use; with ``force`` say the risk and go on.  Pure but for
    ``warn``."""
    now = now or datetime.now(UTC)
    start = step3_from(state, wait)
    if start is None or now >= start:
        return
    left = durations.show((start - now).total_seconds())
    if force:
        warn(f"warning: root rotation step 3 forced {left} early: workload certificates "
             f"issued before step 2 ({state.step2_time:%Y-%m-%d %H:%M:%S} UTC) may live "
             f"{wait.describe()} and still chain to the old root; until istiod re-issues "
             "them, peers that now trust only the new root refuse them (mTLS fails)")
        return
    raise CheckFailed(f"root rotation step 3 refused: {left} left (until "
                      f"{start:%Y-%m-%d %H:%M:%S} UTC): workload certificates issued before "
                      f"step 2 finished ({state.step2_time:%Y-%m-%d %H:%M:%S} UTC) live up "
                      f"to {wait.describe()} and still chain to the old root",
                      hint="run it again then; --force drops the old root now, and peers "
                           "still holding such certificates fail mTLS until re-issued")
