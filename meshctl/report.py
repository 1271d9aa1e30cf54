"""Rendering results for people (rich tables) and for programs (JSON).

Data first, rendering second: modules return dataclasses, this module draws them.
Tables and JSON go to stdout; progress and warnings go to stderr so that
``--json`` output stays machine-readable.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=False)
err = Console(stderr=True)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def plan_table(document: dict[str, Any]) -> Table:
    """The bootstrap plan as a table: one row per step."""
    mesh = document["mesh"]
    table = Table(title=f"bootstrap plan: mesh {mesh['meshID']}, {mesh['model']}"
                        f"{', multi-network' if mesh['multiNetwork'] else ', one network'}")
    for col in ("#", "cluster", "action", "objects", "live"):
        table.add_column(col, overflow="fold")
    for step in document["steps"]:
        objects = "\n".join(step["objects"]) or step["note"]
        if step["needs"]:
            objects += "\nneeds " + ", ".join(step["needs"])
        table.add_row(str(step["order"]), step["cluster"] or "(local)", step["action"],
                      objects, "yes" if step["live"] else "no")
    return table
