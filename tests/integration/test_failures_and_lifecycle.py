"""Infra failures told apart from model errors; lifecycle (release, reaper, reconciler, restarts)."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.stack import TEST_LABEL, RedisServer, Stack, wait_until

pytestmark = pytest.mark.integration


def rid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def infra_count(stack: Stack, reason: str) -> float:
    return stack.metric("sandbox_tool_calls_total", {"tool": "shell", "outcome": "infra_error", "reason": reason})


def test_container_removed_from_outside_is_sandbox_lost_and_counted_once(stack: Stack) -> None:
    r1 = rid("lost")
    assert stack.shell(r1, "echo before").status_code == 200
    before = infra_count(stack, "sandbox_lost")
    model_before = stack.metric(
        "sandbox_tool_calls_total", {"tool": "shell", "outcome": "model_error", "reason": "nonzero_exit"}
    )
    stack.containers_of(r1)[0].remove(force=True)

    r = stack.shell(r1, "echo after")
    assert r.status_code == 503
    assert r.headers["Retry-After"]
    assert r.json()["error"]["code"] == "sandbox_lost"
    assert infra_count(stack, "sandbox_lost") == before + 1
    model_after = stack.metric(
        "sandbox_tool_calls_total", {"tool": "shell", "outcome": "model_error", "reason": "nonzero_exit"}
    )
    assert model_after == model_before

    info = stack.http.get(f"/v1/rollouts/{r1}").json()
    assert info["state"] == "lost"
    assert info["infra_tainted"] is True
    # Never silently re-created: later calls keep failing, and no new container appears.
    assert stack.shell(r1, "echo again").status_code == 503
    assert stack.containers_of(r1) == []
    calls = stack.http.get(f"/v1/rollouts/{r1}/trajectory").json()["calls"]
    assert [c["outcome"] for c in calls] == ["ok", "infra_error", "infra_error"]


def test_release_removes_the_container_and_is_idempotent(stack: Stack) -> None:
    r1 = rid("release")
    assert stack.shell(r1, "echo x").status_code == 200
    assert len(stack.containers_of(r1)) == 1
    first = stack.http.delete(f"/v1/rollouts/{r1}")
    assert first.status_code == 200
    assert first.json()["state"] == "released"
    assert stack.http.delete(f"/v1/rollouts/{r1}").status_code == 200
    wait_until(lambda: stack.containers_of(r1) == [])
    after = stack.shell(r1, "echo y")
    assert after.status_code == 409
    assert after.json()["error"]["code"] == "rollout_released"
    assert stack.http.get(f"/v1/rollouts/{r1}/trajectory").json()["calls"][0]["output"] == "x\n"


def test_an_ended_rollout_is_archived_and_served_from_the_archive_once_redis_forgets_it(stack: Stack) -> None:
    """Redis holds live state only: once it lets an ended rollout go (SANDBOX_ARCHIVE__REDIS_TTL_S),
    its record, trajectory and a late call's answer come from the archive, as before."""
    r1 = rid("archived")
    assert stack.shell(r1, "echo kept").status_code == 200
    assert stack.http.delete(f"/v1/rollouts/{r1}").status_code == 200
    assert 0 < stack.redis.ttl(f"{stack.prefix}:ro:{r1}:calls") <= 300
    for key in list(stack.redis.scan_iter(f"{stack.prefix}:ro:{r1}*")):
        stack.redis.delete(key)  # what the short TTL does, now
    record = stack.http.get(f"/v1/rollouts/{r1}")
    assert (record.status_code, record.json()["state"]) == (200, "released")
    assert stack.http.get(f"/v1/rollouts/{r1}/trajectory").json()["calls"][0]["output"] == "kept\n"
    late = stack.shell(r1, "echo again")  # never a new rollout under an ended one's id
    assert (late.status_code, late.json()["error"]["code"]) == (409, "rollout_released")
    wait_until(lambda: stack.containers_of(r1) == [])  # the release's, removed by the worker; no new one


def test_reaper_expires_idle_rollouts(stack: Stack) -> None:
    r1 = rid("idle")
    assert stack.shell(r1, "echo x").status_code == 200
    # Pretend the rollout was last used long ago; beat runs the real reaper every second.
    stack.redis.zadd(f"{stack.prefix}:live", {r1: time.time() - 10 * 3600})
    wait_until(lambda: stack.http.get(f"/v1/rollouts/{r1}").json()["state"] == "expired")
    wait_until(lambda: stack.containers_of(r1) == [])
    assert stack.shell(r1, "echo y").status_code == 503


