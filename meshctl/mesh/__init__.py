"""The changes: bootstrap, its single-cluster pieces, status and teardown.

Everything here follows one rule: facts from every cluster before the first write
anywhere, then server-side apply of only what meshctl owns, recorded in the cluster so
teardown can undo exactly that.

- :mod:`~meshctl.mesh.flow`: the bootstrap flow as :class:`Step` objects that describe
  and do themselves: :func:`steps`, :func:`execute`, :class:`Live`.
- :mod:`~meshctl.mesh.bootstrap`: :func:`run` (the live run), :func:`dry_run` and
  :func:`plan_document` (``plan.json``), :func:`install_one`, :func:`link`,
  :func:`unlink`.
- :mod:`~meshctl.mesh.facts`: :func:`gather` (what must be known before any write),
  :func:`each` (the one fan-out over clusters; every cluster's error reported).
- :mod:`~meshctl.mesh.install`: istioctl installs, the install record, ``istio-system``
  and its labels, the east-west gateway's address.
- :mod:`~meshctl.mesh.remote_secret`: ``istioctl create-remote-secret`` output checked
  through the allow-list, applied to the main in memory (the token is never written).
- :mod:`~meshctl.mesh.status`: :func:`collect`, one row per cluster from the live state.
- :mod:`~meshctl.mesh.teardown`: :func:`run`, removing only what the record says meshctl
  made, restoring what it changed, and saying what it kept and why.
"""
