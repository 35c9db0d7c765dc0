"""Two sandbox hosts on one machine: two Docker engines, two workers, one API.

Host A is the machine's engine (its worker also runs beat); host B is a dockerd of the
test's own, so the test may stop it. A burst spreads over both; stopping B's engine
mid-run must lose exactly B's served rollouts (503 infra, ended lost and tainted), move
B's unserved ones to A, keep A serving, quarantine B, and let B rejoin when it is back.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.stack import DockerEngine, Stack, answer_code, free_port, two_engine_stack, wait_until

pytestmark = pytest.mark.integration
HOST_LOSS_CODES = {"host_unavailable", "sandbox_lost", "engine_unavailable"}


@pytest.fixture(scope="module")
def two_hosts() -> Iterator[tuple[Stack, DockerEngine, int]]:
    with two_engine_stack(SANDBOX_TIMEOUTS__QUEUE_S="10", SANDBOX_TIMEOUTS__REPLY_SLACK_S="5") as (stack, engine_b):
        metrics_b = free_port()
        stack.start_host("host-b", engine_b.sock, metrics_b)
        wait_until(lambda: host_status(stack, "host-b") == "up", timeout_s=60)
        yield stack, engine_b, metrics_b


def host_status(stack: Stack, host: str) -> str | None:
    hosts = stack.http.get("/readyz").json()["checks"]["hosts"]
    return hosts.get(host, {}).get("status")


def rollout(stack: Stack, rid: str) -> dict[str, Any]:
    return stack.http.get(f"/v1/rollouts/{rid}").json()


def pre_provision_until_one_lands_on(stack: Stack, host: str, tag: str) -> list[str]:
    """Pre-provision small batches until at least one rollout sits on `host`; return those that do."""
    for batch in range(4):
        rids = [f"mh-{tag}-idle{batch}-{i}" for i in range(6)]
        r = stack.http.post("/v1/rollouts", json={"rollouts": [{"rollout_id": rid} for rid in rids]})
        assert r.status_code in (200, 202), r.text
        wait_until(lambda rids=rids: all(rollout(stack, rid)["state"] == "ready" for rid in rids), timeout_s=90)
        there = [rid for rid in rids if rollout(stack, rid)["host"] == host]
        if there:
            return there
    raise AssertionError(f"no pre-provisioned rollout was placed on {host}")


def test_a_burst_spreads_and_a_stopped_engine_loses_only_its_own_rollouts(
    two_hosts: tuple[Stack, DockerEngine, int],
) -> None:
    stack, engine_b, metrics_b = two_hosts
    tag = uuid.uuid4().hex[:6]

    # A burst of first calls spreads over both hosts (both pull from the shared queue).
    rollouts = [f"mh-{tag}-{i}" for i in range(16)]
    with ThreadPoolExecutor(len(rollouts)) as pool:
        first = list(pool.map(lambda rid: stack.shell(rid, "echo first"), rollouts))
    assert [r.status_code for r in first] == [200] * len(rollouts), [r.text for r in first if r.status_code != 200]
    placed = {rid: rollout(stack, rid)["host"] for rid in rollouts}
    on_a = [rid for rid, host in placed.items() if host == "host-a"]
    on_b = [rid for rid, host in placed.items() if host == "host-b"]
    assert on_a and on_b and len(on_a) + len(on_b) == len(rollouts), placed
    idle_on_b = pre_provision_until_one_lands_on(stack, "host-b", tag)

    # Every rollout keeps calling while B's engine stops under it. A trainer drops a
    # rollout after its first infra failure, and so does each loop here.
    answers: dict[str, list[tuple[int, str]]] = defaultdict(list)
    stop = threading.Event()

    def keep_calling(rid: str) -> None:
        while not stop.is_set():
            r = stack.shell(rid, "echo tick")
            answers[rid].append((r.status_code, answer_code(r).split(" ", 1)[1]))
            if r.status_code != 200:
                return
            time.sleep(0.05)

    callers = [threading.Thread(target=keep_calling, args=(rid,)) for rid in rollouts]
    for t in callers:
        t.start()
    time.sleep(1.5)
    engine_b.stop()  # its containers stop with it
    wait_until(lambda: all(answers[rid] and answers[rid][-1][0] != 200 for rid in on_b), timeout_s=60)
    time.sleep(2.0)  # host A keeps serving meanwhile
    stop.set()
    for t in callers:
        t.join(timeout=60)

    for rid in on_a:
        assert answers[rid] and {status for status, _ in answers[rid]} == {200}, (rid, answers[rid][-3:])
    for rid in on_b:
        status, code = answers[rid][-1]
        assert status == 503 and code in HOST_LOSS_CODES, (rid, answers[rid][-3:])

    # B's served rollouts end lost and tainted, whether or not a call of theirs noticed.
    wait_until(lambda: all(rollout(stack, rid)["state"] == "lost" for rid in on_b), timeout_s=30)
    for rid in on_b:
        rec = rollout(stack, rid)
        assert rec["infra_tainted"] and rec["taint_reason"] in HOST_LOSS_CODES, rec
    r = stack.shell(on_b[0], "echo again")
    assert r.status_code == 503 and r.json()["error"]["code"] in HOST_LOSS_CODES

    # B is quarantined, shown in /readyz and the metrics; the service stays ready on A.
    wait_until(lambda: host_status(stack, "host-b") == "quarantined", timeout_s=15)
    ready = stack.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["hosts"]["host-b"]["reason"] == "engine_unhealthy"
    assert ready.json()["checks"]["hosts_taking_new_rollouts"] == ["host-a"]
    assert stack.metric("sandbox_host_status", {"host": "host-b", "status": "quarantined"}) == 1
    assert stack.metric("sandbox_host_up", {"host": "host-b"}) == 0
    assert stack.metric("sandbox_host_up", {"host": "host-a"}) == 1

    # B's pre-provisioned rollouts had served nothing: they move to A without an error.
    for rid in idle_on_b:
        r = stack.shell(rid, "echo moved")
        assert r.status_code == 200 and r.json()["output"] == "moved\n", r.text
        assert rollout(stack, rid)["host"] == "host-a"

    # New rollouts go to A only, even though B's worker still pulls from the shared queue.
    fresh = [f"mh-{tag}-new-{i}" for i in range(8)]
    with ThreadPoolExecutor(len(fresh)) as pool:
        answered = list(pool.map(lambda rid: stack.shell(rid, "echo new"), fresh))
    assert [r.status_code for r in answered] == [200] * len(fresh), [r.text for r in answered]
    assert {rollout(stack, rid)["host"] for rid in fresh} == {"host-a"}

    # Host A's guests kept their sockets the whole time: no call fell back to docker exec
    # (both workers share one filesystem here; neither may clean up the other's sockets).
    assert stack.metric("sandbox_guest_fallbacks_total", {}, source="worker") == 0

    # B's worker stops too: no heartbeat, so B is down.
    stack.stop_host("host-b")
    wait_until(lambda: host_status(stack, "host-b") == "down", timeout_s=30)

    # B comes back and rejoins: it takes new rollouts again.
    engine_b.start()
    stack.start_host("host-b", engine_b.sock, metrics_b)
    wait_until(lambda: host_status(stack, "host-b") == "up", timeout_s=60)
    assert pre_provision_until_one_lands_on(stack, "host-b", f"{tag}-back")
