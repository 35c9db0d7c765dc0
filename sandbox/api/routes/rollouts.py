"""Rollout records, trajectories, release and bulk pre-provisioning."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..auth import require_token
from ..context import ApiContext
from ..schemas import (
    ForkRequestBody,
    ForkResult,
    PreProvisionRequest,
    PreProvisionResult,
    RolloutView,
    TrajectoryView,
    error_responses,
    request_body,
)
from .tools import read_json

router = APIRouter(prefix="/v1/rollouts", dependencies=[Depends(require_token)])
_NOT_FOUND = {404: "No rollout of this id (rollout_not_found)"}
# Routes returning a dict are serialized through their response model; exclude_unset keeps keys the
# service leaves out (a trajectory entry's `error`) out, so the JSON is the dict as built.


@router.post(
    "",
    status_code=202,
    response_model=PreProvisionResult,
    responses=error_responses(
        400, 401, 404, 503, descriptions={404: "An item names an unknown environment: nothing was queued"}
    ),
)
async def pre_provision(request: Request, body: PreProvisionRequest) -> JSONResponse:
    """Queue containers for a burst of rollouts; answers at once."""
    ctx: ApiContext = request.app.state.ctx

    def claim_all() -> list[dict[str, Any]]:
        return ctx.rollouts.pre_provision([(e.rollout_id, e.item) for e in body.rollouts])

    accepted = await anyio.to_thread.run_sync(claim_all, limiter=ctx.limiter)
    return JSONResponse({"rollouts": accepted}, status_code=202)


@router.get(
    "/{rollout_id}",
    response_model=RolloutView,
    response_model_exclude_unset=True,
    responses=error_responses(401, 404, 503, descriptions=_NOT_FOUND),
)
async def get_rollout(rollout_id: str, request: Request) -> dict[str, Any]:
    ctx: ApiContext = request.app.state.ctx

    def load() -> dict[str, Any]:
        return _with_grading(ctx, rollout_id, ctx.rollouts.get(rollout_id).public())

    return await anyio.to_thread.run_sync(load, limiter=ctx.limiter)


def _with_grading(ctx: ApiContext, rollout_id: str, view: dict[str, Any]) -> dict[str, Any]:
    """The grading step, when a grading ran tests in this rollout's sandbox."""
    stored = ctx.grading.step(rollout_id)
    return {**view, "grading": stored} if stored is not None else view


@router.get(
    "/{rollout_id}/trajectory",
    response_model=TrajectoryView,
    response_model_exclude_unset=True,
    responses=error_responses(401, 404, 503, descriptions=_NOT_FOUND),
)
async def get_trajectory(rollout_id: str, request: Request) -> dict[str, Any]:
    ctx: ApiContext = request.app.state.ctx

    def load() -> dict[str, Any]:
        rec, calls = ctx.rollouts.trajectory(rollout_id)
        view = {
            "rollout_id": rollout_id,
            "state": rec.state if rec else None,
            "infra_tainted": rec.tainted if rec else False,
            "calls": [_trajectory_entry(i, c) for i, c in enumerate(calls)],
        }
        return _with_grading(ctx, rollout_id, view)

    return await anyio.to_thread.run_sync(load, limiter=ctx.limiter)


@router.delete(
    "/{rollout_id}",
    response_model=RolloutView,
    response_model_exclude_unset=True,
    responses=error_responses(401, 404, 503, descriptions=_NOT_FOUND),
)
async def release_rollout(rollout_id: str, request: Request) -> dict[str, Any]:
    """Release the rollout's container; idempotent. Answers the record as it is after the release."""
    ctx: ApiContext = request.app.state.ctx
    rec = await anyio.to_thread.run_sync(ctx.rollouts.release, rollout_id, limiter=ctx.limiter)
    return rec.public()


@router.post(
    "/{rollout_id}/fork",
    response_model=ForkResult,
    responses=error_responses(
        400,
        401,
        404,
        409,
        413,
        503,
        descriptions={
            404: "No rollout of this id (rollout_not_found)",
            409: "The parent ended, was lost, is tainted or not ready (rollout_not_forkable), or a child id "
            "is taken (rollout_exists)",
            503: "The parent's host is down (host_unavailable) or full (host_full), or the fork failed on our "
            "side and left nothing behind",
        },
    ),
    openapi_extra=request_body(ForkRequestBody),
)
async def fork_rollout(rollout_id: str, request: Request) -> dict[str, Any]:
    """Branch the rollout: each child gets its own container holding the parent's filesystem as it is now."""
    ctx: ApiContext = request.app.state.ctx
    body = await read_json(request)
    children = await anyio.to_thread.run_sync(ctx.forks.fork, rollout_id, body, limiter=ctx.limiter)
    return {"rollouts": children}


def _trajectory_entry(index: int, c: dict[str, Any]) -> dict[str, Any]:
    return {
        "index": index,
        "call_id": c.get("call_id"),
        "id": c.get("item_id"),
        "tool": c.get("tool"),
        "arguments": c.get("arguments"),
        "outcome": c.get("outcome"),
        "reason": c.get("reason"),
        "exit_code": c.get("exit_code"),
        "duration_ms": c.get("duration_ms"),
        "output_bytes": c.get("output_bytes"),
        "truncated_bytes": c.get("truncated_bytes"),
        "started_at": c.get("started_at"),
        "finished_at": c.get("finished_at"),
        "output": c.get("output"),
        "source": c.get("source", "agent"),
        **({"stderr": c["extra"]["exec"].get("stderr", "")} if "exec" in c.get("extra", {}) else {}),
        **({"error": c["extra"]["message"]} if c.get("extra", {}).get("message") else {}),
    }
