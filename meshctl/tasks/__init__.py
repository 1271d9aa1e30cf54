"""The invoke task collection: thin tasks that parse flags, call ``meshctl``, print, exit.

One module per command group, joined here.  Every task body runs inside
:func:`meshctl.tasks._common.guard`, the one place where meshctl's errors become a
one-line message on stderr and an exit code (docs/architecture.md: 1 check failed, 2 usage or
configuration, 3 cluster/API/istioctl).
"""

from invoke import Collection

from meshctl.tasks import certs, mesh, sandbox, upgrade

namespace = Collection.from_module(mesh)
namespace.add_task(upgrade.upgrade)
namespace.add_collection(Collection.from_module(certs))
namespace.add_collection(Collection.from_module(sandbox))
