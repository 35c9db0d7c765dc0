"""Calls of one rollout take at most SANDBOX_ROLLOUT_PARALLEL_CALLS of its host's call threads,
and a call that never ran (queue_timeout) never taints its rollout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sandbox.domain.errors import QueueTimeout
from tests.fakes.host import World, build_world, drop_world
from tests.stack import RedisServer


@pytest.fixture()
def world(redis_server: RedisServer) -> Iterator[World]:
    w = build_world(
        redis_server.url,
        rollout_parallel_calls=2,
        timeouts={"provision_s": 10.0, "queue_s": 1.0, "reply_slack_s": 2.0},
    )
    yield w
    drop_world(w)


class Concurrency:
    """Counts how many commands the in-memory guest runs at once, per rollout container."""

    def __init__(self) -> None:
        self.now: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, name: str, command: str) -> dict[str, Any] | None:
        if not command.startswith("hold "):
            return None
        with self.lock:
            self.now[name] = self.now.get(name, 0) + 1
            self.most[name] = max(self.most.get(name, 0), self.now[name])
        time.sleep(float(command.split()[1]))
        with self.lock:
            self.now[name] -= 1
        return {"exit_code": 0, "output": "held\n", "timed_out": False, "oom_killed": False, "signal": None}


def test_a_rollouts_calls_run_at_most_its_cap_at_once_and_the_rest_wait_their_turn(world: World) -> None:
    counter = Concurrency()
    world.backend.scripted_shell = counter
    world.tools.handle(world.call("r", "true"))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: world.tools.handle(world.call("r", "hold 0.3")), range(4)))
    assert [r.output for r in results] == ["held\n"] * 4  # all ran, two at a time within the deadline
    assert max(counter.most.values()) == 2


def test_calls_past_the_cap_and_the_deadline_are_queue_timeouts_that_taint_nothing(world: World) -> None:
    world.backend.scripted_shell = Concurrency()
    world.tools.handle(world.call("hog", "true"))  # served: an infra failure would taint it
    world.tools.handle(world.call("other", "true"))
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(world.tools.handle, world.call("hog", "hold 2")) for _ in range(4)]
        time.sleep(0.2)
        assert world.tools.handle(world.call("other", "echo hi")).output == "hi\n"  # not held up
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(timeout=10).output)
            except QueueTimeout:
                outcomes.append("queue_timeout")
    assert sorted(outcomes) == ["held\n", "held\n", "queue_timeout", "queue_timeout"]
    rec = world.store.rollouts.get("hog")
    assert rec is not None and rec.tainted is False and rec.state == "ready"
    assert world.tools.handle(world.call("hog", "echo again")).output == "again\n"
