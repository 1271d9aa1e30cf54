"""invoke entry point: the same task collection as the ``meshctl`` console script."""

from meshctl.tasks import namespace as ns  # noqa: F401  (invoke looks for `ns`)
