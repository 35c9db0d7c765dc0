"""The tool-call routes: the Agent RFT function_call in, function_call_output out, diagnostics headers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ...domain.calls import MAX_CALL_ID_LEN, MAX_ROLLOUT_ID_LEN
from ...domain.outcomes import TOOLS, Outcome
from .common import _enum

# --- tool calls ---------------------------------------------------------------------------------------------


class FunctionCall(BaseModel):
    """The OpenAI Agent RFT `function_call` payload; fields not listed here are ignored (server_url, headers...)."""

    type: str = Field("function_call", description="'function_call'; not checked")
    id: Any = Field(None, description="opaque item id (any JSON, may repeat across calls); echoed back as `id`")
    call_id: str | None = Field(
        None,
        max_length=MAX_CALL_ID_LEN,
        description="identifies the call for retries: the same (rollout, call_id) is answered once; "
        "absent or empty: the call gets an id of its own and is never deduplicated",
    )
    name: str | None = Field(None, description="the tool's name; the URL decides which tool runs")
    arguments: str | dict[str, Any] | None = Field(
        None,
        description='JSON-encoded string or object. shell: {"command": str, "timeout": seconds}; '
        'read_file: {"path": str, "start_line": int, "end_line": int}. Malformed arguments are the model\'s '
        "error: answered 200 with an explanation in `output`",
    )
    trace_id: str | None = Field(
        None,
        max_length=MAX_ROLLOUT_ID_LEN,
        description="the rollout id; or send the X-Rollout-Id header, or use /v1/rollouts/{rollout_id}/tools/{tool}",
    )
    item: dict[str, Any] | None = Field(
        None, description="the dataset row; `item.environment` picks the environment on the rollout's first call"
    )


class ToolCallOutput(BaseModel):
    """Answer to a tool call whose outcome is `ok` or `model_error` (the model reads `output` either way)."""

    type: Literal["function_call_output"] = "function_call_output"
    call_id: str = Field(description="the request's call_id, or the id the service gave a call without one")
    id: Any = Field(description="the request's `id`, echoed as sent (null when absent)")
    output: str = Field(description="what the model reads: stdout and stderr, file text, or why the call failed")


TOOL_CALL_HEADERS: dict[str, Any] = {
    "X-Sandbox-Outcome": {
        "description": "how the call ended",
        "required": True,
        "schema": {"type": "string", **_enum([Outcome.OK, Outcome.MODEL_ERROR])},
    },
    "X-Sandbox-Reason": {
        "description": "why: `none` when ok, else the model error's reason (nonzero_exit, timeout, ...)",
        "required": True,
        "schema": {"type": "string"},
    },
    "X-Sandbox-Exit-Code": {
        "description": "the shell command's exit code; absent when there is none (read_file, timeout, not run)",
        "schema": {"type": "integer"},
    },
    "X-Sandbox-Duration-Ms": {
        "description": "time the service spent on the call, in milliseconds",
        "required": True,
        "schema": {"type": "number"},
    },
}

ROLLOUT_ID_HEADER: dict[str, Any] = {
    "name": "X-Rollout-Id",
    "in": "header",
    "required": False,
    "description": "the rollout id, for clients that cannot put `trace_id` in the body (the body wins)",
    "schema": {"type": "string", "maxLength": MAX_ROLLOUT_ID_LEN},
}

TOOL_PATH_SCHEMA_EXTRA: dict[str, Any] = _enum(TOOLS)  # any other name is answered 404 unknown_tool
