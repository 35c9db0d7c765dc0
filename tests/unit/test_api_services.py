"""The API side's orchestration (ToolService, RolloutService, GradingService) and the races it
guards against, over the fakes: a real Store on the session's Redis, the real services, the
worker side in-process (tests/fakes/host.py). DESIGN.md section 3 is the rule book."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import sandbox.api.rollout_service as rollout_service
from sandbox import metrics
from sandbox.api.grading_service import GradingService
from sandbox.domain.calls import ToolCall, parse_tool_call
from sandbox.domain.container import container_spec, pool_container_prefix
from sandbox.domain.environment import EnvironmentSpec
from sandbox.domain.errors import (
    HostUnavailable,
    ProvisionFailed,
    QueueTimeout,
    RolloutInfraTainted,
    RolloutNotFound,
    RolloutReleased,
    SandboxLost,
)
from sandbox.domain.rollout import RolloutRecord, container_name
from tests.fakes.backend import InMemoryBackend
from tests.fakes.clock import FakeClock
from tests.fakes.host import FakeHost, World
from tests.stack import wait_until
from tests.unit.conftest import MakeWorld


def call(w: World, rid: str, command: str = "echo hi", call_id: str | None = None, **fields: Any) -> ToolCall:
    return dataclasses.replace(w.call(rid, command, call_id), **fields)


def runs(w: World, call_id: str) -> int:
    """How many times the call was handed to a host to run."""
    return sum(1 for _, request, _ in w.dispatcher.executed if request.call_id == call_id)


def counted(tool: str, outcome: str, reason: str) -> float:
    return metrics.TOOL_CALLS.labels(tool, outcome, reason)._value.get()


def record(w: World, rid: str) -> RolloutRecord:
    rec = w.store.rollouts.get(rid)
    assert rec is not None
    return rec


def blocked_waiters(w: World) -> int:
    """This world's clients blocked in Redis now (flag b): its callers waiting for a container.

    The session's Redis is shared (an integration stack's call threads block on it too), so
    only the world's own blocking connections, named after its key prefix, count."""
    name = w.settings.key_prefix
    return sum(1 for c in w.store.redis.client_list() if "b" in c.get("flags", "") and c.get("name") == name)


def in_parallel(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """fn(0), ..., fn(n-1) in n threads released at once: a real race, not a queue."""
    barrier = threading.Barrier(n, timeout=10)

    def go(i: int) -> Any:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(go, i) for i in range(n)]
    return [f.result() for f in futures]


# --- ToolService.handle ---------------------------------------------------------------------


def test_a_call_answers_ok_once_and_its_retry_replays_the_answer_without_running_again(world: World) -> None:
    first = world.tools.handle(call(world, "r", "echo hello", "c1"))
    retry = world.tools.handle(call(world, "r", "echo hello", "c1"))
    assert (first.outcome, first.output) == ("ok", "hello\n")
    assert retry == first
    assert runs(world, "c1") == 1
    assert world.backend.containers[record(world, "r").container_name].requests == 1
    assert [c["call_id"] for c in world.rollouts.trajectory("r")[1]] == ["c1"]


@pytest.mark.parametrize(
    "tool, arguments",
    [("shell", "{oops"), ("shell", {}), ("shell", {"command": "  "}), ("read_file", {"path": ""})],
    ids=["unparsed", "no-command", "blank-command", "empty-path"],
)
def test_invalid_arguments_are_the_models_error_and_provision_nothing(world: World, tool: str, arguments: Any) -> None:
    bad = parse_tool_call(tool, {"trace_id": "r", "call_id": "c1", "arguments": arguments})
    result = world.tools.handle(bad)
    assert (result.outcome, result.reason) == ("model_error", "invalid_arguments")
    assert result.output.startswith(f"{tool}: ")
    assert world.dispatcher.provisioned == [] and world.dispatcher.executed == []
    assert world.backend.created == []
    assert [(c["call_id"], c["reason"]) for c in world.rollouts.trajectory("r")[1]] == [("c1", "invalid_arguments")]


