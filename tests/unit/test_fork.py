"""Forking a rollout (PROTOCOL.md, "Fork") over the fakes: the API's ForkService, the worker's
Forker and the store's scripts, with an in-memory engine whose snapshots copy a container's files.

The heart is that a fork creates every child or nothing: whatever step fails, no child record,
container or image is left behind and the same ids can be forked again."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sandbox import metrics
from sandbox.domain.calls import CallResult
from sandbox.domain.environment import EnvironmentSpec
from sandbox.domain.errors import (
    EngineUnavailable,
    HostFull,
    HostUnavailable,
    InfraError,
    InvalidForkRequest,
    ProvisionFailed,
    RolloutExists,
    RolloutNotForkable,
    RolloutNotFound,
    SandboxError,
    SandboxLost,
)
from sandbox.domain.outcomes import Outcome
from sandbox.domain.rollout import container_name
from sandbox.endings import taint
from tests.fakes.clock import FakeClock
from tests.fakes.host import World
from tests.stack import wait_until
from tests.unit.conftest import MakeWorld


def run(w: World, rid: str, command: str, item: dict[str, Any] | None = None) -> tuple[str, str, str]:
    """One shell call: (outcome, reason, output)."""
    result = w.tools.handle(dataclasses.replace(w.call(rid, command), item=item))
    return result.outcome, result.reason, result.output


def parent(w: World, rid: str = "p") -> str:
    """A ready rollout that served one call, which wrote a.txt."""
    assert run(w, rid, "echo hello > a.txt")[0] == "ok"
    return rid


def forks(result: str) -> float:
    return metrics.FORKS.labels(result)._value.get()


def reconciled(action: str) -> float:
    return metrics.RECONCILER_ACTIONS.labels(action)._value.get()


def name_of(w: World, rid: str) -> str:
    return container_name(w.settings.instance, rid)


def blocked_waiters(w: World) -> int:
    """This world's clients blocked in Redis now (a fork's API side or a call waiting for its container)."""
    name = w.settings.key_prefix
    return sum(1 for c in w.store.redis.client_list() if "b" in c.get("flags", "") and c.get("name") == name)


def assert_nothing_left(w: World, child_ids: list[str], parent_id: str = "p", parent_box: bool = True) -> None:
    assert [w.store.rollouts.get(c) for c in child_ids] == [None] * len(child_ids)
    assert set(w.backend.containers) == ({name_of(w, parent_id)} if parent_box else set())
    assert set(w.backend.images) == {w.settings.image}
    assert w.store.rollouts.children(parent_id) == []


def before_snapshot(w: World, monkeypatch: pytest.MonkeyPatch, before: Callable[[], None]) -> None:
    real = w.backend.snapshot

    def snapshot(name: str, tag: str, labels: dict[str, str]) -> str:
        before()
        return real(name, tag, labels)

    monkeypatch.setattr(w.backend, "snapshot", snapshot)


# --- the contract ---------------------------------------------------------------------------


def test_children_start_from_the_parents_files_isolated_with_their_lineage(world: World) -> None:
    parent(world)
    children = world.forks.fork("p", {"count": 3})
    ids = [c["rollout_id"] for c in children]
    assert [c["state"] for c in children] == ["ready"] * 3 and len(set(ids)) == 3 and "p" not in ids
    assert world.rollouts.get("p").public()["children"] == ids
    for child in ids:
        public = world.rollouts.get(child).public()
        assert (public["state"], public["parent"]) == ("ready", {"rollout_id": "p", "at_call": 0})
        assert world.store.calls.trajectory(child) == []
        assert run(world, child, "cat a.txt") == ("ok", "none", "hello\n")
    for i, rid in enumerate(["p", *ids]):
        assert run(world, rid, f"echo mine{i} > a.txt")[0] == "ok"
    for i, rid in enumerate(["p", *ids]):
        assert run(world, rid, "cat a.txt")[2] == f"mine{i}\n"
    assert len(world.store.calls.trajectory("p")) == 3
    assert [rid for rid, _, _ in world.dispatcher.provisioned] == ["p"]  # the children were forked, not provisioned


def test_explicit_children_each_get_a_fresh_tool_budget(world: World) -> None:
    world.registry.register("tight", EnvironmentSpec(max_tool_calls=2))
    item = {"environment": "tight"}
    answers = [run(world, "p", cmd, item)[:2] for cmd in ("echo hello > a.txt", "true", "true")]
    assert answers == [("ok", "none"), ("ok", "none"), ("model_error", "budget_exhausted")]
    assert world.forks.fork("p", {"rollout_ids": ["a", "b"]}) == [{"rollout_id": c, "state": "ready"} for c in "ab"]
    for child in ("a", "b"):
        public = world.rollouts.get(child).public()
        assert (public["environment"], public["parent"]) == ("tight", {"rollout_id": "p", "at_call": 2})
        assert run(world, child, "cat a.txt") == ("ok", "none", "hello\n")
        assert [run(world, child, "true")[:2] for _ in range(2)] == [
            ("ok", "none"),
            ("model_error", "budget_exhausted"),
        ]


# --- bad requests and refusals --------------------------------------------------------------


def test_bad_fork_requests_are_400_and_create_nothing(make_world: MakeWorld) -> None:
    w = make_world(fork_max_children=4)
    parent(w)
    both, dup, own = {"count": 1, "rollout_ids": ["a"]}, {"rollout_ids": ["a", "a"]}, {"rollout_ids": ["a", "p"]}
    for body in (both, {}, {"count": 0}, {"count": 5}, {"count": True}, dup, own):
        with pytest.raises(InvalidForkRequest) as refused:
            w.forks.fork("p", body)
        assert (refused.value.http_status, refused.value.code) == (400, "invalid_fork_request"), body
    assert w.store.rollouts.get("a") is None and w.dispatcher.forks == []
    assert len(w.forks.fork("p", {"count": 4})) == 4  # the limit itself is allowed


def test_an_unknown_parent_is_404_and_a_taken_child_id_creates_none_of_the_children(world: World) -> None:
    with pytest.raises(RolloutNotFound):
        world.forks.fork("nobody", {"count": 1})
    parent(world)
    assert run(world, "x", "echo other > a.txt")[0] == "ok"
    with pytest.raises(RolloutExists) as exists:
        world.forks.fork("p", {"rollout_ids": ["a", "x", "b"]})
    assert exists.value.http_status == 409
    assert world.store.rollouts.get("a") is None and world.store.rollouts.get("b") is None
    x = world.rollouts.get("x")
    assert (x.state, x.parent) == ("ready", "") and run(world, "x", "cat a.txt")[2] == "other\n"
    assert world.dispatcher.forks == [] and world.rollouts.get("p").children == ()


def test_ended_lost_and_unprovisioned_rollouts_are_not_forkable(world: World) -> None:
    before = forks("refused")
    parent(world, "released")
    world.rollouts.release("released")
    parent(world, "lost")
    world.backend.vanish(name_of(world, "lost"))
    with pytest.raises(SandboxLost):
        world.tools.handle(world.call("lost"))
    lost = world.store.rollouts.get("lost")
    assert lost is not None and (lost.state, lost.tainted) == ("lost", True)
    parent(world, "tainted")  # still ready, but a call of it failed on the engine after it served
    world.backend.engine_down = True
    with pytest.raises(EngineUnavailable):
        world.tools.handle(world.call("tainted"))
    world.backend.engine_down = False
    tainted = world.store.rollouts.get("tainted")
    assert tainted is not None and (tainted.state, tainted.tainted) == ("ready", True)
    world.store.rollouts.ensure("pending", "default", None)
    assert world.store.rollouts.claim_provisioning("starting", "default", None, 300)[0]
    for rid in ("released", "lost", "tainted", "pending", "starting"):
        with pytest.raises(RolloutNotForkable) as refused:
            world.forks.fork(rid, {"rollout_ids": ["k"]})
        assert refused.value.http_status == 409, rid
    assert forks("refused") == before + 5
    assert world.store.rollouts.get("k") is None and world.dispatcher.forks == []


def test_a_parent_tainted_before_its_host_runs_the_fork_is_refused_there(world: World) -> None:
    parent(world)
    host_side = world.dispatcher.on_fork
    assert host_side is not None

    def taint_then_fork(host: str, request: Any) -> object:
        taint(world.store, "p", "worker_lost")  # a call of the parent failed meanwhile
        return host_side(host, request)

    world.dispatcher.on_fork = taint_then_fork
    with pytest.raises(RolloutNotForkable) as refused:
        world.forks.fork("p", {"rollout_ids": ["a", "b"]})
    assert refused.value.http_status == 409 and "tainted" in refused.value.message
    assert_nothing_left(world, ["a", "b"])


# --- the parent's host ----------------------------------------------------------------------


def test_a_full_or_down_host_refuses_the_fork_and_creates_nothing(make_world: MakeWorld) -> None:
    clock = FakeClock()
    w = make_world(clock=clock)
    parent(w)
    clock.advance(2)  # past the API's one-second cache of the hosts' views
    w.host.beat(capacity=2, containers=2)
    with pytest.raises(HostFull) as full:
        w.forks.fork("p", {"rollout_ids": ["a"]})
    assert full.value.http_status == 503 and "'h1'" in full.value.message and "of 2 containers" in full.value.message
    clock.advance(30)  # h1 misses its heartbeats (down after 20 s)
    with pytest.raises(HostUnavailable) as down:
        w.forks.fork("p", {"rollout_ids": ["a"]})
    assert (down.value.http_status, down.value.code) == (503, "host_unavailable")
    assert w.store.rollouts.get("a") is None and w.dispatcher.forks == []


# --- failures leave nothing behind ----------------------------------------------------------


def refuse_second_create(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine refuses one of the children's creations (whichever thread comes second)."""
    real, counter = w.backend.create, itertools.count()

    def create(spec: Any) -> str:
        if next(counter) == 1:
            w.backend.refuse_next_create(ProvisionFailed("no space left on device"))
        return real(spec)

    monkeypatch.setattr(w.backend, "create", create)


