"""The worker side's orchestration (provisioning, calls, reconciler, host watch, reaper, warm
pools) over the in-memory engine and dispatcher and a real Redis, with the races each guards against."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from sandbox.domain import container as ct
from sandbox.domain.calls import CallResult, ShellArgs
from sandbox.domain.errors import EngineUnavailable, ProvisionFailed
from sandbox.domain.hosts import FailureWindow
from sandbox.domain.messages import CallRequest
from sandbox.domain.outcomes import InfraReason, ModelReason, Outcome
from sandbox.domain.rollout import EXPIRED, FAILED, LOST, PROVISIONING, READY, RELEASED, RolloutRecord, container_name
from sandbox.worker.call_queue import run_call
from tests.fakes.clock import FakeClock
from tests.fakes.host import World
from tests.unit.conftest import MakeWorld


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def claim(w: World, rid: str | None = None, env: str = "default") -> tuple[str, int]:
    """A provisioning attempt, claimed as the API claims one: (rollout, attempt)."""
    rid = rid or f"r-{uuid.uuid4().hex[:10]}"
    won, _, attempt = w.store.rollouts.claim_provisioning(rid, env, None, 300)
    assert won
    return rid, attempt


def ready(w: World) -> str:
    """A rollout provisioned on h1 that has served nothing yet."""
    rid, attempt = claim(w)
    assert w.host.provisioner.provision(rid, attempt) == "ready"
    return rid


def get(w: World, rid: str) -> RolloutRecord:
    rec = w.store.rollouts.get(rid)
    assert rec is not None
    return rec


def name_of(w: World, rid: str) -> str:
    return container_name(w.settings.instance, rid)


def has_box(w: World, rid: str) -> bool:
    return name_of(w, rid) in w.backend.containers


def runs(w: World, rid: str) -> int:
    """Requests the rollout's container has served."""
    return w.backend.containers[name_of(w, rid)].requests


def request(rid: str, command: str = "echo hi") -> CallRequest:
    args = ShellArgs(command, 10.0)
    return CallRequest(uuid.uuid4().hex, rid, uuid.uuid4().hex, "fc", "shell", args, {"command": command}, 4096)


def spec(w: World, name: str, role: str = ct.ROLE_ROLLOUT, rid: str = "", host: str = "h1") -> ct.SandboxSpec:
    s = w.settings.model_copy(update={"host_id": host})
    return ct.container_spec(s, w.registry.get("default"), s.image, name, role=role, rollout_id=rid)


def reconciled(action: str) -> float:
    return REGISTRY.get_sample_value("sandbox_reconciler_actions_total", {"action": action}) or 0.0


def pool(w: World) -> list[str]:
    return w.store.pools.members("default", "h1")


# --- Provisioner ----------------------------------------------------------------------------


def test_provision_creates_a_labelled_limited_container_once(make_world: MakeWorld) -> None:
    w = make_world(limits={"memory_bytes": 512 * 1024**2, "cpus": 0.5, "pids": 64})
    rid, attempt = claim(w)
    assert w.host.provisioner.provision(rid, attempt) == "ready"
    assert w.host.provisioner.provision(rid, attempt) == "skipped"  # acks_late: delivered again
    rec, name = get(w, rid), name_of(w, rid)
    assert (rec.state, rec.host, rec.container_name) == (READY, "h1", name)
    assert w.backend.created == [name] and rec.container_id == w.backend.containers[name].container_id
    made = w.backend.containers[name].spec
    labels = {ct.LABEL_ROLLOUT: rid, ct.LABEL_HOST: "h1", ct.LABEL_INSTANCE: "unit", ct.LABEL_ROLE: ct.ROLE_ROLLOUT}
    assert labels.items() <= made.labels.items()
    assert (made.memory_bytes, made.cpus, made.pids) == (512 * 1024**2, 0.5, 64)


def test_redelivery_after_a_crash_adopts_the_container_the_first_run_made(world: World) -> None:
    rid, attempt = claim(world)
    # The first delivery created the container, then its worker died before recording it.
    first_id = world.backend.create(spec(world, name_of(world, rid), rid=rid))
    assert world.host.provisioner.provision(rid, attempt) == "ready"
    assert get(world, rid).container_id == first_id
    assert world.backend.created == [name_of(world, rid)]


