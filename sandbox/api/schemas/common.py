"""What every schema module shares: open response objects, the error shape, documented bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    """A response object that may gain fields (PROTOCOL.md: "add to it freely"); clients ignore unknown ones."""

    model_config = ConfigDict(extra="allow")


def _enum(values: Any, nullable: bool = False) -> dict[str, Any]:
    """An `enum` for the schema only: documents a closed list without making the route reject new values."""
    return {"enum": [str(v) for v in values] + ([None] if nullable else [])}


# --- errors -------------------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. bad_request, rollout_not_found, sandbox_lost")
    message: str = Field(description="what went wrong, in plain words")
    retryable: bool = Field(description="whether sending the same request again can succeed")


class ErrorResponse(BaseModel):
    """Every error the service answers, whatever the route or status."""

    error: ErrorBody


_ERROR_DESCRIPTIONS = {
    400: "Bad request that no retry can fix (malformed or missing field, invalid id)",
    401: "Missing or wrong bearer token",
    403: "Forbidden",
    404: "Not found",
    408: "The sandbox did not take or give the bytes in time; retryable",
    409: "Conflict with the rollout's state",
    413: "Request body larger than the service accepts (4 MiB)",
    503: "Infrastructure failure, not the client's: see `retryable`; sent with Retry-After",
}


def error_responses(*statuses: int, descriptions: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries in the error shape; `descriptions` says per status what it means on that route.

    A `default` entry covers the rest (500 internal) and keeps FastAPI from advertising its 422, which this
    service never sends: validation errors are answered 400 in the error shape (api/errors.py).
    """
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "model": ErrorResponse,
            "description": (descriptions or {}).get(status, _ERROR_DESCRIPTIONS[status]),
        }
        if status == 503:
            entry["headers"] = {
                "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
            }
        out[status] = entry
    out["default"] = {"model": ErrorResponse, "description": "Any other error (500 internal), same shape"}
    return out


# --- request bodies the routes read by hand -----------------------------------------------------------------


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a body the route parses itself (to cap its size and word its errors).

    The schema is inlined: FastAPI only lists models it parses in components. Nested models are inlined too,
    since a `$ref` to `#/$defs/...` would resolve against the whole OpenAPI document.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                target = inline(defs[ref.removeprefix("#/$defs/")])
                return {**target, **{k: inline(v) for k, v in node.items() if k != "$ref"}}
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}
