"""Packaging that pyproject.toml cannot say alone: ``templates/`` ships as ``meshctl.templates``.

The manifests live at the top of the repository (the project's layout), yet every
command that renders needs them in an installed meshctl too: a wheel, ``pipx install``
and ``pip install -e .`` alike.  ``find_packages`` sees only what is under ``meshctl/``,
so the templates package is added here and mapped to its folder; ``meshctl.render``
reads it with ``importlib.resources``.  Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["meshctl", "meshctl.*"]), "meshctl.templates"],
    package_dir={"meshctl.templates": "templates"},
    package_data={"meshctl.templates": ["*.j2"]},
)