def test_a_stale_attempt_is_skipped_and_creates_nothing(world: World) -> None:
    rid, old = claim(world)
    won, _, new = world.store.rollouts.claim_provisioning(rid, "default", None, 300, take_over=old)
    assert won and new == old + 1
    assert world.host.provisioner.provision(rid, old) == "skipped"
    assert world.backend.containers == {} and world.backend.created == []
    rec = get(world, rid)
    assert (rec.state, rec.provision_attempt) == (PROVISIONING, new)


def test_an_attempt_released_while_booting_removes_its_container(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    rid, attempt = claim(world)
    boot = world.backend.wait_ready

    def released_meanwhile(name: str, timeout_s: float) -> None:
        world.store.rollouts.end(rid, RELEASED, "released by the platform")
        boot(name, timeout_s)

    monkeypatch.setattr(world.backend, "wait_ready", released_meanwhile)
    assert world.host.provisioner.provision(rid, attempt) == "superseded"
    assert world.backend.containers == {} and world.backend.destroyed == [name_of(world, rid)]
    assert get(world, rid).state == RELEASED


def test_a_failing_old_attempt_leaves_the_current_attempts_container(
    make_world: MakeWorld, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by this test: an old attempt's failure removed the container the current one adopted."""
    w = make_world(clock=clock)
    rid, old = claim(w)
    boot = w.backend.wait_ready

    def slow_boot_then_timeout(name: str, timeout_s: float) -> None:
        # The old attempt's guest boots slowly on a loaded host: its claim goes stale, a new
        # attempt takes over, adopts the same container and becomes ready.
        monkeypatch.setattr(w.backend, "wait_ready", boot)
        clock.advance(w.settings.timeouts.provision_stale_s + 1)
        won, _, new = w.store.rollouts.claim_provisioning(rid, "default", None, w.settings.timeouts.provision_stale_s)
        assert won and w.host.provisioner.provision(rid, new) == "ready"
        raise ProvisionFailed("the guest did not answer within 60 s")

    monkeypatch.setattr(w.backend, "wait_ready", slow_boot_then_timeout)
    w.host.provisioner.provision(rid, old)
    assert get(w, rid).state == READY and has_box(w, rid)
    assert w.host.executor.execute(request(rid)).result is not None  # its first call finds its sandbox


@pytest.mark.parametrize(
    ("takes_it", "may_move", "outcome"),
    [(True, True, "placed elsewhere"), (None, True, "failed"), (False, True, "failed"), (True, False, "failed")],
    ids=["another-host-takes-it", "no-elsewhere", "nobody-takes-it", "placed-on-this-host"],
)
def test_engine_refusing_the_creation(world: World, takes_it: bool | None, may_move: bool, outcome: str) -> None:
    rid, attempt = claim(world)
    handed: list[tuple[str, int]] = []
    prov = world.host.provisioner
    prov.failures = window = FailureWindow(60, 1, 0.5, 30)  # one failure quarantines: visible
    if takes_it is not None:
        prov.elsewhere = lambda r, a: handed.append((r, a)) is None and takes_it
    world.backend.refuse_next_create(EngineUnavailable("Docker engine unavailable: connection refused"))
    assert prov.provision(rid, attempt, may_move=may_move) == outcome
    rec = get(world, rid)
    assert world.backend.containers == {}
    assert window.quarantined_until() > time.time()  # the engine failure was counted
    if outcome == "placed elsewhere":
        assert handed == [(rid, attempt)]
        assert (rec.state, rec.provision_attempt, rec.provision_error_reason) == (PROVISIONING, attempt, "")
    else:
        assert handed == ([(rid, attempt)] if takes_it is False else [])
        assert (rec.state, rec.provision_error_reason) == (FAILED, "engine_unavailable")
        assert "connection refused" in rec.provision_error


def test_an_unknown_environment_fails_the_attempt_as_provision_failed(world: World) -> None:
    rid, attempt = claim(world, env="no-such-env")
    assert world.host.provisioner.provision(rid, attempt) == "failed"
    rec = get(world, rid)
    assert (rec.state, rec.provision_error_reason) == (FAILED, "provision_failed")
    assert "no-such-env" in rec.provision_error and world.backend.created == []


# --- Executor and the call queue ------------------------------------------------------------


def test_a_shell_call_is_served_once_and_a_redelivery_replays_its_result(world: World) -> None:
    rid = ready(world)
    req = request(rid, "echo hi")
    reply = world.host.executor.execute(req)
    assert reply.result is not None and (reply.result.outcome, reply.result.output) == (Outcome.OK, "hi\n")
    assert get(world, rid).served and world.store.calls.stored_result(rid, req.call_id) == reply.result
    before = runs(world, rid)
    assert world.host.executor.execute(req).result == reply.result
    assert runs(world, rid) == before and len(world.store.calls.trajectory(rid)) == 1
    world.host.executor.execute(request(rid, "echo other"))  # a new call does run
    assert runs(world, rid) == before + 1


def test_a_call_the_api_gave_up_on_before_a_worker_took_it_never_runs(world: World) -> None:
    """The API answers queue_timeout as soon as the queue deadline passes unstarted; the mark it
    leaves makes a worker that pops the call late drop it, and a worker that took it first keeps it."""
    rid = ready(world)
    before = runs(world, rid)
    late = request(rid, "echo late")
    assert world.store.queues.abandon_unstarted(late.reply_id) is True
    reply = world.host.executor.execute(late)
    assert (reply.result, reply.infra_reason) == (None, InfraReason.QUEUE_TIMEOUT)
    assert runs(world, rid) == before and world.store.calls.trajectory(rid) == []
    taken = request(rid, "echo taken")
    assert world.host.executor.execute(taken).result is not None
    assert world.store.queues.abandon_unstarted(taken.reply_id) is False  # a worker had it: wait, not 503


def test_a_vanished_container_that_served_loses_and_taints_the_rollout(world: World) -> None:
    rid = ready(world)
    assert world.host.executor.execute(request(rid)).result is not None
    world.backend.vanish(name_of(world, rid))
    for _ in range(2):  # and every later call of the rollout
        reply = world.host.executor.execute(request(rid))
        assert reply.result is None and reply.infra_reason == InfraReason.SANDBOX_LOST
    rec = get(world, rid)
    assert (rec.state, rec.tainted, rec.taint_reason) == (LOST, True, "sandbox_lost")


def test_a_vanished_container_that_served_nothing_is_provisioned_again(world: World) -> None:
    rid = ready(world)
    world.backend.vanish(name_of(world, rid))
    reply = world.host.executor.execute(request(rid))
    assert reply.result is None and reply.infra_reason == InfraReason.PROVISION_FAILED
    rec = get(world, rid)
    assert (rec.state, rec.tainted) == (FAILED, False)
    result = world.tools.handle(world.call(rid, "echo back"))  # the platform's retry
    assert (result.outcome, result.output) == (Outcome.OK, "back\n")
    assert (get(world, rid).state, get(world, rid).tainted) == (READY, False)


def test_guest_errors_are_the_models_only_when_it_filled_the_process_table(world: World) -> None:
    rid = ready(world)
    replies = {"forkbomb": {"error": "fork failed", "pids_exhausted": True}, "broken": {"error": "boom"}}
    world.backend.scripted_shell = lambda name, command: replies.get(command)
    pids_req, broken_req = request(rid, "forkbomb"), request(rid, "broken")
    pids = world.host.executor.execute(pids_req).result
    assert pids is not None and (pids.outcome, pids.reason) == (Outcome.MODEL_ERROR, ModelReason.PIDS_EXHAUSTED)
    assert world.store.calls.stored_result(rid, pids_req.call_id) is not None
    broken = world.host.executor.execute(broken_req)
    assert broken.result is None and broken.infra_reason == InfraReason.INTERNAL and "boom" in broken.infra_message
    assert world.store.calls.stored_result(rid, broken_req.call_id) is None  # a retry may run it
    assert get(world, rid).state == READY


def test_run_call_always_answers_and_never_runs_an_expired_request(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    rid = ready(world)
    late = request(rid).queued(time.time() - 10, 5)
    run_call(world.host.executor, world.store, late)
    reply = world.store.queues.wait_reply(late.reply_id, 1)
    assert reply is not None and reply.infra_reason == InfraReason.QUEUE_TIMEOUT
    assert runs(world, rid) == 0 and not world.store.queues.was_started(late.reply_id)
    in_time = request(rid).queued(time.time(), 5)
    run_call(world.host.executor, world.store, in_time)
    reply = world.store.queues.wait_reply(in_time.reply_id, 1)
    assert reply is not None and reply.result is not None and reply.result.output == "hi\n"
    monkeypatch.setattr(world.backend, "request", lambda *args: 1 / 0)  # a bug: still answered
    crashed = request(rid).queued(time.time(), 5)
    run_call(world.host.executor, world.store, crashed)
    reply = world.store.queues.wait_reply(crashed.reply_id, 1)
    assert reply is not None and reply.infra_reason == InfraReason.INTERNAL


# --- Reconciler -----------------------------------------------------------------------------


def test_reconciler_removes_orphans_only_after_the_grace_period(make_world: MakeWorld, clock: FakeClock) -> None:
    w = make_world(clock=clock)
    orphan, foreign = f"sbx-unit-{uuid.uuid4().hex[:12]}", f"sbx-unit-{uuid.uuid4().hex[:12]}"
    w.backend.add_container(spec(w, orphan, rid="ghost"), created_at=clock.time())
    w.backend.add_container(spec(w, foreign, rid="ghost2", host="h2"), created_at=clock.time())  # not ours
    being_made, _ = claim(w)  # its provisioning created the container, not yet recorded as ready
    w.backend.add_container(spec(w, name_of(w, being_made), rid=being_made), created_at=clock.time())
    before = reconciled("orphan_removed")
    assert w.host.reconciler.reconcile() == {"orphans_removed": 0, "records_lost": 0, "fork_images_removed": 0}
    assert orphan in w.backend.containers
    clock.advance(w.settings.lifecycle.orphan_grace_s + 1)
    assert w.host.reconciler.reconcile() == {"orphans_removed": 1, "records_lost": 0, "fork_images_removed": 0}
    assert orphan not in w.backend.containers and {foreign, name_of(w, being_made)} <= set(w.backend.containers)
    assert reconciled("orphan_removed") == before + 1


def test_reconciler_judges_vanished_containers_by_what_they_served(make_world: MakeWorld, clock: FakeClock) -> None:
    w = make_world(clock=clock)
    served, unserved = ready(w), ready(w)
    assert w.host.executor.execute(request(served)).result is not None
    for rid in (served, unserved):
        w.backend.vanish(name_of(w, rid))
    clock.advance(1)
    before = reconciled("record_lost")
    assert w.host.reconciler.reconcile() == {"orphans_removed": 0, "records_lost": 1, "fork_images_removed": 0}
    lost, failed = get(w, served), get(w, unserved)
    assert (lost.state, lost.tainted, lost.taint_reason) == (LOST, True, "sandbox_lost")
    assert (failed.state, failed.tainted) == (FAILED, False)
    assert reconciled("record_lost") == before + 1
    assert w.store.rollouts.claim_provisioning(unserved, "default", None, 300)[0]  # provisionable again


def test_reconciler_never_judges_a_rollout_ready_after_its_listing(
    make_world: MakeWorld, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = make_world(clock=clock)
    rid, attempt = claim(w)
    listing = w.backend.list

    def list_then_ready(labels: dict[str, str]) -> Any:
        seen = listing(labels)
        clock.advance(1)
        assert w.host.provisioner.provision(rid, attempt) == "ready"  # just after the listing
        return seen

    monkeypatch.setattr(w.backend, "list", list_then_ready)
    assert w.host.reconciler.reconcile() == {"orphans_removed": 0, "records_lost": 0, "fork_images_removed": 0}
    assert get(w, rid).state == READY and has_box(w, rid)


def test_reconciler_keeps_warm_containers_and_drops_stopped_ones(make_world: MakeWorld, clock: FakeClock) -> None:
    w = make_world(clock=clock)
    warm, dead = (f"sbx-unit-pool-{uuid.uuid4().hex[:16]}" for _ in range(2))
    for name in (warm, dead):
        w.backend.add_container(spec(w, name, role=ct.ROLE_POOL), created_at=clock.time())
        w.store.pools.push("default", "h1", name)
    w.backend.stop(dead)
    clock.advance(w.settings.lifecycle.orphan_grace_s + 1)
    assert w.host.reconciler.reconcile()["orphans_removed"] == 0
    assert pool(w) == [warm] and warm in w.backend.containers and dead not in w.backend.containers


# --- HostWatch ------------------------------------------------------------------------------


def test_host_watch_ends_a_down_hosts_rollouts_once(make_world: MakeWorld, clock: FakeClock) -> None:
    w = make_world(clock=clock, attach=False)
    w.store.hosts.register("h2", {"engine_healthy": "1", "capacity": 10, "containers": 2, "down_after_s": 20})
    (served, served_attempt), (unserved, unserved_attempt), (starting, started_attempt) = (claim(w) for _ in range(3))
    for rid, attempt in ((served, served_attempt), (unserved, unserved_attempt)):
        assert w.store.rollouts.mark_ready(rid, attempt, "h2", "cid", name_of(w, rid))
    result = CallResult("c1", None, "shell", {}, Outcome.OK, "none", "hi\n", finished_at=clock.time())
    w.store.calls.record(served, result, served=True)
    assert w.store.rollouts.set_provision_host(starting, started_attempt, "h2")
    clock.advance(30)  # h2 stops beating; h1 goes on
    w.host.beat()
    assert w.host.host_watch.sweep() == {"lost": 1, "replaced": 2}
    lost = get(w, served)
    assert (lost.state, lost.tainted, lost.taint_reason) == (LOST, True, "host_unavailable")
    assert sorted(w.dispatcher.provisioned) == sorted(
        [(unserved, unserved_attempt + 1, ""), (starting, started_attempt + 1, "")]
    )
    assert w.host.host_watch.sweep() == {"lost": 0, "replaced": 0}  # the same outage
    assert len(w.dispatcher.provisioned) == 2
    for rid, attempt, _ in w.dispatcher.provisioned:  # a healthy host takes them
        assert w.host.provisioner.provision(rid, attempt) == "ready"
        assert (get(w, rid).host, get(w, rid).tainted) == ("h1", False)


# --- Reaper ---------------------------------------------------------------------------------


def test_reaper_expires_idle_rollouts_and_destroys_their_containers(make_world: MakeWorld, clock: FakeClock) -> None:
    w = make_world(clock=clock)
    idle = ready(w)
    clock.advance(w.settings.lifecycle.idle_ttl_s - 10)
    fresh = ready(w)
    clock.advance(20)
    assert w.host.reaper.reap() == [idle]
    rec = get(w, idle)
    assert (rec.state, rec.end_reason, rec.tainted) == (EXPIRED, "idle TTL reached", False)
    assert w.dispatcher.destroyed == [("h1", idle, name_of(w, idle))]
    assert not has_box(w, idle) and has_box(w, fresh) and get(w, fresh).state == READY


def test_reaper_ends_a_busy_rollout_at_its_max_lifetime(make_world: MakeWorld, clock: FakeClock) -> None:
    w = make_world(clock=clock)
    life = w.settings.lifecycle
    rid = ready(w)
    end = clock.time() + life.max_lifetime_s
    while clock.time() + life.idle_ttl_s / 2 < end:
        clock.advance(life.idle_ttl_s / 2)
        assert w.host.executor.execute(request(rid)).result is not None
        assert w.host.reaper.reap() == []
    clock.advance(end + 1 - clock.time())
    assert w.host.executor.execute(request(rid)).result is not None  # busy to the last moment
    assert w.host.reaper.reap() == [rid]
    assert (get(w, rid).state, get(w, rid).end_reason) == (EXPIRED, "max lifetime reached")


# --- Refiller -------------------------------------------------------------------------------


def test_refill_fills_the_pool_and_replaces_a_stopped_container(make_world: MakeWorld, clock: FakeClock) -> None:
    w = make_world(clock=clock, warm_pool_size=3)
    assert w.host.refiller.refill() == {"default": 3}
    first = pool(w)
    assert len(first) == 3 and all(w.backend.containers[n].running for n in first)
    assert all(w.backend.containers[n].spec.labels[ct.LABEL_ROLE] == ct.ROLE_POOL for n in first)
    w.backend.stop(first[0])
    assert w.host.refiller.refill() == {"default": 1}
    now = pool(w)
    assert first[0] not in now and first[0] not in w.backend.containers
    assert len(now) == 3 and all(w.backend.containers[n].running for n in now)
    assert w.host.refiller.refill() == {"default": 0} and len(w.backend.created) == 4


def test_refill_creates_nothing_while_another_refill_holds_the_lock(make_world: MakeWorld, clock: FakeClock) -> None:
    w = make_world(clock=clock, warm_pool_size=3)
    assert w.store.pools.lock_refill("h1", "default")
    assert w.host.refiller.refill() == {}
    assert w.backend.created == [] and pool(w) == []
    w.store.pools.unlock_refill("h1", "default")
    assert w.host.refiller.refill() == {"default": 3}


def test_refill_never_fills_a_host_past_its_capacity(make_world: MakeWorld, clock: FakeClock) -> None:
    w = make_world(clock=clock, warm_pool_size=3, hosts={"capacity": 2})
    ready(w)
    assert w.host.refiller.refill() == {"default": 1}
    assert w.host.refiller.refill() == {"default": 0}
    assert len(w.backend.containers) == 2 and len(pool(w)) == 1
