"""Isolated per-rollout sandboxes behind HTTP tool endpoints for agent RL."""

__version__ = "0.1.0"
# What clients (the SDK in client/) check before they use a route: 2 added the trainer API
# (POST /v1/rollouts/{id}/exec, PUT and GET /v1/rollouts/{id}/files). /healthz reports it.
API_VERSION = 2
