"""Environments: register (PUT), list and describe (GET) with per-host preparation state."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request

from ...environments import EnvironmentSpec
from ..auth import require_token
from ..context import ApiContext

router = APIRouter(prefix="/v1/environments", dependencies=[Depends(require_token)])


@router.put("/{name}")
async def put_environment(name: str, spec: EnvironmentSpec, request: Request) -> dict[str, Any]:
    ctx: ApiContext = request.app.state.ctx

    def register() -> dict[str, Any]:
        return ctx.registry.describe(ctx.registry.register(name, spec))

    # Registration may hash a directory or list a repository: keep it off the event loop.
    return await anyio.to_thread.run_sync(register, limiter=ctx.limiter)


@router.get("")
async def list_environments(request: Request) -> dict[str, Any]:
    ctx: ApiContext = request.app.state.ctx

    def load() -> dict[str, Any]:
        return {"environments": [ctx.registry.describe(ctx.registry.get(n)) for n in ctx.registry.names()]}

    return await anyio.to_thread.run_sync(load, limiter=ctx.limiter)


@router.get("/{name}")
async def get_environment(name: str, request: Request) -> dict[str, Any]:
    ctx: ApiContext = request.app.state.ctx
    return await anyio.to_thread.run_sync(lambda: ctx.registry.describe(ctx.registry.get(name)), limiter=ctx.limiter)
