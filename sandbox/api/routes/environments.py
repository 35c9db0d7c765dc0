"""Environments: register (PUT), list and describe (GET) with per-host preparation state, delete (DELETE)."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request

from ...domain.environment import DEFAULT, EnvironmentSpec
from ..auth import require_token
from ..context import ApiContext
from ..schemas import EnvironmentDeleted, EnvironmentList, EnvironmentView, error_responses

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


@router.delete(
    "/{name}",
    response_model=EnvironmentDeleted,
    responses=error_responses(
        401, 404, 503, descriptions={404: "No definition registered under this name (unknown_environment)"}
    ),
)
async def delete_environment(name: str, request: Request) -> dict[str, Any]:
    """Remove a definition: new rollouts naming it get 404 unknown_environment; `default` becomes the built-in.

    Not idempotent in its answer: a second delete of the same name is a 404 (nothing to delete). Rollouts
    already using it keep their containers, but their later calls find no definition (404): delete an
    environment once its rollouts are done. Each host's prepared image of it stays until an operator removes
    it (label sandbox.definition_digest); its warm containers are removed by the reconciler.
    """
    ctx: ApiContext = request.app.state.ctx
    env = await anyio.to_thread.run_sync(ctx.registry.delete, name, limiter=ctx.limiter)
    return {
        "name": env.name,
        "deleted_definition_digest": env.definition_digest,
        "registered_at": env.registered_at,
        "now": "builtin_default" if name == DEFAULT else "unknown",
    }
