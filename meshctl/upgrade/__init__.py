"""``upgrade``: Istio upgrades across the mesh by revision, decided before any change.

The rule of this package: every refusal is decided from facts already read (versions
the cluster objects carry, the install record's stage), in pure functions that change
nothing, so a refused upgrade writes nothing anywhere.  It sits above ``mesh/`` and
``verify/``, whose installs and checks its stages drive; only the tasks sit above it.

An upgrade runs Istio's own revision mechanics in stages, each recorded in the install
record (``istio-system/meshctl-install``) so that a re-run after a crash resumes, and a
stage run out of order is refused naming the next one:

- ``start`` (``--to R``): the new revision beside the old one on every primary (and the
  remote profile on every remote), before any namespace moves;
- ``move``: injected namespaces relabelled to the new revision and restarted, in waves,
  with verify between them;
- ``finish``: the ``default`` tag moved, then the old revision removed (remotes first),
  only when no proxy still uses it;
- ``rollback`` (before ``finish``): namespaces back to the old revision, the new removed.

So far the package holds the rules the stages will check; the stages are still to come.

- :mod:`~meshctl.upgrade.skew`: :func:`~meshctl.upgrade.skew.parse`,
  :func:`~meshctl.upgrade.skew.compare`, and the skew rules in plain words:
  :func:`~meshctl.upgrade.skew.data_plane_problem`,
  :func:`~meshctl.upgrade.skew.jump_problem`,
  :func:`~meshctl.upgrade.skew.second_upgrade_problem`,
  :func:`~meshctl.upgrade.skew.mesh_versions`.
"""
