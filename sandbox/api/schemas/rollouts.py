"""Rollout records, trajectories, pre-provisioning and fork."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from ...domain.calls import check_item
from ...domain.errors import BadRequest
from ...domain.outcomes import Outcome
from .common import _enum, _Open

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
    grading: dict[str, Any] | None = Field(
        None, description="present once a grading ran its tests: the stored answer (score, tests, output tail)"
    )


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
    output: str | None = Field(description="what the model read (an exec's stdout)")
    source: str | None = Field(
        None,
        json_schema_extra=_enum(("agent", "trainer")),
        description="agent: a tool call, or an exec sent as the agent's, graded and budgeted; trainer: the trainer "
        "API's setup and file calls, recorded only",
    )
    stderr: str | None = Field(None, description="present only for exec calls: what the command wrote to stderr")
    error: str | None = Field(None, description="present only for infra errors: what failed")


class TrajectoryView(_Open):
    rollout_id: str
    state: str | None = Field(description="the rollout's state; null when only its calls remain")
    infra_tainted: bool
    calls: list[TrajectoryEntry]
    grading: dict[str, Any] | None = Field(
        None, description="the grading step, after the calls: a grading's test run (not an agent call) and its answer"
    )
