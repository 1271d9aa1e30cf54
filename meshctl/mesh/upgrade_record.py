"""The upgrade as each cluster's install record keeps it, read back as untrusted input.

Every cluster of the mesh carries the same upgrade in its own install record (key
``upgrade``, a JSON object), so a stage that dies half-way (kill -9, Ctrl-C, a lost
cluster) leaves on every cluster what it got to, and a re-run picks up from there.  The
revision an upgrade installs is recorded beside it (``upgrade.istio-operator.yaml``, its
hash, and ``operator.upgrade.istio-operator.yaml``, its text), in the same shape as the
control plane bootstrap installed, so teardown can find it even mid-upgrade.

The record is cluster data, checked like the rest of the install record
(:func:`problem`, called by :mod:`install_record`; it lives here, below the ``upgrade``
package that writes it, because the record is checked wherever it is read): only the
fields meshctl writes, revisions that are DNS labels, versions of an Istio version's
shape, a stage of meshctl's, namespaces that are DNS labels.  Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from meshctl import names

STAGES = ("start", "move", "finish", "rollback")  # the upgrade's stages, in order
KEY = "upgrade"
TARGET = "upgrade.istio-operator.yaml"  # hash of the new revision's control plane
FIELDS = {"from_revision", "to_revision", "from_version", "to_version", "stage", "done",
          "moved"}
VERSION_TEXT = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_~-]{0,127}$")
MAX_MOVED = 1000


@dataclass(frozen=True)
class Upgrade:
    """One upgrade, on one cluster: its two revisions and versions, and how far it got.

    ``stage`` is the last stage begun (``start``, ``move``, ``finish``, ``rollback``),
    ``done`` whether it completed; ``moved`` the namespaces of this cluster already
    relabelled to the new revision.
    """

    from_revision: str  # "" for the unrevisioned control plane
    to_revision: str
    from_version: str
    to_version: str
    stage: str
    done: bool = False
    moved: tuple[str, ...] = field(default=())

    def at(self, stage: str, *, done: bool) -> Upgrade:
        return replace(self, stage=stage, done=done)

    def with_moved(self, namespaces: Iterable[str]) -> Upgrade:
        return replace(self, moved=tuple(sorted(set(self.moved) | set(namespaces))))

    def without_moved(self, namespaces: Iterable[str]) -> Upgrade:
        return replace(self, moved=tuple(sorted(set(self.moved) - set(namespaces))))

    def dump(self) -> str:
        doc = asdict(self)
        doc["moved"] = list(self.moved)
        return json.dumps(doc, sort_keys=True)


def _revision(value: Any) -> bool:
    return isinstance(value, str) and (value == "" or names.dns_label(
        value, longest=names.REVISION_MAX))


def problem(value: str) -> str | None:
    """Why ``value`` is not an ``upgrade`` entry meshctl writes (None: it is)."""
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError):
        return "is not JSON"
    if not isinstance(doc, dict) or set(doc) != FIELDS:
        return f"is not a JSON object of {', '.join(sorted(FIELDS))}"
    if not _revision(doc["from_revision"]) or not _revision(doc["to_revision"]) \
            or not doc["to_revision"] or doc["from_revision"] == doc["to_revision"]:
        return "does not name two different revisions"
    if not all(isinstance(doc[k], str) and VERSION_TEXT.fullmatch(doc[k])
               for k in ("from_version", "to_version")):
        return "has a version that is not an Istio version's shape"
    if doc["stage"] not in STAGES or not isinstance(doc["done"], bool):
        return f"has a stage that is none of {', '.join(STAGES)}"
    moved = doc["moved"]
    if not isinstance(moved, list) or len(moved) > MAX_MOVED or not all(
            isinstance(ns, str) and names.dns_label(ns) for ns in moved):
        return "has moved namespaces that are not namespace names"
    return None


def parse(data: Mapping[str, str]) -> Upgrade | None:
    """The upgrade a checked install record holds; None when it holds none (or one that
    :func:`problem` refuses: the record as a whole is refused before this is asked)."""
    value = data.get(KEY)
    if not value or problem(value) is not None:
        return None
    doc = json.loads(value)
    return Upgrade(from_revision=doc["from_revision"], to_revision=doc["to_revision"],
                   from_version=doc["from_version"], to_version=doc["to_version"],
                   stage=doc["stage"], done=doc["done"], moved=tuple(sorted(doc["moved"])))
