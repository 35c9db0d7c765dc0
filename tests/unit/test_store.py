"""State transitions against a real Redis (the session's private server, a key prefix per test)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from sandbox.domain.calls import CallResult, ShellArgs
from sandbox.domain.messages import CallRequest
from sandbox.store import Store


def call(call_id: object) -> CallRequest:
    """A queued call, told apart by its call id."""
    return CallRequest("reply", "r", str(call_id), None, "shell", ShellArgs("true", 5.0), None, 1024)


def test_exactly_one_of_many_racing_callers_wins_the_provisioning_claim(store: Store) -> None:
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda _: store.rollouts.claim_provisioning("r1", "default", None, 300), range(200)))
    assert sum(won for won, _, _ in results) == 1
    assert store.rollouts.get("r1").state == "provisioning"  # type: ignore[union-attr]


def test_failed_attempt_can_be_claimed_again_but_ready_cannot(store: Store) -> None:
    _, _, attempt = store.rollouts.claim_provisioning("r", "default", None, 300)
    assert store.rollouts.mark_provision_failed("r", attempt, "engine down")
    won, _, attempt2 = store.rollouts.claim_provisioning("r", "default", None, 300)
    assert won and attempt2 == attempt + 1
    assert not store.rollouts.mark_ready("r", attempt, "h", "cid", "name")  # a stale attempt cannot finish
    assert store.rollouts.mark_ready("r", attempt2, "h", "cid", "name")
    assert store.rollouts.claim_provisioning("r", "default", None, 300)[0] is False


def test_ending_taints_only_lost_rollouts_and_happens_once(store: Store) -> None:
    for rid, how in (("a", "lost"), ("b", "released")):
        _, _, n = store.rollouts.claim_provisioning(rid, "default", None, 300)
        store.rollouts.mark_ready(rid, n, "h", "cid", "name")
        assert store.rollouts.end(rid, how, "why") == "ready"
        assert store.rollouts.end(rid, how, "why") == ""
    assert store.rollouts.get("a").tainted is True  # type: ignore[union-attr]
    assert store.rollouts.get("b").tainted is False  # type: ignore[union-attr]
    assert store.rollouts.live() == []


def test_recorded_results_replay_but_infra_errors_do_not(store: Store) -> None:
    now = time.time()
    ok = CallResult("c1", "fc", "shell", "{}", "ok", "none", "out", started_at=now, finished_at=now)
    infra = CallResult("c2", "fc", "shell", "{}", "infra_error", "sandbox_lost", "", started_at=now, finished_at=now)
    assert store.calls.claim("r", "c1", stale_s=60)
    assert not store.calls.claim("r", "c1", stale_s=60)
    store.calls.record("r", ok)
    store.calls.record("r", infra)
    assert store.calls.stored_result("r", "c1") == ok
    assert store.calls.stored_result("r", "c2") is None
    assert [c["outcome"] for c in store.calls.trajectory("r")] == ["ok", "infra_error"]
    assert store.calls.claim("r", "c2", stale_s=60)  # the claim was released with the record


def test_concurrent_pool_claims_never_hand_out_a_container_twice(store: Store) -> None:
    names = [f"warm-{i}" for i in range(50)]
    for name in names[:25]:
        store.pools.push("env", "h1", name)
    for name in names[25:]:
        store.pools.push("env", "h2", name)
    with ThreadPoolExecutor(32) as pool:
        claims = list(pool.map(lambda i: store.pools.claim("env", ["h1", "h2"]), range(200)))
    got = [c for c in claims if c is not None]
    assert len(got) == 50
    assert sorted(name for _, name in got) == sorted(names)  # each exactly once


def test_first_calls_are_taken_before_calls_queued_earlier(store: Store) -> None:
    for i in range(3):
        store.queues.push_call("h1", call(f"later-{i}"), first=False, ttl_s=60)
    store.queues.push_call("h1", call("first-a"), first=True, ttl_s=60)
    store.queues.push_call("h1", call("first-b"), first=True, ttl_s=60)
    store.queues.push_call("h2", call("other host"), first=True, ttl_s=60)
    taken = [store.queues.pop_call("h1", 0.1) for _ in range(6)]
    assert [c.call_id if c else None for c in taken] == ["first-a", "first-b", "later-0", "later-1", "later-2", None]
    assert store.queues.depths(["h1", "h2"]) == {"h1": (0, 0), "h2": (1, 0)}


def test_a_call_queue_nobody_reads_expires(store: Store) -> None:
    store.queues.push_call("gone", call(1), first=False, ttl_s=1)
    assert store.queues.depths(["gone"]) == {"gone": (0, 1)}
    time.sleep(1.3)
    assert store.queues.depths(["gone"]) == {"gone": (0, 0)}


def test_call_context_reads_the_stored_result_and_the_record_together(store: Store) -> None:
    assert store.calls.context("r", "c1") == (None, None)
    _, _, n = store.rollouts.claim_provisioning("r", "default", None, 300)
    store.rollouts.mark_ready("r", n, "h", "cid", "name")
    now = time.time()
    ok = CallResult("c1", "fc", "shell", "{}", "ok", "none", "out", started_at=now, finished_at=now)
    store.calls.record("r", ok, served=True)
    stored, rec = store.calls.context("r", "c1")
    assert stored == ok and rec is not None and rec.state == "ready" and rec.served


def test_callers_waiting_for_a_container_wake_when_it_is_ready_not_at_their_timeout(store: Store) -> None:
    _, _, attempt = store.rollouts.claim_provisioning("r", "default", None, 300)
    woke_after: list[float] = []

    def wait() -> None:
        started = time.monotonic()
        store.rollouts.wait_for_change("r", 10.0)
        woke_after.append(time.monotonic() - started)

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(wait)
        time.sleep(0.3)
        assert store.rollouts.mark_ready("r", attempt, "h", "cid", "name")
    assert len(woke_after) == 4 and max(woke_after) < 2.0, woke_after
    # Nothing changes: the wait ends at its timeout.
    _, _, again = store.rollouts.claim_provisioning("fresh", "default", None, 300)
    started = time.monotonic()
    store.rollouts.wait_for_change("fresh", 0.3)
    assert time.monotonic() - started >= 0.29


def test_a_new_provisioning_attempt_clears_the_wake_ups_of_the_last(store: Store) -> None:
    _, _, attempt = store.rollouts.claim_provisioning("r", "default", None, 300)
    assert store.rollouts.mark_provision_failed("r", attempt, "engine down")
    assert store.redis.llen(store.keys.wake("r")) > 0
    store.rollouts.claim_provisioning("r", "default", None, 300)
    assert store.redis.llen(store.keys.wake("r")) == 0
