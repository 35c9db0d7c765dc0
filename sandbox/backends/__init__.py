"""Sandbox backends: the lifecycle of containers and the way requests reach their guest."""
