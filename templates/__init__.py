"""meshctl's manifest templates (jinja2), installed as the package ``meshctl.templates``.

This file makes the folder an importable package, so that ``importlib.resources`` finds
the ``*.j2`` files in a wheel and in an editable install alike (``setup.py`` maps the
package to this folder).  It holds no code.
"""
