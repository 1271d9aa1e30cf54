"""meshctl.preflight."""
