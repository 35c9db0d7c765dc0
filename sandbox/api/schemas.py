"""Request and response models of the HTTP API, so `/openapi.json` is the contract clients and fuzzers read.

Each response model describes exactly what its route sends today (PROTOCOL.md): the field order is the order
the route builds its dict in, because routes that return a dict are serialized through these models and the
JSON on the wire must not change. Those models allow extra fields, so a key added by the service layer
passes through instead of being dropped silently. Routes that return a `JSONResponse` themselves (the tool
calls, readiness, pre-provisioning) are not validated at run time: for them the models only document.
"""

from __future__ import annotations

from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..domain.calls import MAX_CALL_ID_LEN, MAX_ROLLOUT_ID_LEN, check_item
from ..domain.environment import EnvironmentSpec
from ..domain.errors import BadRequest
from ..domain.hosts import STATUSES
from ..domain.outcomes import TOOLS, Outcome


class _Open(BaseModel):
    """A response object that may gain fields (PROTOCOL.md: "add to it freely"); clients ignore unknown ones."""

    model_config = ConfigDict(extra="allow")


def _enum(values: Any, nullable: bool = False) -> dict[str, Any]:
    """An `enum` for the schema only: documents a closed list without making the route reject new values."""
    return {"enum": [str(v) for v in values] + ([None] if nullable else [])}


# --- errors -------------------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. bad_request, rollout_not_found, sandbox_lost")
    message: str = Field(description="what went wrong, in plain words")
    retryable: bool = Field(description="whether sending the same request again can succeed")


class ErrorResponse(BaseModel):
    """Every error the service answers, whatever the route or status."""

    error: ErrorBody


_ERROR_DESCRIPTIONS = {
    400: "Bad request that no retry can fix (malformed or missing field, invalid id)",
    401: "Missing or wrong bearer token",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict with the rollout's state",
    413: "Request body larger than the service accepts (4 MiB)",
    503: "Infrastructure failure, not the client's: see `retryable`; sent with Retry-After",
}


