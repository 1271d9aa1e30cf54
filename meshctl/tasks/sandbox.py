"""sandbox.*: local clusters with real control planes and kwok nodes (TESTING.md)."""

from invoke import task

from meshctl.tasks._common import guard, not_yet


@task
@guard
def build(c):
    """Build the sandbox binaries (etcd, kube-*, kwok, istioctl) from pinned Go modules."""
    not_yet("sandbox.build", 4)


@task
@guard
def up(c, clusters=2, nodes=3, cpu="4", memory="8Gi"):
    """Start N local clusters (real control planes, simulated nodes)."""
    not_yet("sandbox.up", 4)


@task
@guard
def down(c):
    """Stop every sandbox process and remove its state."""
    not_yet("sandbox.down", 4)


@task
@guard
def status(c):
    """Show the sandbox clusters and their processes."""
    not_yet("sandbox.status", 4)
