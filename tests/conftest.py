"""Shared pytest setup: the sandbox fixtures (real clusters, see docs/testing.md) as a plugin.

``pytest -m "not sandbox"`` must run on a machine without Go and without the sandbox
cache, and start nothing.  The plugin enforces it: a test whose fixtures (directly or
through other fixtures) include a sandbox fixture but that lacks ``@pytest.mark.sandbox``
stops the collection, naming the test; one that reaches the sandbox unmarked at run time
fails (see tests/sandbox_fixtures.py).
"""

pytest_plugins = ["tests.sandbox_fixtures"]
