from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stack import RedisServer, Stack


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private Redis for the session (tests may stop and restart it)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def stack(redis_server: RedisServer) -> Iterator[Stack]:
    """One real stack for the integration tests of the session; removed at the end."""
    s = Stack(redis_server.url)
    try:
        s.start()
        yield s
    finally:
        s.close()
