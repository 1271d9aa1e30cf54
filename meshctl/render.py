"""Rendering ``templates/``: the one jinja2 environment meshctl has.

jinja2 with ``StrictUndefined``: a variable a template expects but the code forgot
is an error at render time, never an empty string in a cluster.  String values go
through ``tojson`` in the templates, which is valid YAML and cannot break structure.
"""

from __future__ import annotations

import copy
import importlib.resources
from collections.abc import Mapping
from functools import cache
from typing import Any

import jinja2
import yaml

from meshctl.errors import UsageError

# templates/ at the top of the repository, installed as this package (setup.py): a wheel
# carries it, so a non-editable install renders too
TEMPLATES_PACKAGE = "meshctl.templates"


def _tojson(value: Any) -> Any:
    """jinja2's ``tojson``, but a missing variable is an UndefinedError, not a TypeError
    from the JSON encoder (StrictUndefined alone does not catch it inside a filter)."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return jinja2.utils.htmlsafe_json_dumps(value, sort_keys=True)


@cache
def _templates() -> importlib.resources.abc.Traversable:
    try:
        return importlib.resources.files(TEMPLATES_PACKAGE)
    except ModuleNotFoundError:
        raise UsageError(f"meshctl's templates ({TEMPLATES_PACKAGE}) are not installed",
                         hint="an editable install from before they were package data: "
                              "run pip install -e . again") from None


def _source(name: str) -> str | None:
    """A template's text from the installed package (``None``: jinja2's not-found)."""
    try:
        return _templates().joinpath(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_source),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # YAML, not HTML; values are quoted with tojson
    )
    env.filters["tojson"] = _tojson
    return env


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` with ``context``."""
    return _env().get_template(template).render(**context)


def split(text: str) -> list[dict[str, Any]]:
    """The documents of a rendered manifest, as dicts (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` merged over ``base``: mappings recursively, everything else replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


