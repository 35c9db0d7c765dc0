"""Bearer tokens from SANDBOX_API_TOKENS, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from ..domain.errors import Unauthorized


async def require_token(request: Request) -> None:
    # async: FastAPI runs a plain `def` dependency in a thread, one hop per request for
    # a few microseconds of work.
    tokens: list[str] = request.app.state.ctx.settings.token_list
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    if not token_matches(given, tokens):
        raise Unauthorized("invalid bearer token")


def token_matches(given: str, tokens: list[str]) -> bool:
    """Whether `given` is one of `tokens`. Compared against every token, so the time taken
    does not reveal which one nearly matched."""
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given.strip().encode(), token.encode())
    return bool(given.strip()) and matched
