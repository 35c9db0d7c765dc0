"""Fixtures the unit tests share: worlds over the in-memory fakes, and a bare store, each on a
key prefix of its own in the session's private Redis, removed after the test; the native guest,
built once, and a guest serving a workdir of its own for each module that asks."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sandbox.store import Store
from tests.fakes.host import World, build_world, drop_world
from tests.stack import RedisServer
from tests.unit.guest_process import build_native_guest, start_server

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


@pytest.fixture(scope="session")
def native_guest() -> Path:
    """The guest binary, built (or found up to date) by build.sh: offline, idempotent."""
    return build_native_guest()


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, native_guest: Path) -> Iterator[dict[str, Any]]:
    """A guest serving as the test's user; its socket's directory does not exist yet: it makes it."""
    base = tmp_path_factory.mktemp("guest")
    workdir = base / "workspace"
    workdir.mkdir()
    sock = base / "run" / "guest.sock"
    proc = start_server(sock, workdir, base / "guest.log")
    yield {"sock": sock, "workdir": workdir, "proc": proc}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
