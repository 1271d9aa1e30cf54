"""Local clusters from the sandbox binaries: real control planes, kwok nodes, real istiod.

For tests and for users who want to try meshctl without a cloud.  Nothing here imports
the rest of meshctl beyond :mod:`meshctl.errors`, :mod:`meshctl.files` and
:mod:`meshctl.ca.pki`; nothing in the rest of meshctl imports this package, except the
``sandbox.*`` tasks.  (This ``__init__`` imports nothing, because
``python -m meshctl.sandbox.lb`` must run that module once, not twice.)

- :mod:`~meshctl.sandbox.build`: :func:`build` compiles the pinned Go modules under
  ``sandbox/`` into a cache keyed by their ``go.mod``/``go.sum``; :func:`locate`,
  :func:`bin_dir`, ``BINARIES`` (``CURRENT``: all but the previous Istio, which only
  upgrade tests need), ``ISTIOD_BINARIES`` (the pilot-discovery for each image tag).
- :mod:`~meshctl.sandbox.lifecycle`: :func:`up` (N clusters, kubeconfig, cluster files),
  :func:`down` (stops every process it started, removes the state), :func:`load`,
  :func:`shapes`.
- :mod:`~meshctl.sandbox.status`: :func:`status`, what runs and whether each API answers.
- :mod:`~meshctl.sandbox.cluster`: one cluster's etcd, API server, controller-manager,
  scheduler and kwok; :mod:`~meshctl.sandbox.kwok`: its nodes and CRDs;
  :mod:`~meshctl.sandbox.procs`: processes, pid files, waits.
- :mod:`~meshctl.sandbox.lb`: the controller process: LoadBalancer addresses and
  Service proxies (:mod:`~meshctl.sandbox.proxy`), and per cluster the real istiod
  (:mod:`~meshctl.sandbox.istiod`, with :mod:`~meshctl.sandbox.pod` for what kubelet
  would mount and :mod:`~meshctl.sandbox.istiod_report` for the pod status it reports),
  or the webhook stand-in (:mod:`~meshctl.sandbox.webhooks`) under ``--no-istiod``.
- :mod:`~meshctl.sandbox.api`: the small API client these use (no kubernetes client,
  so the controller process stays light).
"""
