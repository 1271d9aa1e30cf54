"""meshctl.verify."""
