"""preflight: can each cluster take the mesh?  Facts first, then checks, then a verdict.

Reads only; changes nothing.  One pass of reads per cluster (shaped for 500 nodes and
15,000 pods), then pure checks over those facts, so every check is testable without a
cluster and every cluster's problems come back together.

- :mod:`~meshctl.preflight.runner`: :func:`run` (every cluster, concurrently) →
  :class:`ClusterReport` list; :func:`document` (``--json``, schema
  ``meshctl.preflight/v1``), :func:`summary`, :func:`exit_code`; :func:`foreign_istio`
  (only the ownership checks, for ``bootstrap --skip-preflight``).
- :mod:`~meshctl.preflight.facts`: :func:`gather`, the only module that talks to a cluster.
- :mod:`~meshctl.preflight.permissions`: :func:`missing`, asked the way RBAC answers it.
- :mod:`~meshctl.preflight.found`: what an Istio meshctl did not install looks like
  (istiod Deployments, Helm releases, IstioOperators, webhooks, a self-signed CA).
- :mod:`~meshctl.preflight.checks`: one :class:`Result` per check: connection, versions,
  permissions, nodes, existing Istio, CA roots, addresses.
- :mod:`~meshctl.preflight.ownership`: an Istio, CA or webhook meshctl did not make is a
  FAIL naming it.
- :mod:`~meshctl.preflight.capacity` and :mod:`~meshctl.preflight.resources`: quantities,
  and placing istiod, the gateways and one sidecar per pod onto the nodes' free room.
"""
