"""Environments: register (PUT), list and describe (GET) with per-host preparation state."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request

from ...domain.environment import EnvironmentSpec
from ..auth import require_token
from ..context import ApiContext
from ..schemas import EnvironmentList, EnvironmentView, error_responses

router = APIRouter(prefix="/v1/environments", dependencies=[Depends(require_token)])
_NOT_FOUND = {404: "No environment of this name (unknown_environment)"}
# The routes return describe()'s dict; exclude_unset keeps keys it leaves out (a preparation's `error`) out.


@router.put(
    "/{name}",
    response_model=EnvironmentView,
    response_model_exclude_unset=True,
    responses=error_responses(
        400,
        401,
        403,
        503,
        descriptions={
            400: "Invalid name or definition, or the workspace path is unusable (invalid_workspace)",
            403: "The workspace path lies outside the allowed roots (workspace_forbidden)",
        },
    ),
)
async def put_environment(name: str, spec: EnvironmentSpec, request: Request) -> dict[str, Any]:
    """Register or replace an environment."""
    ctx: ApiContext = request.app.state.ctx

    def register() -> dict[str, Any]:
        return ctx.registry.describe(ctx.registry.register(name, spec))

    # Registration may hash a directory or list a repository: keep it off the event loop.
    return await anyio.to_thread.run_sync(register, limiter=ctx.limiter)


@router.get("", response_model=EnvironmentList, response_model_exclude_unset=True, responses=error_responses(401, 503))
async def list_environments(request: Request) -> dict[str, Any]:
    ctx: ApiContext = request.app.state.ctx

    def load() -> dict[str, Any]:
        return {"environments": [ctx.registry.describe(ctx.registry.get(n)) for n in ctx.registry.names()]}

    return await anyio.to_thread.run_sync(load, limiter=ctx.limiter)


@router.get(
    "/{name}",
    response_model=EnvironmentView,
    response_model_exclude_unset=True,
    responses=error_responses(401, 404, 503, descriptions=_NOT_FOUND),
)
async def get_environment(name: str, request: Request) -> dict[str, Any]:
    ctx: ApiContext = request.app.state.ctx
    return await anyio.to_thread.run_sync(lambda: ctx.registry.describe(ctx.registry.get(name)), limiter=ctx.limiter)