@pytest.mark.parametrize("step", ["snapshot", "second-child"])
def test_a_failed_fork_leaves_nothing_and_the_same_ids_fork_again(
    world: World, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    parent(world)
    ids = ["a", "b", "c"]
    if step == "snapshot":
        world.backend.refuse_next_snapshot(EngineUnavailable("Docker engine unavailable: connection refused"))
    else:
        refuse_second_create(world, monkeypatch)
    before = forks("failed")
    with pytest.raises(InfraError) as failed:
        world.forks.fork("p", {"rollout_ids": ids})
    assert failed.value.http_status == 503
    if step == "second-child":
        assert len(world.backend.created) == 3 and len(world.backend.destroyed) >= 1  # one child was made, then undone
    assert_nothing_left(world, ids)
    assert forks("failed") == before + 1
    rec = world.store.rollouts.get("p")
    assert rec is not None and (rec.state, rec.tainted) == ("ready", False)
    assert run(world, "p", "cat a.txt") == ("ok", "none", "hello\n")
    assert [c["state"] for c in world.forks.fork("p", {"rollout_ids": ids})] == ["ready"] * 3
    assert [run(world, c, "cat a.txt")[2] for c in ids] == ["hello\n"] * 3


def test_the_parents_container_vanishing_under_the_snapshot_loses_the_parent(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent(world)
    before_snapshot(world, monkeypatch, lambda: world.backend.vanish(name_of(world, "p")))
    with pytest.raises(SandboxError) as lost:
        world.forks.fork("p", {"rollout_ids": ["a", "b"]})
    assert (lost.value.http_status, lost.value.code) == (503, "sandbox_lost")
    rec = world.store.rollouts.get("p")
    assert rec is not None and (rec.state, rec.tainted, rec.taint_reason) == ("lost", True, "sandbox_lost")
    assert_nothing_left(world, ["a", "b"], parent_box=False)
    assert len(world.dispatcher.provisioned) == 1


# --- calls to a child while its fork runs ---------------------------------------------------


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except SandboxError as exc:
        return exc


def call_the_child_during_its_fork(w: World, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """Fork p into c, the snapshot held until a call to c waits for it: (the call's outcome, the fork's)."""
    waited: list[bool] = []

    def hold() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not waited:
            if blocked_waiters(w) >= 2:  # the fork's API side and the caller
                waited.append(True)
            time.sleep(0.02)

    before_snapshot(w, monkeypatch, hold)
    with ThreadPoolExecutor(1) as pool:
        fork = pool.submit(outcome, lambda: w.forks.fork("p", {"rollout_ids": ["c"]}))
        wait_until(lambda: w.store.rollouts.get("c"), 5, 0.01)
        call = outcome(lambda: w.tools.handle(w.call("c", "cat a.txt")))
    assert waited, "the call to the child did not wait for its fork"
    return call, fork.result()


def test_a_call_to_a_child_during_its_fork_waits_and_answers_from_the_forked_files(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent(world)
    call, fork = call_the_child_during_its_fork(world, monkeypatch)
    assert (call.outcome, call.output) == ("ok", "hello\n")
    assert fork == [{"rollout_id": "c", "state": "ready"}]
    assert [rid for rid, _, _ in world.dispatcher.provisioned] == ["p"]


def test_a_caller_waiting_on_a_child_whose_fork_fails_gets_provision_failed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent(world)
    world.backend.refuse_next_snapshot(EngineUnavailable("Docker engine unavailable: connection refused"))
    call, fork = call_the_child_during_its_fork(world, monkeypatch)
    assert isinstance(call, ProvisionFailed) and "fork" in call.message
    assert isinstance(fork, EngineUnavailable)
    assert [rid for rid, _, _ in world.dispatcher.provisioned] == ["p"]
    assert set(world.backend.containers) == {name_of(world, "p")}


def test_after_a_failed_fork_with_a_waiting_caller_the_child_id_is_free_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent(world)
    world.backend.refuse_next_snapshot(EngineUnavailable("Docker engine unavailable: connection refused"))
    assert isinstance(call_the_child_during_its_fork(world, monkeypatch)[0], ProvisionFailed)
    assert world.store.rollouts.get("c") is None
    assert world.forks.fork("p", {"rollout_ids": ["c"]}) == [{"rollout_id": "c", "state": "ready"}]


# --- the reconciler and the host watch ------------------------------------------------------


def test_the_reconciler_removes_a_fork_image_only_when_unused_and_past_its_grace(make_world: MakeWorld) -> None:
    clock = FakeClock(start=time.time())  # the in-memory engine stamps images with the real time
    w = make_world(clock=clock)
    parent(w)
    grace = w.settings.lifecycle.orphan_grace_s
    w.forks.fork("p", {"rollout_ids": ["a", "b"]})
    w.rollouts.release("a")
    in_use = next(t for t in w.backend.images if t != w.settings.image)
    w.forks.fork("p", {"rollout_ids": ["c"]})
    w.rollouts.release("c")
    unused = next(t for t in w.backend.images if t not in (w.settings.image, in_use))
    assert set(w.backend.containers) == {name_of(w, "p"), name_of(w, "b")}
    before = reconciled("fork_image_removed")
    assert w.host.reconciler.reconcile()["fork_images_removed"] == 0
    clock.advance(grace - 1)
    w.host.beat()  # h1 stays up
    assert w.host.reconciler.reconcile()["fork_images_removed"] == 0
    assert {in_use, unused} <= set(w.backend.images)
    clock.advance(2)
    w.host.beat()
    assert w.host.reconciler.reconcile()["fork_images_removed"] == 1
    assert w.backend.removed_images == [unused] and in_use in w.backend.images  # b still runs on it
    assert reconciled("fork_image_removed") == before + 1
    assert run(w, "b", "cat a.txt")[2] == "hello\n"
    w.rollouts.release("b")
    assert w.host.reconciler.reconcile()["fork_images_removed"] == 1
    assert set(w.backend.images) == {w.settings.image} and reconciled("fork_image_removed") == before + 2


def test_the_reconciler_keeps_the_image_of_a_fork_still_running_past_the_grace(
    make_world: MakeWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(start=time.time())
    w = make_world(clock=clock)
    parent(w)
    real, mid_fork = w.backend.create, dict[str, Any]()

    def create(spec: Any) -> str:
        if not mid_fork:  # a slow fork: its image is past the grace before its child uses it
            clock.advance(w.settings.lifecycle.orphan_grace_s + 1)
            w.host.beat()
            mid_fork.update(w.host.reconciler.reconcile(), images=set(w.backend.images))
        return real(spec)

    monkeypatch.setattr(w.backend, "create", create)
    assert w.forks.fork("p", {"rollout_ids": ["a"]}) == [{"rollout_id": "a", "state": "ready"}]
    assert mid_fork["fork_images_removed"] == 0 and len(mid_fork["images"]) == 2
    assert w.backend.removed_images == [] and run(w, "a", "cat a.txt")[2] == "hello\n"


def test_the_host_watch_never_provisions_a_child_afresh(make_world: MakeWorld) -> None:
    clock = FakeClock()
    w = make_world(clock=clock, attach=False)
    w.store.hosts.register("h2", {"engine_healthy": "1", "capacity": 10, "containers": 2, "down_after_s": 20})
    claimed = {rid: w.store.rollouts.claim_provisioning(rid, "default", None, 300)[2] for rid in ("p", "o")}
    assert w.store.rollouts.mark_ready("p", claimed["p"], "h2", "cid", name_of(w, "p"))
    w.store.calls.record("p", CallResult("c1", None, "shell", {}, Outcome.OK, "none", "hi\n"), served=True)
    assert w.store.rollouts.set_provision_host("o", claimed["o"], "h2")  # an ordinary rollout starting there
    rec = w.store.rollouts.get("p")
    assert rec is not None
    for child in ("waiting", "made"):
        assert w.store.rollouts.create_child(child, rec, None, "h2")
    assert w.store.rollouts.mark_ready("made", 1, "h2", "cid2", name_of(w, "made"))
    clock.advance(30)  # h2 stops beating; h1 goes on
    w.host.beat()
    assert w.host.host_watch.sweep() == {"lost": 2, "replaced": 1}  # p and "made" lost; only o replaced
    assert [rid for rid, _, _ in w.dispatcher.provisioned] == ["o"]
    made = w.store.rollouts.get("made")
    assert made is not None and (made.state, made.tainted) == ("lost", True)
    with pytest.raises(ProvisionFailed, match="fork"):
        w.rollouts.ensure_ready("waiting", None)
    assert [rid for rid, _, _ in w.dispatcher.provisioned] == ["o"]


def test_a_ready_child_whose_container_vanishes_is_lost_not_provisioned_again(world: World) -> None:
    parent(world)
    world.forks.fork("p", {"rollout_ids": ["c"]})
    world.backend.vanish(name_of(world, "c"))
    with pytest.raises(SandboxLost):
        world.tools.handle(world.call("c", "cat a.txt"))
    rec = world.store.rollouts.get("c")
    assert rec is not None and (rec.state, rec.tainted, rec.taint_reason) == ("lost", True, "sandbox_lost")
    with pytest.raises(SandboxLost):
        world.tools.handle(world.call("c", "cat a.txt"))
    assert [rid for rid, _, _ in world.dispatcher.provisioned] == ["p"]
    assert run(world, "p", "cat a.txt")[2] == "hello\n"
