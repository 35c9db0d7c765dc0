"""API side of a rollout's life: single-flight provisioning, waiting for the container,
release, and the record's view.

`ensure_ready` is the loop every first call of a burst goes through: parallel first calls
race to claim provisioning (a Lua script, exactly one wins), the winner takes a warm
container or queues a cold start, and everyone blocks on the rollout's wake-up list until
the attempt ends, its host dies, or the deadline passes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .. import metrics
from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..dispatch import Dispatcher
from ..domain.calls import check_rollout_id
from ..domain.errors import (
    INFRA_ERRORS_BY_REASON,
    HostUnavailable,
    ProvisionFailed,
    QueueTimeout,
    RolloutNotFound,
    RolloutReleased,
    SandboxError,
    SandboxLost,
)
from ..domain.hosts import FULL, UP, HostView, views
from ..domain.outcomes import InfraReason
from ..domain.rollout import (
    ENDED_STATES,
    EXPIRED,
    FAILED,
    PENDING,
    PROVISIONING,
    READY,
    RELEASED,
    RolloutRecord,
    environment_of,
)
from ..endings import end_rollout, mark_lost
from ..environments import EnvironmentRegistry
from ..store import Store

# A caller waiting for a container looks at the record at least this often (for what sends
# no wake-up: a stale claim, its host dying). Each look wakes a thread for a Redis round
# trip; in a cold burst 500 callers wait for minutes, so not too often.
WAIT_LOOK_S = 5.0
HOST_VIEWS_MAX_AGE_S = 1.0  # a burst of calls shares one look-up of the hosts


class RolloutService:
    """API side: make sure a rollout has a ready sandbox, release it, describe it."""

    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        settings: Settings,
        registry: EnvironmentRegistry,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self._hosts: dict[str, HostView] = {}
        self._hosts_at = -1e9

    def pre_provision(self, entries: list[tuple[str, dict[str, Any] | None]]) -> list[dict[str, Any]]:
        """Queue containers for a burst of rollouts without waiting for them.

        Every entry is checked before any is queued, so a bad one refuses the whole batch
        (UnknownEnvironment, InvalidRolloutId) instead of leaving half of it queued.
        """
        checked = []
        for rid, item in entries:
            checked.append((check_rollout_id(rid), item, self.registry.get(environment_of(item)).name))
        out = []
        for rid, item, env_name in checked:
            won, state, attempt = self.store.rollouts.claim_provisioning(
                rid, env_name, item, self.settings.timeouts.provision_stale_s
            )
            if won and self._provision(rid, env_name, attempt) == "warm":
                state = "ready"
            out.append({"rollout_id": rid, "state": state, "queued": won})
        return out

    def _provision(self, rid: str, env_name: str, attempt: int) -> str:
        """Give a claimed rollout a container: a warm one at once if a pool has one, else queue a cold start.

        The warm claim is a single atomic Redis script, so it needs no worker round trip:
        a burst of first calls on a full pool is answered at the speed of Redis.
        """
        # Warm containers already exist, so a full host may hand them out; a quarantined one may not.
        hosts = [h for h, v in self.host_views().items() if v.status in (UP, FULL)]
        random.shuffle(hosts)  # spread claims (and the refills they trigger) over the hosts
        claimed = self.store.pools.claim(env_name, hosts) if hosts else None
        if claimed is not None:
            host, name = claimed
            if self.store.rollouts.mark_ready(rid, attempt, host, name, name):
                metrics.PROVISIONS.labels("warm", "ok").inc()
                self.dispatcher.refill(host)
                return "warm"
            self.dispatcher.destroy(host, rid, name)  # the attempt was superseded meanwhile
        self.dispatcher.provision(rid, attempt)
        return "cold"

    def host_views(self) -> dict[str, HostView]:
        """Every host's status, read at most once a second: a burst of calls shares one look-up."""
        now = self.clock.monotonic()
        if now - self._hosts_at > HOST_VIEWS_MAX_AGE_S:
            self._hosts = views(self.store.hosts.registrations(), self.clock.time())
            self._hosts_at = now
        return self._hosts

    def _host_lost(self, host: str) -> HostView | None:
        """The host's view when it is down or lost its engine (its sandboxes are gone), else None."""
        view = self.host_views().get(host)
        return view if view is not None and view.lost_its_sandboxes else None

    def _leave_lost_host(self, rec: RolloutRecord, view: HostView) -> None:
        """A ready rollout on a lost host: provision again if it served nothing, else end it as lost.

        Answering at once beats waiting out the queue deadline for a worker that will not
        come: the rollout is ended as lost (tainted) and the call gets 503 host_unavailable.
        """
        why = f"the rollout's sandbox host {rec.host!r} is {view.status} ({view.reason})"
        if self.store.rollouts.fail_unserved(rec.rollout_id, why):
            return  # the agent saw nothing from it: the caller's loop provisions elsewhere
        mark_lost(self.store, rec.rollout_id, why, InfraReason.HOST_UNAVAILABLE)
        raise HostUnavailable(f"{why}; the rollout cannot continue")

    def _host_died(self, rec: RolloutRecord) -> bool:
        """A provisioning attempt taken by a host that has since gone down or lost its engine."""
        return bool(rec.provision_host) and self._host_lost(rec.provision_host) is not None

    def ensure_ready(
        self,
        rid: str,
        item: dict[str, Any] | None,
        known: RolloutRecord | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> RolloutRecord:
        """Return the rollout's record once its container is ready, provisioning it if needed.

        Parallel first calls race here; exactly one wins the claim and queues the
        provisioning, the others wait for the same container.
        `on_wait` is called before the caller blocks waiting for a container.
        Raises ProvisionFailed, QueueTimeout, SandboxLost, RolloutReleased, StoreUnavailable.
        """
        if known is not None and known.state == READY and self._host_lost(known.host) is None:
            return known  # the caller just read it: skip a round trip
        deadline = self.clock.monotonic() + self.settings.timeouts.provision_s
        waited_on: int | None = None  # the provisioning attempt this caller waits for
        forked_from = ""  # set once the rollout is seen as a fork's child waiting for its fork
        while True:
            rec = self.store.rollouts.get(rid)
            state = rec.state if rec else None
            if rec is not None and state == READY:
                lost_host = self._host_lost(rec.host)
                if lost_host is None:
                    return rec
                self._leave_lost_host(rec, lost_host)
                waited_on = None  # its attempt is void: claim a new one
                continue
            if rec is not None and state in ENDED_STATES:
                raise self._ended_error(rec)
            if rec is not None and state == FAILED and waited_on == rec.provision_attempt:
                # The same reason the worker saw: an engine down is not a broken image.
                error_class = INFRA_ERRORS_BY_REASON.get(rec.provision_error_reason, ProvisionFailed)
                raise error_class(f"could not provision the sandbox: {rec.provision_error}")
            stale = (
                rec is not None
                and state == PROVISIONING
                and self.clock.time() - rec.provision_claimed_at > self.settings.timeouts.provision_stale_s
            )
            orphaned = rec is not None and state == PROVISIONING and self._host_died(rec)
            if rec is not None and rec.parent and state == PROVISIONING:
                forked_from = rec.parent  # a fork's child: only its fork may create its container
                if stale or orphaned:
                    raise ProvisionFailed(f"the fork of {rec.parent!r} that creates this rollout did not finish")
            elif rec is None and forked_from:
                raise ProvisionFailed(f"the fork of {forked_from!r} that was to create this rollout failed")
            elif state in (None, PENDING, FAILED) or stale or orphaned:
                if rec is None and waited_on is None and self.store.archive.holds(rid):
                    # Ended long enough ago that Redis let it go: still ended, never a new rollout.
                    raise RolloutReleased(f"rollout {rid!r} has ended (its record is archived); it takes no more calls")
                env_name = rec.environment if rec is not None and rec.environment else environment_of(item)
                won, _, attempt = self.store.rollouts.claim_provisioning(
                    rid,
                    env_name,
                    item,
                    self.settings.timeouts.provision_stale_s,
                    take_over=rec.provision_attempt if orphaned and rec is not None else 0,
                )
                waited_on = attempt
                if won:
                    self._provision(rid, env_name, attempt)
                continue
            if waited_on is None and rec is not None:
                waited_on = rec.provision_attempt
            if self.clock.monotonic() >= deadline:
                raise QueueTimeout(
                    f"no sandbox within {self.settings.timeouts.provision_s:g} s; the provisioning backlog is long"
                )
            # Woken when the attempt ends (ready or failed); the timeout bounds how late a
            # waiter notices what sends no wake-up: a stale claim, or its host dying.
            if on_wait is not None:
                on_wait()
            self.store.rollouts.wait_for_change(rid, min(WAIT_LOOK_S, deadline - self.clock.monotonic()))

    def _ended_error(self, rec: RolloutRecord) -> SandboxError:
        if rec.state == RELEASED:
            return RolloutReleased(
                f"rollout {rec.rollout_id!r} was released ({rec.end_reason}); it takes no more calls"
            )
        if rec.state == EXPIRED:
            # The platform still calls a rollout we reaped: its sandbox is gone, its work with it.
            return SandboxLost(f"the rollout's sandbox was reaped ({rec.end_reason}); the rollout cannot continue")
        return SandboxLost(f"the rollout's sandbox was lost ({rec.end_reason}); the rollout cannot continue")

    def release(self, rid: str, reason: str = "released by request", how: str = "released") -> RolloutRecord:
        """End a rollout and remove its container. Idempotent. Raises RolloutNotFound."""
        rec = self.store.rollouts.get(rid)
        if rec is None:
            raise RolloutNotFound(f"no rollout {rid!r}")
        # Only the release that ended it removes the container: the rest answer the record.
        if end_rollout(self.store, rid, RELEASED, reason, how) and rec.host and rec.container_name:
            self.dispatcher.destroy(rec.host, rid, rec.container_name)
        return replace(self.store.rollouts.get(rid) or rec, children=tuple(self.store.rollouts.children(rid)))

    def get(self, rid: str) -> RolloutRecord:
        """The record with the rollouts forked from it (from the archive once Redis no longer
        has it). Raises RolloutNotFound."""
        rec = self.store.rollouts.get(rid)
        if rec is None:
            archived = self.store.archive.record(rid)
            if archived is None:
                raise RolloutNotFound(f"no rollout {rid!r}")
            return archived
        return replace(rec, children=tuple(self.store.rollouts.children(rid)))

    def trajectory(self, rid: str) -> tuple[RolloutRecord | None, list[dict[str, Any]]]:
        """The record (None once it expired, unless archived) and every recorded call in order.
        Raises RolloutNotFound."""
        rec = self.store.rollouts.get(rid) or self.store.archive.record(rid)
        calls = self.store.calls.trajectory(rid)
        if rec is None and not calls:
            raise RolloutNotFound(f"no rollout {rid!r}")
        return rec, calls
