"""Rollout records, trajectories, release and bulk pre-provisioning."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ...errors import RolloutNotFound
from ..auth import require_token
from ..context import ApiContext

router = APIRouter(prefix="/v1/rollouts", dependencies=[Depends(require_token)])


class PreProvisionEntry(BaseModel):
    rollout_id: str
    item: dict[str, Any] | None = None


class PreProvisionRequest(BaseModel):
    rollouts: list[PreProvisionEntry] = Field(max_length=5000)


@router.post("", status_code=202)
async def pre_provision(request: Request, body: PreProvisionRequest) -> JSONResponse:
    """Queue containers for a burst of rollouts; answers at once."""
    ctx: ApiContext = request.app.state.ctx

    def claim_all() -> list[dict[str, Any]]:
        return ctx.rollouts.pre_provision([(e.rollout_id, e.item) for e in body.rollouts])

    accepted = await anyio.to_thread.run_sync(claim_all, limiter=ctx.limiter)
    return JSONResponse({"rollouts": accepted}, status_code=202)


@router.get("/{rollout_id}")
async def get_rollout(rollout_id: str, request: Request) -> dict[str, Any]:
    ctx: ApiContext = request.app.state.ctx
    rec = await anyio.to_thread.run_sync(ctx.rollouts.get, rollout_id, limiter=ctx.limiter)
    return rec.public()


@router.get("/{rollout_id}/trajectory")
async def get_trajectory(rollout_id: str, request: Request) -> dict[str, Any]:
    ctx: ApiContext = request.app.state.ctx

    def load() -> dict[str, Any]:
        rec = ctx.store.get_rollout(rollout_id)
        calls = ctx.store.trajectory(rollout_id)
        if rec is None and not calls:
            raise RolloutNotFound(f"no rollout {rollout_id!r}")
        return {
            "rollout_id": rollout_id,
            "state": rec.state if rec else None,
            "infra_tainted": rec.tainted if rec else False,
            "calls": [_trajectory_entry(i, c) for i, c in enumerate(calls)],
        }

    return await anyio.to_thread.run_sync(load, limiter=ctx.limiter)


@router.delete("/{rollout_id}")
async def release_rollout(rollout_id: str, request: Request) -> dict[str, Any]:
    ctx: ApiContext = request.app.state.ctx
    rec = await anyio.to_thread.run_sync(ctx.rollouts.release, rollout_id, limiter=ctx.limiter)
    return rec.public()


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
        **({"error": c["extra"]["message"]} if c.get("extra", {}).get("message") else {}),
    }
