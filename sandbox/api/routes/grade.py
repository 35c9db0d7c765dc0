"""POST /v1/grade: the OpenAI endpoint grader."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request

from ..auth import require_token
from ..context import ApiContext
from .tools import read_json

router = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])


@router.post("/grade")
async def grade(request: Request) -> dict[str, Any]:
    ctx: ApiContext = request.app.state.ctx
    body = await read_json(request)
    return await anyio.to_thread.run_sync(ctx.grading.grade, body, limiter=ctx.limiter)
