"""Shared pytest setup: the sandbox fixtures (real clusters, see TESTING.md) as a plugin."""

pytest_plugins = ["tests.sandbox_fixtures"]
