"""Isolated per-rollout sandboxes behind HTTP tool endpoints for agent RL."""

__version__ = "0.1.0"