def test_reconciler_removes_orphans_and_marks_vanished_records_lost(stack: Stack) -> None:
    orphan = stack.docker.containers.run(
        "rollout-sandbox:bookworm", ["sleep", "infinity"], detach=True, network_mode="none",
        labels={"sandbox.instance": stack.instance, "sandbox.host": "testhost", "sandbox.rollout_id": "nobody",
                TEST_LABEL: stack.session},
    )  # fmt: skip
    r1 = rid("vanish")
    assert stack.shell(r1, "echo x").status_code == 200
    # Stop (not remove) the container: the record still says ready until the reconciler looks.
    stack.containers_of(r1)[0].stop(timeout=0)
    wait_until(lambda: stack.http.get(f"/v1/rollouts/{r1}").json()["state"] == "lost", timeout_s=30)
    wait_until(lambda: not stack.containers({"id": orphan.id}), timeout_s=40)
    assert stack.metric("sandbox_reconciler_actions_total", {"action": "orphan_removed"}, source="worker") >= 1


def test_worker_and_api_restarts_keep_an_existing_rollout_usable(stack: Stack) -> None:
    r1 = rid("restart")
    assert stack.shell(r1, "echo kept > state.txt", item={"task": "demo"}).status_code == 200
    stack.stop_worker()
    stack.start_worker()
    stack.stop_api()
    stack.start_api()
    stack.wait_ready()
    assert stack.http.get(f"/v1/rollouts/{r1}").json()["item"] == {"task": "demo"}
    r = stack.shell(r1, "cat state.txt")
    assert r.status_code == 200, r.text
    assert r.json()["output"] == "kept\n"
    assert len(stack.containers_of(r1)) == 1


def test_guest_killed_from_outside_is_restarted_and_unreachable_guest_falls_back(stack: Stack) -> None:
    r1 = rid("guestdead")
    assert stack.shell(r1, "echo x > f").status_code == 200
    container = stack.containers_of(r1)[0]
    # Kill the guest as root from outside the model: its supervisor restarts it.
    container.exec_run(["sh", "-c", "kill -9 $(pgrep -f 'sandbox-guest serve')"], user="0")
    r = stack.shell(r1, "cat f; id -un")
    assert r.status_code == 200, r.text
    assert r.json()["output"] == "x\nsandbox\n"
    # A guest that runs but cannot be reached: the container is alive, so docker exec serves.
    wait_until(lambda: container.exec_run(["test", "-S", "/run/sandbox-guest/guest.sock"], user="0").exit_code == 0)
    time.sleep(0.3)  # let the restarted guest finish binding before its socket is removed
    before = stack.metric("sandbox_guest_fallbacks_total", {}, source="worker")
    container.exec_run(["rm", "-f", "/run/sandbox-guest/guest.sock"], user="0")
    r = stack.shell(r1, "cat f; id -un; echo $$ > /dev/null", timeout=5)
    assert r.status_code == 200, r.text
    assert r.json()["output"] == "x\nsandbox\n"
    assert stack.metric("sandbox_guest_fallbacks_total", {}, source="worker") == before + 1
    slow = stack.shell(r1, "sleep 30", timeout=1)  # the deadline holds on the fallback path too
    assert slow.headers["X-Sandbox-Reason"] == "timeout"


def test_metrics_carry_no_rollout_ids(stack: Stack) -> None:
    marker = rid("metrics-marker")
    stack.shell(marker, "echo x")
    for url in (f"http://127.0.0.1:{stack.api_port}/metrics", f"http://127.0.0.1:{stack.worker_metrics_port}/metrics"):
        text = httpx.get(url).text
        assert "sandbox_tool_calls_total" in text or "sandbox_provisions_total" in text
        assert marker not in text
    assert stack.metric("sandbox_live_sandboxes", {"state": "ready", "host": "testhost"}) >= 1


def test_a_call_no_worker_takes_in_time_is_queue_timeout_and_never_runs_later(redis_server: RedisServer) -> None:
    # Its own stack: the queue deadline is an API setting, 60 s by default.
    s = Stack(redis_server.url, SANDBOX_TIMEOUTS__QUEUE_S="2", SANDBOX_TIMEOUTS__REPLY_SLACK_S="1")
    try:
        s.start()
        r1 = rid("late")
        assert s.shell(r1, "echo up").status_code == 200
        s.stop_worker()
        late = s.shell(r1, "touch /tmp/ran-late", timeout=1)
        assert (late.status_code, late.json()["error"]["code"]) == (503, "queue_timeout")
        s.start_worker()
        s.wait_ready()
        # The restarted worker found the expired call in its queue and dropped it unrun.
        check = s.shell(r1, "ls /tmp/ran-late")
        assert check.status_code == 200
        assert check.headers["X-Sandbox-Reason"] == "nonzero_exit", check.json()["output"]
        assert s.redis.llen(f"{s.prefix}:calls:testhost") == 0
    finally:
        s.close()
