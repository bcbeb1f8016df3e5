"""JupyterHub itself: its configuration from ours, accounts, and running it."""
