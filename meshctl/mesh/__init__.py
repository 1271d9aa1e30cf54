"""meshctl.mesh."""
