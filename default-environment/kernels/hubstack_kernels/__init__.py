"""Kernels forked from a kernel parent in hubstack servers (see provisioner.py)."""
