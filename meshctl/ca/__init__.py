"""meshctl.ca."""
