"""Operations: liveness, readiness, metrics. No token needed."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ... import API_VERSION, __version__, metrics
from ...domain.errors import InfraError
from ...domain.hosts import FULL, UP, views
from ..context import ApiContext
from ..schemas import METRICS_RESPONSES, Health, Readiness

router = APIRouter()


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, Any]:
    """The process is up; which version it runs (clients check `api_version` before using newer routes)."""
    return {"status": "ok", "version": __version__, "api_version": API_VERSION}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: the checks say what is missing"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Ready when Redis, the broker and at least one sandbox host (up or full) answer.

    The details name every host with its status (up, full, quarantined, down) and why.
    """
    ctx: ApiContext = request.app.state.ctx

    def check() -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            ctx.store.ping()
            checks["store"] = "ok"
        except InfraError as exc:
            checks["store"] = f"unavailable: {exc.message}"
        try:
            with ctx.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            checks["broker"] = "ok"
        except Exception as exc:  # kombu raises many kinds; any of them means not ready
            checks["broker"] = f"unavailable: {exc}"
        try:
            hosts = views(ctx.store.hosts.registrations())
        except InfraError:
            hosts = {}
        checks["hosts"] = {h: view.public() for h, view in hosts.items()}
        checks["hosts_taking_new_rollouts"] = sorted(h for h, view in hosts.items() if view.takes_new_rollouts)
        return checks

    checks = await anyio.to_thread.run_sync(check, limiter=ctx.limiter)
    # Ready while some host serves; a quarantined or down host is shown, not fatal, unless it is the last.
    serving = [h for h, v in checks["hosts"].items() if v["status"] in (UP, FULL)]
    ready = checks["store"] == "ok" and checks["broker"] == "ok" and bool(serving)
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


# response_class=Response: the document shows the text format below instead of a JSON body.
@router.get("/metrics", response_class=Response, responses=METRICS_RESPONSES)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics; names start with sandbox_."""
    ctx: ApiContext = request.app.state.ctx
    # The state gauges read Redis: off the event loop, like every other Redis access.
    body = await anyio.to_thread.run_sync(metrics.exposition, request.app.state.state_collector, limiter=ctx.limiter)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
