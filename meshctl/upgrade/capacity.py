"""``start``'s preflight: a second istiod must fit on every primary before it is installed.

The same facts and placement as preflight (:mod:`meshctl.preflight.resources`), asked
for one more istiod: during an upgrade both revisions run until ``finish``.  A FAIL is
reported as preflight reports it (cluster, what is short, what to add) and nothing is
written.
"""

from __future__ import annotations

from meshctl.errors import CheckFailed
from meshctl.mesh import facts
from meshctl.mesh.upgrade_record import Upgrade
from meshctl.preflight import facts as preflight_facts
from meshctl.preflight import resources, runner
from meshctl.upgrade.steps import Run


def check(run: Run, up: Upgrade) -> None:
    """Raise CheckFailed (exit 1) naming every primary where ``istiod-<to>`` cannot run."""
    def one(name: str) -> resources.Result:
        cluster = run.config.clusters[name]
        found = preflight_facts.gather(cluster, runner.footprint(cluster, run.plan))
        return resources.revision_check(found, run.config, up.to_revision)

    results = facts.each(run.primaries(), one)
    for name, r in results.items():
        run.progress(name, f"preflight: {r.status} {r.message}")
    failed = [r for r in results.values() if r.status == "FAIL"]
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise CheckFailed(f"{first.cluster}: {first.message}{more}", hint=first.hint)
