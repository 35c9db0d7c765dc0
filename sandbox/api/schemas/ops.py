"""Liveness and readiness."""

from __future__ import annotations

from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import Field

from ...domain.hosts import STATUSES
from .common import _enum, _Open

# --- operations ---------------------------------------------------------------------------------------------


class Health(_Open):
    status: Literal["ok"]
    version: str | None = Field(None, description="the service's release")
    api_version: int | None = Field(
        None, description="the HTTP API's generation: 2 and later serve the trainer API (exec, files)"
    )


class HostStatus(_Open):
    status: str = Field(json_schema_extra=_enum(STATUSES), description="down and quarantined hosts serve nothing new")
    reason: str | None = Field(description="why quarantined or down: engine_unhealthy, failure_spike, heartbeat_lost")
    engine_healthy: bool
    heartbeat_age_s: float
    containers: int
    capacity: int | None = Field(description="null when unlimited")


class ReadinessChecks(_Open):
    store: str = Field(description="'ok' or 'unavailable: <why>'")
    broker: str = Field(description="'ok' or 'unavailable: <why>'")
    hosts: dict[str, HostStatus] = Field(description="every registered sandbox host by id")
    hosts_taking_new_rollouts: list[str]


class Readiness(_Open):
    """Ready (200) when the store, the broker and at least one host serving rollouts answer; else 503."""

    ready: bool
    checks: ReadinessChecks


METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format",
        "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
    }
}
