"""Redis unavailable for a moment: calls get 503 store_unavailable, then the service recovers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.stack import RedisServer, Stack

pytestmark = pytest.mark.integration


@pytest.fixture()
def own_stack() -> Iterator[tuple[Stack, RedisServer]]:
    """A stack with its own Redis, so stopping it disturbs no other test."""
    server = RedisServer()
    server.start()
    stack = Stack(server.url)
    try:
        stack.start()
        yield stack, server
    finally:
        server.start() if server.proc is None else None
        stack.close()
        server.close()


def test_redis_outage_is_an_infra_error_and_the_service_recovers(own_stack: tuple[Stack, RedisServer]) -> None:
    stack, server = own_stack
    rid = f"outage-{uuid.uuid4().hex[:8]}"
    assert stack.shell(rid, "echo kept > f").status_code == 200

    server.stop()
    r = stack.shell(rid, "echo during")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "store_unavailable"
    assert stack.http.get("/readyz").status_code == 503
    assert stack.http.get("/healthz").status_code == 200  # the process itself is fine

    server.start()  # same directory: the append-only file brings the state back
    deadline = time.monotonic() + 60
    while True:
        r = stack.shell(rid, "cat f")
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 200, r.text
    assert r.json()["output"] == "kept\n"
    assert (
        stack.metric(
            "sandbox_tool_calls_total", {"tool": "shell", "outcome": "infra_error", "reason": "store_unavailable"}
        )
        >= 1
    )
