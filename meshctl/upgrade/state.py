"""Where the mesh's upgrade stands, from every cluster's install record, and which stage
may run next.  Pure: the records are read by :mod:`meshctl.upgrade.stages`.

Each stage writes "begun" to every cluster's record before it changes anything and
"done" after its last change, so the records of a mesh can differ in one way only: a
run that died between two record writes left some clusters one step behind the others.
The mesh's stage is therefore the most advanced one any cluster records, and it is done
only when every cluster says so.  A re-run of that stage converges (each of its steps
checks before it acts), and any other stage is refused with one line naming the next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from meshctl.errors import CheckFailed
from meshctl.mesh import upgrade_record
from meshctl.mesh.upgrade_record import STAGES, Upgrade

START, MOVE, FINISH, ROLLBACK = STAGES
CLOSING = (FINISH, ROLLBACK)


def _rank(up: Upgrade) -> tuple[int, bool]:
    return STAGES.index(up.stage), up.done


def is_open(up: Upgrade | None) -> bool:
    """True while an upgrade is in progress: begun and neither finished nor rolled back."""
    return up is not None and not (up.stage in CLOSING and up.done)


def mesh_upgrade(records: Mapping[str, Mapping[str, str]]) -> Upgrade | None:
    """The upgrade of the whole mesh, judged from each cluster's checked record.

    Clusters that record none while others do were not reached by the first record
    write of ``start``: the mesh is at ``start``, not done.  Records that disagree about
    the revisions or versions were not written by one upgrade: refused.
    """
    found = {name: up for name, rec in records.items()
             if (up := upgrade_record.parse(rec)) is not None}
    if not found:
        return None
    sides = {(u.from_revision, u.to_revision, u.from_version, u.to_version)
             for u in found.values()}
    if len(sides) > 1:
        shown = "; ".join(f"{n}: {u.from_revision or 'default'} -> {u.to_revision}"
                          for n, u in sorted(found.items()))
        raise CheckFailed(f"the clusters' install records name different upgrades ({shown})",
                          hint="every cluster of the mesh must be upgraded together; "
                               "check the --main/--remote flags")
    latest = max(found.values(), key=_rank)
    done = len(found) == len(records) and all(
        u.stage == latest.stage and u.done for u in found.values())
    moved = tuple(sorted({ns for u in found.values() for ns in u.moved}))
    return replace(latest, done=done, moved=moved)


def next_step(up: Upgrade | None) -> str:
    """What to run next, in the words of the command line."""
    if not is_open(up):
        return "upgrade --to REVISION --istioctl PATH"
    assert up is not None
    if not up.done:
        return _rerun(up)
    if up.stage == START:
        return "upgrade --move"
    if up.stage == MOVE:
        return "upgrade --finish (or --rollback)"
    return _rerun(up)


def _rerun(up: Upgrade) -> str:
    if up.stage == START:
        return f"upgrade --to {up.to_revision} --istioctl PATH (start, re-run)"
    return f"upgrade --{up.stage} (re-run)"


def order_problem(stage: str, up: Upgrade | None, *, to: str | None = None,
                  all_moved: bool = True) -> str | None:
    """Why ``stage`` must not run now (None: it may), naming the stage that comes next.

    ``to``: the revision ``start`` is asked for.  ``all_moved``: whether every injected
    namespace of the mesh records the new revision (``finish`` needs it).
    """
    what = (f"the upgrade from revision {(up.from_revision or 'default') if up else ''} "
            f"to {up.to_revision if up else ''}")
    if stage == START:
        if not is_open(up):
            return None
        assert up is not None
        if up.stage == START and up.to_revision == to:
            return None  # a re-run converges
        return (f"{what} is in progress (stage {up.stage}{'' if up.done else ', not done'}):"
                f" next is '{next_step(up)}', not a second upgrade")
    if not is_open(up):
        return (f"no upgrade is in progress, so there is nothing to {stage}: start one with "
                "'upgrade --to REVISION --istioctl PATH'")
    assert up is not None
    begun = f"{what}: {up.stage} has begun and not completed"
    if up.stage in CLOSING and up.stage != stage:
        return f"{begun}: re-run 'upgrade --{up.stage}'"
    if stage == ROLLBACK:
        return None
    if up.stage == START and not up.done:
        return f"{begun}: re-run 'upgrade --to {up.to_revision} --istioctl PATH' first"
    if stage == MOVE:
        return None  # after start (done), or a move again: each wave is one run
    if up.stage == FINISH or (up.stage == MOVE and (up.done or all_moved)):
        return None
    return (f"{what}: not every injected namespace uses revision {up.to_revision} yet: "
            "run 'upgrade --move' first")
