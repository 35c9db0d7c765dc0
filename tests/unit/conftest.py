"""Fixtures the unit tests share: worlds over the in-memory fakes, and a bare store, each on a
key prefix of its own in the session's private Redis, removed after the test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from sandbox.store import Store
from tests.fakes.host import World, build_world, drop_world
from tests.stack import RedisServer

MakeWorld = Callable[..., World]


@pytest.fixture()
def make_world(redis_server: RedisServer) -> Iterator[MakeWorld]:
    """Build worlds with settings overrides (`make_world(clock=..., attach=False, ...)`)."""
    worlds: list[World] = []

    def make(**overrides: Any) -> World:
        worlds.append(build_world(redis_server.url, **overrides))
        return worlds[-1]

    yield make
    for w in worlds:
        drop_world(w)


@pytest.fixture()
def world(make_world: MakeWorld) -> World:
    return make_world()


@pytest.fixture()
def store(redis_server: RedisServer) -> Iterator[Store]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    yield Store(client, prefix, retention_s=60)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()