def error_responses(*statuses: int, descriptions: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries in the error shape; `descriptions` says per status what it means on that route.

    A `default` entry covers the rest (500 internal) and keeps FastAPI from advertising its 422, which this
    service never sends: validation errors are answered 400 in the error shape (api/errors.py).
    """
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "model": ErrorResponse,
            "description": (descriptions or {}).get(status, _ERROR_DESCRIPTIONS[status]),
        }
        if status == 503:
            entry["headers"] = {
                "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
            }
        out[status] = entry
    out["default"] = {"model": ErrorResponse, "description": "Any other error (500 internal), same shape"}
    return out


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


# --- grading ------------------------------------------------------------------------------------------------


class GradeSample(BaseModel):
    """The model's final answer as the platform sends it."""

    output_text: str | None = Field(None, description="the final answer's text")
    output_json: Any = Field(None, description="the final answer as JSON, when structured output was used")
    output_tools: list[Any] | None = Field(None, description="ignored: the service grades from its own records")
    choices: list[Any] | None = None


class GradeItem(BaseModel):
    """The dataset row; the fields below steer grading, any others are ignored."""

    grader: str | None = Field(
        None, description="file_f1, numeric, or an allowed 'module:function'; default from configuration"
    )
    reference_files: list[str] | None = Field(None, description="file_f1: the files a human edited")
    reference_answer: str | float | None = Field(None, description="numeric: the expected number")
    beta: float | None = Field(None, gt=0, description="file_f1: F-beta's beta (default from configuration)")
    tool_call_target: int | None = Field(None, ge=0, description="tool calls past this cost a penalty each")
    penalty_per_extra_call: float | None = Field(None, ge=0, description="score lost per call past the target")
    environment: str | None = Field(None, description="the rollout's environment (chosen by its first call)")


class GradeRequest(BaseModel):
    """The OpenAI endpoint grader request."""

    sample: GradeSample | None = None
    item: GradeItem | None = None
    trace_id: str = Field(max_length=MAX_ROLLOUT_ID_LEN, description="the rollout id whose recorded calls are graded")


class GradeResponse(_Open):
    """A score in [0, 1] plus the grader's own fields (which ones depends on the grader)."""

    score: float = Field(ge=0, le=1, description="the reward: raw_score less the extra-call penalty, in [0, 1]")
    grader: str = Field(description="the grader that scored")
    raw_score: float = Field(ge=0, le=1, description="the grader's score before the extra-call penalty")
    tool_calls: int = Field(ge=0, description="the rollout's tool calls, infra failures not counted")
    # file_f1
    precision: float | None = Field(None, description="file_f1: share of the selected files that are right")
    recall: float | None = Field(None, description="file_f1: share of the reference files selected")
    beta: float | None = Field(None, description="file_f1: the beta of the F-beta score")
    selected: list[str] | None = Field(None, description="file_f1: the selection, canonical and de-duplicated")
    matched: list[str] | None = Field(None, description="file_f1: selected files that are reference files")
    hallucinated: list[str] | None = Field(None, description="file_f1: selected paths that are not workspace files")
    missed: list[str] | None = Field(None, description="file_f1: reference files not selected")
    # numeric
    parsed: float | None = Field(None, description="numeric: the answer's number as written ('12%' -> 12.0)")
    expected: float | None = Field(None, description="numeric: the reference number")
    relative_error: float | None = Field(None, description="numeric: of the best reading; null for a 0 reference")
    reason: str | None = Field(None, description="numeric: match, rounding-level miss, mismatch, ...")


# --- rollouts -----------------------------------------------------------------------------------------------


class PreProvisionEntry(BaseModel):
    rollout_id: str
    item: dict[str, Any] | None = Field(None, description="the dataset row, as the rollout's first tool call sends it")

    @field_validator("item")
    @classmethod
    def _same_checks_as_a_tool_call(cls, item: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            return check_item(item)
        except BadRequest as exc:  # a ValueError is what makes pydantic answer 400 (api/errors.py)
            raise ValueError(exc.message) from exc


class PreProvisionRequest(BaseModel):
    rollouts: list[PreProvisionEntry] = Field(max_length=5000)


class PreProvisionAccepted(BaseModel):
    rollout_id: str
    state: str = Field(description="the rollout's state now: provisioning, or ready when a warm container was free")
    queued: bool = Field(description="true when this request started the provisioning; false when it was under way")


class PreProvisionResult(BaseModel):
    """Answered at once; the containers start in the background."""

    rollouts: list[PreProvisionAccepted]


class CallCounts(_Open):
    """A rollout's finished tool calls by outcome."""

    total: int
    ok: int
    model_error: int
    infra_error: int


class RolloutView(_Open):
    """A rollout's record. Times are Unix seconds, null until they happen."""

    rollout_id: str
    state: str = Field(description="pending, provisioning, ready, failed, released, expired or lost")
    host: str | None = Field(description="the sandbox host holding its container")
    container_id: str | None
    environment: str = Field(description="the environment's name ('' until the first call names it)")
    item: dict[str, Any] | None = Field(description="the dataset row of its first call or pre-provisioning")
    created_at: float | None
    ready_at: float | None
    last_used_at: float | None
    ended_at: float | None
    end_reason: str | None
    calls: CallCounts
    infra_tainted: bool = Field(description="an infrastructure failure touched it: grading refuses it (503)")
    taint_reason: str | None
    provision_error: str | None = Field(description="why the last provisioning attempt failed")
    parent: ForkParent | None = Field(None, description="a fork's child: the rollout it was forked from")
    children: list[str] = Field(default_factory=list, description="rollouts forked from this one, in order")


class ForkParent(BaseModel):
    rollout_id: str
    at_call: int | None = Field(description="index of the parent's last call before the fork (null: none)")


class ForkRequestBody(BaseModel):
    """Exactly one of the two: how many children, or their ids (new rollout ids)."""

    count: int | None = Field(None, ge=1, description="children to create, with ids chosen by the service")
    rollout_ids: list[str] | None = Field(None, min_length=1, description="the children's ids, all new")


class ForkChild(BaseModel):
    rollout_id: str
    state: Literal["ready"]


class ForkResult(BaseModel):
    """Every child is ready when this is answered: its container holds the parent's filesystem."""

    rollouts: list[ForkChild]


class TrajectoryEntry(_Open):
    """One finished call. Every field is null when the stored record lacks it."""

    index: int = Field(description="position in the rollout, from 0")
    call_id: str | None
    id: Any = Field(description="the request's `id`, as sent")
    tool: str | None
    arguments: Any = Field(description="the arguments as sent (a JSON string or an object)")
    outcome: str | None = Field(json_schema_extra=_enum(Outcome, nullable=True))
    reason: str | None
    exit_code: int | None
    duration_ms: float | None
    output_bytes: int | None
    truncated_bytes: int | None = Field(description="bytes of output left out to respect the cap")
    started_at: float | None
    finished_at: float | None
    output: str | None = Field(description="what the model read")
    error: str | None = Field(None, description="present only for infra errors: what failed")


class TrajectoryView(_Open):
    rollout_id: str
    state: str | None = Field(description="the rollout's state; null when only its calls remain")
    infra_tainted: bool
    calls: list[TrajectoryEntry]


# --- environments -------------------------------------------------------------------------------------------


class Preparation(_Open):
    """A host's derived image for the environment (workspace baked in)."""

    state: str = Field(description="preparing, ready or failed")
    image: str
    started_at: float
    duration_s: float | None = Field(None, description="absent while preparing")
    error: str | None = Field(None, description="present only when failed")


class PoolSize(_Open):
    available: int = Field(description="warm containers ready now")
    target: int = Field(description="warm containers the host keeps ready")


class _Named(BaseModel):
    name: str


class EnvironmentView(EnvironmentSpec, _Named):
    """A registered environment: its name, every field of its definition, and what registration resolved.

    Subclassing the spec keeps the view's fields in step with the definition (and in describe()'s order:
    name, the spec's fields, then these).
    """

    model_config = ConfigDict(extra="allow", json_schema_serialization_defaults_required=True)
    commit_sha: str | None = Field(description="git workspaces: the commit resolved at registration")
    definition_digest: str = Field(description="address of the derived image's content")
    file_count: int = Field(description="files in the workspace")
    registered_at: float | None = Field(description="Unix seconds; null for the built-in default environment")
    preparation: dict[str, Preparation] = Field(description="per host id")
    pool: dict[str, PoolSize] = Field(description="warm pool per host id")


class EnvironmentList(_Open):
    environments: list[EnvironmentView]


class EnvironmentDeleted(BaseModel):
    """What DELETE /v1/environments/{name} removed."""

    name: str
    deleted_definition_digest: str = Field(
        description="the removed definition's digest; its prepared images carry it as label sandbox.definition_digest"
    )
    registered_at: float = Field(description="when the removed definition was registered, Unix seconds")
    now: Literal["unknown", "builtin_default"] = Field(
        description="what the name means now: unknown (new rollouts naming it get 404), or for `default` the "
        "built-in default again"
    )


# --- operations ---------------------------------------------------------------------------------------------


class Health(_Open):
    status: Literal["ok"]


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


# --- request bodies the routes read by hand -----------------------------------------------------------------


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a body the route parses itself (to cap its size and word its errors).

    The schema is inlined: FastAPI only lists models it parses in components. Nested models are inlined too,
    since a `$ref` to `#/$defs/...` would resolve against the whole OpenAPI document.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                target = inline(defs[ref.removeprefix("#/$defs/")])
                return {**target, **{k: inline(v) for k, v in node.items() if k != "$ref"}}
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}