def test_the_tool_budget_stops_the_call_past_it(world: World) -> None:
    world.registry.register("tight", EnvironmentSpec(max_tool_calls=2))
    item = {"environment": "tight"}
    answers = [world.tools.handle(call(world, "r", "echo hi", f"c{i}", item=item)) for i in range(3)]
    assert [(a.outcome, a.reason) for a in answers[:2]] == [("ok", "none")] * 2
    assert (answers[2].outcome, answers[2].reason) == ("model_error", "budget_exhausted")
    assert "budget" in answers[2].output
    assert runs(world, "c2") == 0


def test_an_infra_failure_does_not_use_the_models_tool_budget(world: World) -> None:
    world.registry.register("tight", EnvironmentSpec(max_tool_calls=2))
    item = {"environment": "tight"}
    world.backend.refuse_next_create(ProvisionFailed("no space left on device"))
    with pytest.raises(ProvisionFailed):
        world.tools.handle(call(world, "r", item=item))
    answers = [world.tools.handle(call(world, "r", item=item)).reason for _ in range(3)]
    assert answers == ["none", "none", "budget_exhausted"]


def test_a_sandbox_lost_after_serving_taints_the_rollout_and_every_later_call_is_503(world: World) -> None:
    assert world.tools.handle(call(world, "r")).outcome == "ok"
    world.backend.vanish(record(world, "r").container_name)
    with pytest.raises(SandboxLost) as lost:
        world.tools.handle(call(world, "r", call_id="c2"))
    assert lost.value.http_status == 503
    rec = record(world, "r")
    assert (rec.state, rec.tainted) == ("lost", True)
    assert world.rollouts.trajectory("r")[1][-1]["reason"] == "sandbox_lost"
    with pytest.raises(SandboxLost):  # never a fresh container mid-rollout
        world.tools.handle(call(world, "r"))
    assert len(world.dispatcher.provisioned) == 1


def test_a_provisioning_failure_before_anything_was_served_taints_nothing(world: World) -> None:
    world.backend.refuse_next_create(ProvisionFailed("no space left on device"))
    with pytest.raises(ProvisionFailed):
        world.tools.handle(call(world, "r", call_id="c1"))
    assert not record(world, "r").tainted
    retry = world.tools.handle(call(world, "r", call_id="c1"))  # the platform's retry
    assert retry.outcome == "ok"
    assert len(world.dispatcher.provisioned) == 2
    rec = record(world, "r")
    assert (rec.state, rec.tainted) == ("ready", False)


def test_a_duplicate_of_a_running_call_waits_for_its_result_instead_of_running_it(world: World) -> None:
    world.tools.handle(call(world, "r"))  # the sandbox is ready; the race is the call itself
    first, second = in_parallel(2, lambda _: world.tools.handle(call(world, "r", "sleep 0.5", "dup")))
    assert first == second and first.outcome == "ok"
    assert runs(world, "dup") == 1
    assert world.backend.containers[record(world, "r").container_name].requests == 2
    assert [c["call_id"] for c in world.rollouts.trajectory("r")[1]].count("dup") == 1


def test_every_answered_call_is_counted_once_infra_errors_included(world: World) -> None:
    labels = {
        "ok": ("shell", "ok", "none"),
        "invalid": ("shell", "model_error", "invalid_arguments"),
        "provision": ("shell", "infra_error", "provision_failed"),
        "lost": ("shell", "infra_error", "sandbox_lost"),
    }
    before = {k: counted(*v) for k, v in labels.items()}
    world.backend.refuse_next_create(ProvisionFailed("no space left on device"))
    with pytest.raises(ProvisionFailed):
        world.tools.handle(call(world, "r"))
    world.tools.handle(call(world, "r"))
    world.tools.handle(call(world, "r", arguments={}))
    world.tools.handle(call(world, "r"))
    world.backend.vanish(record(world, "r").container_name)
    with pytest.raises(SandboxLost):
        world.tools.handle(call(world, "r"))
    after = {k: counted(*v) for k, v in labels.items()}
    assert {k: after[k] - before[k] for k in labels} == {"ok": 2, "invalid": 1, "provision": 1, "lost": 1}


# --- RolloutService.ensure_ready ------------------------------------------------------------


