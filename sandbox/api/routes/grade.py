"""POST /v1/grade: the OpenAI endpoint grader."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request

from ..auth import require_token
from ..context import ApiContext
from ..schemas import GradeRequest, GradeResponse, error_responses, request_body
from .tools import read_json

router = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])


@router.post(
    "/grade",
    response_model=GradeResponse,
    response_model_exclude_unset=True,  # a grader's fields only, not every grader's as nulls
    responses=error_responses(
        400,
        401,
        403,
        404,
        409,
        413,
        503,
        descriptions={
            400: "The item cannot be graded (invalid_grade_request) or the trace_id is missing",
            403: "tests.dir lies outside the allowed workspace roots (workspace_forbidden)",
            404: "No rollout recorded under this trace_id, or its environment is unknown",
            409: "tests: the rollout was released before grading (rollout_released), or is still being graded "
            "by another request past its wait (call_in_progress)",
            503: "The rollout met an infrastructure failure (rollout_infra_tainted): discard it, do not score it; "
            "or one struck while its tests ran (the rollout is now tainted)",
        },
    ),
    openapi_extra=request_body(GradeRequest),  # read by hand: same 4 MiB cap and 400s as the tool calls
)
async def grade(request: Request) -> dict[str, Any]:
    """Score a rollout from the calls the service recorded under `trace_id`."""
    ctx: ApiContext = request.app.state.ctx
    body = await read_json(request)
    return await anyio.to_thread.run_sync(ctx.grading.grade, body, limiter=ctx.limiter)
