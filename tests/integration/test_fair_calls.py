"""One rollout cannot starve another: its calls beyond SANDBOX_ROLLOUT_PARALLEL_CALLS wait their
turn, and a call that never ran (queue_timeout) taints nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.stack import RedisServer, Stack, answer_code

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_stack(redis_server: RedisServer) -> Iterator[Stack]:
    """A host with 4 call threads, 2 calls at once per rollout, and a 5 s queue deadline."""
    stack = Stack(
        redis_server.url,
        SANDBOX_WORKER_CONCURRENCY="4",
        SANDBOX_ROLLOUT_PARALLEL_CALLS="2",
        SANDBOX_TIMEOUTS__QUEUE_S="5",
        SANDBOX_TIMEOUTS__REPLY_SLACK_S="3",
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.close()


def test_a_rollout_running_many_long_commands_does_not_starve_its_neighbour(small_stack: Stack) -> None:
    hog, neighbour = f"hog-{uuid.uuid4().hex[:6]}", f"nb-{uuid.uuid4().hex[:6]}"
    assert small_stack.shell(hog, "true").status_code == 200
    assert small_stack.shell(neighbour, "true").status_code == 200
    with ThreadPoolExecutor(6) as pool:
        # Six 8 s commands on one rollout: without a cap they would take all 4 call threads
        # for 8 s, and the neighbour's echo would wait past the 5 s queue deadline.
        hogging = [pool.submit(small_stack.shell, hog, "sleep 8; echo slept", timeout=20) for _ in range(6)]
        time.sleep(1.0)
        started = time.monotonic()
        echo = small_stack.shell(neighbour, "echo hi")
        waited = time.monotonic() - started
        answers = [answer_code(f.result(timeout=60)) for f in hogging]
    assert echo.status_code == 200 and echo.json()["output"] == "hi\n"
    assert waited < 3.0, f"the neighbour's call waited {waited:.1f} s behind the hog"
    # Two ran; the others waited for the hog's own slots past the deadline and never ran.
    assert answers.count("200 ok") == 2, answers
    assert answers.count("503 queue_timeout") == 4, answers
    for rollout in (hog, neighbour):
        assert small_stack.http.get(f"/v1/rollouts/{rollout}").json()["infra_tainted"] is False
    # The hog's rollout goes on: its calls answer again once its own commands ended.
    assert small_stack.shell(hog, "echo again").json()["output"] == "again\n"
    calls = small_stack.http.get(f"/v1/rollouts/{hog}/trajectory").json()["calls"]
    assert sum(c["reason"] == "queue_timeout" for c in calls) == 4