def test_thirty_first_calls_of_one_rollout_share_one_provisioning(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wake-up wakes 16 waiters; the rest notice at their next look, 5 s later. Look sooner
    # here: the test is about single flight, and build_world's Redis client (redis-py 8
    # default) times out a 5 s blocking read as StoreUnavailable.
    monkeypatch.setattr(rollout_service, "WAIT_LOOK_S", 0.2)
    records = in_parallel(30, lambda _: world.rollouts.ensure_ready("r", None))
    assert len(world.dispatcher.provisioned) == 1
    assert {(r.state, r.container_name) for r in records} == {("ready", container_name("unit", "r"))}
    assert world.backend.created == [container_name("unit", "r")]


def add_warm(w: World, name: str) -> None:
    spec = container_spec(w.settings, w.registry.get("default"), w.settings.image, name, role="pool")
    w.backend.add_container(spec)
    w.store.pools.push("default", "h1", name)


def test_a_warm_container_is_claimed_without_provisioning_and_its_pool_refilled(world: World) -> None:
    warm = pool_container_prefix("unit") + "1"
    add_warm(world, warm)
    rec = world.rollouts.ensure_ready("r", None)
    assert (rec.state, rec.host, rec.container_name) == ("ready", "h1", warm)
    assert world.dispatcher.provisioned == []
    assert world.dispatcher.refills == ["h1"]
    assert world.tools.handle(call(world, "r", "pwd")).output == "/workspace\n"


def test_two_rollouts_racing_for_a_pool_of_one_never_share_its_container(world: World) -> None:
    warm = pool_container_prefix("unit") + "1"
    add_warm(world, warm)
    records = in_parallel(2, lambda i: world.rollouts.ensure_ready(f"r{i}", None))
    names = sorted(r.container_name for r in records)
    assert warm in names and len(set(names)) == 2
    assert len(world.dispatcher.provisioned) == 1  # the loser got a cold start


def test_a_failed_attempt_fails_all_its_waiters_and_the_next_call_claims_a_new_one(make_world: MakeWorld) -> None:
    world = make_world(attach=False)  # this test plays the worker, so the waiters wait for it
    with ThreadPoolExecutor(5) as pool:
        waiters = [pool.submit(world.rollouts.ensure_ready, "r", None) for _ in range(5)]
        wait_until(lambda: blocked_waiters(world) == 5, timeout_s=5, interval_s=0.02)
        assert world.dispatcher.provisioned == [("r", 1, "")]
        world.backend.refuse_next_create(ProvisionFailed("no space left on device"))
        assert world.host.provisioner.provision("r", 1) == "failed"
        for waiter in waiters:
            with pytest.raises(ProvisionFailed, match="no space left on device"):
                waiter.result(timeout=5)
    world.host.attach()
    rec = world.rollouts.ensure_ready("r", None)
    assert (rec.state, rec.provision_attempt) == ("ready", 2)
    assert world.dispatcher.provisioned == [("r", 1, ""), ("r", 2, "")]


def test_a_served_rollout_on_a_down_host_ends_lost_and_tainted(make_world: MakeWorld) -> None:
    clock = FakeClock()
    world = make_world(clock=clock)
    world.tools.handle(call(world, "r"))
    clock.advance(30)  # h1 misses its heartbeats (down after 20 s)
    with pytest.raises(HostUnavailable):
        world.rollouts.ensure_ready("r", None)
    rec = record(world, "r")
    assert (rec.state, rec.tainted, rec.taint_reason) == ("lost", True, "host_unavailable")
    with pytest.raises(SandboxLost):
        world.tools.handle(call(world, "r"))
    assert len(world.dispatcher.provisioned) == 1


def test_an_unserved_rollout_on_a_down_host_is_provisioned_again_on_another(make_world: MakeWorld) -> None:
    clock = FakeClock()
    world = make_world(clock=clock)
    assert world.rollouts.ensure_ready("r", None).host == "h1"
    clock.advance(30)  # h1 is down; h2 comes up and its worker takes the provisioning queue
    h2_settings = world.settings.model_copy(update={"host_id": "h2"})
    h2_backend = InMemoryBackend(images=[world.settings.image])
    h2 = FakeHost(h2_settings, world.store, h2_backend, world.registry, world.dispatcher, clock).attach()
    h2.beat()
    rec = world.rollouts.ensure_ready("r", None)
    assert (rec.state, rec.host, rec.provision_attempt, rec.tainted) == ("ready", "h2", 2, False)
    assert len(world.dispatcher.provisioned) == 2
    assert world.tools.handle(call(world, "r", "echo moved")).output == "moved\n"
    assert h2_backend.containers[rec.container_name].requests == 1


def test_a_released_rollout_takes_no_more_calls(world: World) -> None:
    world.rollouts.ensure_ready("r", None)
    world.rollouts.release("r")
    with pytest.raises(RolloutReleased) as released:
        world.rollouts.ensure_ready("r", None)
    assert released.value.http_status == 409
    with pytest.raises(RolloutReleased):
        world.tools.handle(call(world, "r"))
    assert len(world.dispatcher.provisioned) == 1


def test_no_worker_is_a_queue_timeout_that_taints_nothing(make_world: MakeWorld) -> None:
    world = make_world(attach=False, timeouts={"provision_s": 0.5, "queue_s": 5.0, "reply_slack_s": 2.0})
    with pytest.raises(QueueTimeout):
        world.tools.handle(call(world, "r"))
    assert len(world.dispatcher.provisioned) == 1
    assert not record(world, "r").tainted
    assert [c["reason"] for c in world.rollouts.trajectory("r")[1]] == ["queue_timeout"]


def test_release_is_idempotent(world: World) -> None:
    name = world.rollouts.ensure_ready("r", None).container_name
    ended_before = metrics.ROLLOUTS_ENDED.labels("released")._value.get()
    first = world.rollouts.release("r")
    again = world.rollouts.release("r")
    assert first.state == again.state == "released"
    assert first.ended_at == again.ended_at
    assert metrics.ROLLOUTS_ENDED.labels("released")._value.get() - ended_before == 1
    assert name not in world.backend.containers


def test_releasing_twice_dispatches_one_destroy(world: World) -> None:
    world.rollouts.ensure_ready("r", None)
    world.rollouts.release("r")
    world.rollouts.release("r")
    assert len(world.dispatcher.destroyed) == 1


def test_unknown_rollouts_are_not_found(world: World) -> None:
    with pytest.raises(RolloutNotFound):
        world.rollouts.trajectory("nobody")
    with pytest.raises(RolloutNotFound):
        world.rollouts.release("nobody")


# --- GradingService -------------------------------------------------------------------------


def grade(w: World, rid: str, **item: Any) -> dict[str, Any]:
    body = {
        "trace_id": rid,
        "item": {"grader": "file_f1", "reference_files": ["a.py"], **item},
        # The trajectory comes from our records; what the sample claims is ignored.
        "sample": {"output_json": ["a.py", "b.py"], "output_tools": [{"name": "shell"}] * 5},
    }
    return GradingService(w.store, w.registry, w.rollouts, w.settings).grade(body)


def test_a_tainted_rollout_is_refused_and_counted_as_an_infra_zero(world: World) -> None:
    world.tools.handle(call(world, "r"))
    world.backend.vanish(record(world, "r").container_name)
    with pytest.raises(SandboxLost):
        world.tools.handle(call(world, "r"))
    zeros = metrics.ZERO_REWARDS.labels("infra")._value.get()
    with pytest.raises(RolloutInfraTainted) as refused:
        grade(world, "r")
    assert refused.value.http_status == 503
    assert metrics.ZERO_REWARDS.labels("infra")._value.get() - zeros == 1


def test_file_f1_scores_a_served_rollout_from_its_record_and_releases_it(world: World) -> None:
    world.tools.handle(call(world, "r"))
    world.tools.handle(call(world, "r", arguments={}))  # a model error still counts as a call
    name = record(world, "r").container_name
    result = grade(world, "r", tool_call_target=1, penalty_per_extra_call=0.1)
    assert result["raw_score"] == pytest.approx(2 / 3)  # precision 1/2, recall 1
    assert result["tool_calls"] == 2
    assert result["score"] == pytest.approx(2 / 3 - 0.1)
    assert ("h1", "r", name) in world.dispatcher.destroyed
    assert (record(world, "r").state, record(world, "r").end_reason) == ("released", "graded")
