"""Operations: liveness, readiness, metrics. No token needed."""

from __future__ import annotations

import time
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ... import metrics
from ...errors import InfraError
from ..context import ApiContext

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when Redis, the broker and at least one healthy sandbox host answer."""
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
            hosts = ctx.store.hosts()
        except InfraError:
            hosts = {}
        checks["hosts"] = {
            h: {
                "engine_healthy": info.get("engine_healthy") == "1",
                "heartbeat_age_s": round(time.time() - float(info.get("heartbeat_at", 0)), 1),
            }
            for h, info in hosts.items()
        }
        return checks

    checks = await anyio.to_thread.run_sync(check, limiter=ctx.limiter)
    healthy_hosts = [h for h, v in checks["hosts"].items() if v["engine_healthy"]]
    ready = checks["store"] == "ok" and checks["broker"] == "ok" and bool(healthy_hosts)
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics_endpoint(request: Request) -> Response:
    ctx: ApiContext = request.app.state.ctx
    # The state gauges read Redis: off the event loop, like every other Redis access.
    body = await anyio.to_thread.run_sync(metrics.exposition, request.app.state.state_collector, limiter=ctx.limiter)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
