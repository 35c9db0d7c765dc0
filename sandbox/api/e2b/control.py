"""E2B's REST control plane under /e2b: create, get, list, kill, timeout, connect.

E2B's SDK reads every error body as `{"code": <int>, "message": <str>}` (anything else makes
it crash before it looks at the status), retries 429/502/503/504 itself (then raises
ServiceBusyException for a 503), and wants 201 from create. Authentication is E2B's
X-API-KEY header, holding one of the service's API tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ... import metrics
from ...domain.e2b import environment_of_template
from ...domain.errors import InfraError, SandboxError, UnknownEnvironment
from ..auth import token_matches
from ..context import ApiContext
from .service import E2BService, SandboxGone

log = logging.getLogger(__name__)
router = APIRouter(prefix="/e2b", include_in_schema=False)  # E2B's API, documented by E2B


def e2b_error(status: int, message: str, retry_after: bool = False) -> JSONResponse:
    headers = {"Retry-After": "2"} if retry_after else None
    return JSONResponse({"code": status, "message": message}, status_code=status, headers=headers)


def _authorized(request: Request) -> bool:
    """E2B's X-API-KEY holds one of the service's API tokens."""
    return token_matches(request.headers.get("x-api-key", ""), request.app.state.ctx.settings.token_list)


async def _answer(request: Request, work: Callable[[E2BService], Any], status: int = 200) -> Response:
    """Run `work` in a thread, its errors in E2B's shape; count the result as infra or not."""
    if not _authorized(request):
        metrics.E2B_REQUESTS.labels("control", "client_error").inc()
        return e2b_error(401, "missing or invalid X-API-KEY: use one of the service's API tokens")
    ctx: ApiContext = request.app.state.ctx
    service: E2BService = request.app.state.e2b
    try:
        result = await anyio.to_thread.run_sync(work, service, limiter=ctx.limiter)
    except SandboxGone as exc:
        metrics.E2B_REQUESTS.labels("control", "client_error").inc()
        return e2b_error(404, f"sandbox {exc.args[0]!r} not found (never created, killed, or timed out)")
    except InfraError as exc:
        metrics.E2B_REQUESTS.labels("control", "infra_error").inc()
        return e2b_error(503, exc.message, retry_after=True)
    except SandboxError as exc:
        metrics.E2B_REQUESTS.labels("control", "client_error").inc()
        return e2b_error(exc.http_status, exc.message)
    except Exception:  # never an HTML 500: the SDK would crash on it instead of raising
        log.exception("E2B control plane: unexpected error")
        metrics.E2B_REQUESTS.labels("control", "infra_error").inc()
        return e2b_error(500, "internal error; see the service log")
    metrics.E2B_REQUESTS.labels("control", "ok").inc()
    if status == 204:
        return Response(status_code=204)
    return JSONResponse(result, status_code=status)


async def _json(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return {}
    try:
        return await request.json()
    except ValueError:
        return None  # the service answers 400 for a body that is not an object


@router.post("/v2/sandboxes")
async def create(request: Request) -> Response:
    body = await _json(request)
    return await _answer(request, lambda s: s.create(body), status=201)


@router.get("/sandboxes/{sandbox_id}")
async def get_info(sandbox_id: str, request: Request) -> Response:
    return await _answer(request, lambda s: s.info(sandbox_id))


@router.get("/v2/sandboxes")
async def list_sandboxes(request: Request) -> Response:
    metadata = request.query_params.get("metadata")
    state = request.query_params.get("state")
    limit_text = request.query_params.get("limit")
    limit = int(limit_text) if limit_text and limit_text.isdigit() else None
    if state and "running" not in state.split(","):
        return await _answer(request, lambda s: [])  # nothing here is ever paused
    # One page: no x-next-token header, so the SDK's paginator stops after it.
    return await _answer(request, lambda s: s.listing(metadata, limit))


@router.delete("/sandboxes/{sandbox_id}")
async def kill(sandbox_id: str, request: Request) -> Response:
    return await _answer(request, lambda s: s.kill(sandbox_id), status=204)


@router.post("/sandboxes/{sandbox_id}/timeout")
async def set_timeout(sandbox_id: str, request: Request) -> Response:
    body = await _json(request)
    return await _answer(request, lambda s: s.set_timeout(sandbox_id, body), status=204)


@router.post("/v2/sandboxes/{sandbox_id}/connect")
async def connect(sandbox_id: str, request: Request) -> Response:
    body = await _json(request)
    return await _answer(request, lambda s: s.connect(sandbox_id, body))


@router.get("/templates/aliases/{alias:path}")
async def template_alias(alias: str, request: Request) -> Response:
    """Whether a template exists (verifiers asks before it would build one): one of our environments."""

    def look(service: E2BService) -> dict[str, Any]:
        name = environment_of_template(alias)
        try:
            service.ctx.registry.get(name)
        except UnknownEnvironment as exc:
            raise SandboxGone(alias) from exc
        return {"templateID": name, "public": False}

    return await _answer(request, look)


_NOT_HERE = {
    "pause": "pause is not supported: a sandbox is a live container of a rollout; keep it running, or fork the "
    "rollout (POST /v1/rollouts/{id}/fork) to keep its state",
    "resume": "resume is not supported: nothing here is ever paused",
    "metrics": "sandbox metrics are not served per sandbox; the service's Prometheus metrics are at /metrics",
    "network": "sandboxes have no network at all (network_mode none); their network cannot be changed",
    "snapshots": "snapshots are not supported; fork the rollout (POST /v1/rollouts/{id}/fork) instead",
    "refreshes": "refreshes are not supported; set a timeout (POST /sandboxes/{id}/timeout) instead",
    "fork": "fork through the E2B API is not supported; use POST /v1/rollouts/{id}/fork",
    "logs": "sandbox logs are not served; the rollout's calls are in GET /v1/rollouts/{id}/trajectory",
}


@router.api_route("/sandboxes/{sandbox_id}/{what}", methods=["GET", "POST", "PUT"])
async def not_supported(sandbox_id: str, what: str, request: Request) -> Response:
    """E2B features with no counterpart here: a clear 400 (the SDK raises it as SandboxException)."""
    if not _authorized(request):
        return e2b_error(401, "missing or invalid X-API-KEY: use one of the service's API tokens")
    metrics.E2B_REQUESTS.labels("control", "client_error").inc()
    return e2b_error(400, _NOT_HERE.get(what, f"{what!r} is not supported by this E2B-compatible API"))


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
async def unknown(rest: str, request: Request) -> Response:
    """Anything else E2B's API has (templates builds, volumes, teams...): said so, in E2B's shape."""
    metrics.E2B_REQUESTS.labels("control", "client_error").inc()
    return e2b_error(400, f"/{rest} is not supported by this E2B-compatible API (docs/e2b-compatibility.md)")
