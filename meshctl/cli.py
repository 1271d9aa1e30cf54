"""The ``meshctl`` console script: invoke's ``Program`` over the same task collection.

``tasks.py`` at the repository root exposes the same collection to the ``invoke``
binary, so ``invoke bootstrap …`` and ``meshctl bootstrap …`` are one tool.  The only
thing this Program adds is exit code 2 for flags invoke cannot parse (docs/architecture.md: usage
errors are 2); under the plain ``invoke`` binary invoke's own parser keeps its code 1.
"""

from __future__ import annotations

from invoke import Program
from invoke.exceptions import Exit, ParseError

from meshctl import __version__
from meshctl.tasks import namespace


class MeshctlProgram(Program):
    """invoke's Program with parse errors mapped to exit code 2."""

    def parse_core(self, argv):  # type: ignore[override]
        try:
            return super().parse_core(argv)
        except ParseError as e:
            raise Exit(f"meshctl: {e}", 2) from e

    def parse_tasks(self):  # type: ignore[override]
        try:
            return super().parse_tasks()
        except ParseError as e:
            raise Exit(f"meshctl: {e}", 2) from e
        except ValueError as e:  # an int flag given a word: invoke's parser raises this
            raise Exit(f"meshctl: {e}", 2) from None


program = MeshctlProgram(namespace=namespace, version=__version__, name="meshctl", binary="meshctl")
