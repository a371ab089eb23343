"""Node daemon (issue #4)."""
