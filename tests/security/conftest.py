"""Attacks performed for real by ordinary accounts: the OS fixtures of the system tests."""

from system.conftest import free_ids, run_as, scratch

__all__ = ["free_ids", "run_as", "scratch"]
