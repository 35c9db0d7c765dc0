"""Request and response models of the HTTP API, so `/openapi.json` is the contract clients and fuzzers read.

Each response model describes exactly what its route sends today (PROTOCOL.md): the field order is the order
the route builds its dict in, because routes that return a dict are serialized through these models and the
JSON on the wire must not change. Those models allow extra fields, so a key added by the service layer
passes through instead of being dropped silently. Routes that return a `JSONResponse` themselves (the tool
calls, readiness, pre-provisioning) are not validated at run time: for them the models only document.
"""

from __future__ import annotations

from .common import ErrorBody, ErrorResponse, error_responses, request_body
from .environments import EnvironmentDeleted, EnvironmentList, EnvironmentView, PoolSize, Preparation
from .grading import GradeItem, GradeRequest, GradeResponse, GradeSample
from .ops import METRICS_RESPONSES, Health, HostStatus, Readiness, ReadinessChecks
from .rollouts import (
    CallCounts,
    ForkChild,
    ForkParent,
    ForkRequestBody,
    ForkResult,
    PreProvisionAccepted,
    PreProvisionEntry,
    PreProvisionRequest,
    PreProvisionResult,
    RolloutView,
    TrajectoryEntry,
    TrajectoryView,
)
from .tools import ROLLOUT_ID_HEADER, TOOL_CALL_HEADERS, TOOL_PATH_SCHEMA_EXTRA, FunctionCall, ToolCallOutput

__all__ = [
    "CallCounts",
    "EnvironmentDeleted",
    "EnvironmentList",
    "EnvironmentView",
    "ErrorBody",
    "ErrorResponse",
    "ForkChild",
    "ForkParent",
    "ForkRequestBody",
    "ForkResult",
    "FunctionCall",
    "GradeItem",
    "GradeRequest",
    "GradeResponse",
    "GradeSample",
    "Health",
    "HostStatus",
    "METRICS_RESPONSES",
    "PoolSize",
    "PreProvisionAccepted",
    "PreProvisionEntry",
    "PreProvisionRequest",
    "PreProvisionResult",
    "Preparation",
    "ROLLOUT_ID_HEADER",
    "Readiness",
    "ReadinessChecks",
    "RolloutView",
    "TOOL_CALL_HEADERS",
    "TOOL_PATH_SCHEMA_EXTRA",
    "ToolCallOutput",
    "TrajectoryEntry",
    "TrajectoryView",
    "error_responses",
    "request_body",
]
