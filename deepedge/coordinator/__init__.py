"""Coordinator (issue #5)."""
