"""meshctl.sandbox."""
