"""The mesh's certificate authority: one root on the operator's machine, one intermediate
per cluster, pushed as ``istio-system/cacerts`` in the layout of Istio's ``tools/certs``.

The root CA key never leaves the operator's machine: it is written 0600 and atomically,
never logged, never sent to a cluster, and replaced CA material is backed up inside
``ca.dir`` before anything overwrites it.  This ``__init__`` imports nothing, so that
:mod:`meshctl.config` can use :mod:`~meshctl.ca.pki` from below the rest of the package.

- :mod:`~meshctl.ca.pki`: pure cryptography (keys, in parallel; CA and leaf
  certificates; PEM; fingerprints).  No files, no clusters.
- :mod:`~meshctl.ca.certs`: the local authority in ``ca.dir``: :func:`init_root`,
  :func:`load_root`, :func:`ensure_intermediates`, :class:`Bundle`, chain checks.
- :mod:`~meshctl.ca.backups`: where replaced CA material goes (``ca.dir/backups/``).
- :mod:`~meshctl.ca.cacerts`: the in-cluster ``cacerts`` Secret: :func:`manifest`,
  :func:`read`, :func:`apply` (never over another CA without ``--force``),
  :func:`conflict`.
- :mod:`~meshctl.ca.status`: ``certs.status``: :func:`collect` judges chain, expiry and
  local-vs-cluster match per cluster.
- :mod:`~meshctl.ca.validity`: pure checks (dates, signatures, chains), re-exported by
  :mod:`~meshctl.ca.certs`.
- :mod:`~meshctl.ca.rotation`, :mod:`~meshctl.ca.rotation_state` and
  :mod:`~meshctl.ca.rotation_wait`: a new intermediate under the same root
  (:func:`rotate_intermediate`), or one step of a staged root rotation (:func:`run_step`),
  with its state file in ``ca.dir``, step 3 waiting ``ca.workloadCertTTL`` after step 2.
"""
