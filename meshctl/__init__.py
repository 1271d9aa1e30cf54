"""meshctl: join Kubernetes clusters into one Istio mesh.

The package is split by job (config, topology, certs, kube, preflight, istio,
remote_secret, bootstrap, traffic, verify, report, sandbox); ``meshctl.tasks``
holds the thin invoke tasks that wire flags to these modules.
"""

__version__ = "0.1.0"
