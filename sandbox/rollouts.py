"""Rollout lifecycle: single-flight provisioning, release, and the record's view.

`RolloutService` runs in the API (deciding and waiting); `Provisioner` runs in the
worker of a sandbox host (creating the container on its own engine).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import metrics
from .backends.base import (
    LABEL_ENVIRONMENT,
    LABEL_HOST,
    LABEL_INSTANCE,
    LABEL_ROLE,
    LABEL_ROLLOUT,
    Backend,
    SandboxSpec,
)
from .calls import check_rollout_id
from .config import Settings
from .dispatch import Dispatcher
from .environments import Environment, EnvironmentRegistry, UnknownEnvironment
from .errors import (
    INFRA_ERRORS_BY_REASON,
    EngineUnavailable,
    HostUnavailable,
    InfraError,
    ProvisionFailed,
    QueueTimeout,
    RolloutNotFound,
    SandboxError,
    SandboxLost,
)
from .hosts import FULL, UP, FailureWindow, HostView, views
from .outcomes import InfraReason
from .preparation import Preparer
from .store import ENDED_STATES, EXPIRED, FAILED, LOST, PENDING, PROVISIONING, READY, RELEASED, RolloutRecord, Store

log = logging.getLogger(__name__)
DEFAULT_ENVIRONMENT = "default"
READY_TIMEOUT_S = 30.0
# A caller waiting for a container looks at the record at least this often (for what sends
# no wake-up: a stale claim, its host dying). Each look wakes a thread for a Redis round
# trip; in a cold burst 500 callers wait for minutes, so not too often.
WAIT_LOOK_S = 5.0


class RolloutReleased(SandboxError):
    """The rollout was released; its sandbox is gone and it takes no more calls."""

    code = "rollout_released"
    http_status = 409


def container_name(instance: str, rollout_id: str) -> str:
    """Deterministic, so a re-run provisioning task finds the container it already made."""
    digest = hashlib.sha256(rollout_id.encode()).hexdigest()[:24]
    return f"sbx-{instance}-{digest}"


def environment_of(item: dict[str, Any] | None) -> str:
    env = (item or {}).get("environment")
    return env if isinstance(env, str) and env else DEFAULT_ENVIRONMENT


class RolloutService:
    """API side: make sure a rollout has a ready sandbox, release it, describe it."""

    def __init__(self, store: Store, dispatcher: Dispatcher, settings: Settings, registry: EnvironmentRegistry) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.settings = settings
        self.registry = registry
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
            won, state, attempt = self.store.claim_provisioning(
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
        claimed = self.store.pool_claim(env_name, hosts, rid) if hosts else None
        if claimed is not None:
            host, name = claimed
            if self.store.mark_ready(rid, attempt, host, name, name):
                metrics.PROVISIONS.labels("warm", "ok").inc()
                self.dispatcher.refill(host)
                return "warm"
            self.dispatcher.destroy(host, rid, name)  # the attempt was superseded meanwhile
        self.dispatcher.provision(rid, attempt)
        return "cold"

    def host_views(self) -> dict[str, HostView]:
        """Every host's status, read at most once a second: a burst of calls shares one look-up."""
        now = time.monotonic()
        if now - self._hosts_at > 1.0:
            self._hosts = views(self.store.hosts())
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
        if self.store.fail_unserved(rec.rollout_id, why):
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
        deadline = time.monotonic() + self.settings.timeouts.provision_s
        waited_on: int | None = None  # the provisioning attempt this caller waits for
        while True:
            rec = self.store.get_rollout(rid)
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
                and time.time() - rec.provision_claimed_at > self.settings.timeouts.provision_stale_s
            )
            orphaned = rec is not None and state == PROVISIONING and self._host_died(rec)
            if state in (None, PENDING, FAILED) or stale or orphaned:
                env_name = rec.environment if rec is not None and rec.environment else environment_of(item)
                won, _, attempt = self.store.claim_provisioning(
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
            if time.monotonic() >= deadline:
                raise QueueTimeout(
                    f"no sandbox within {self.settings.timeouts.provision_s:g} s; the provisioning backlog is long"
                )
            # Woken when the attempt ends (ready or failed); the timeout bounds how late a
            # waiter notices what sends no wake-up: a stale claim, or its host dying.
            if on_wait is not None:
                on_wait()
            self.store.wait_for_change(rid, min(WAIT_LOOK_S, deadline - time.monotonic()))

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
        rec = self.store.get_rollout(rid)
        if rec is None:
            raise RolloutNotFound(f"no rollout {rid!r}")
        end_rollout(self.store, rid, RELEASED, reason, how)
        if rec.host and rec.container_name:
            self.dispatcher.destroy(rec.host, rid, rec.container_name)
        return self.store.get_rollout(rid) or rec

    def get(self, rid: str) -> RolloutRecord:
        rec = self.store.get_rollout(rid)
        if rec is None:
            raise RolloutNotFound(f"no rollout {rid!r}")
        return rec


@dataclass
class Provisioner:
    """Worker side: create a rollout's container on this host's engine."""

    store: Store
    backend: Backend
    settings: Settings
    semaphore: threading.BoundedSemaphore
    registry: EnvironmentRegistry
    preparer: Preparer
    failures: FailureWindow | None = None  # engine failures here may quarantine the host
    # Hands an attempt to another host when this engine is down; True if one took it.
    elsewhere: Callable[[str, int], bool] | None = None

    def provision(self, rid: str, attempt: int, may_move: bool = True) -> str:
        """Create the container for one claimed attempt. Returns what happened.

        Safe to run twice (acks_late): the container name is derived from the rollout id,
        so a second run adopts what the first made.
        """
        # Taking the attempt names this host on the record: if the host dies now, waiters
        # see it and provision elsewhere instead of waiting out the stale deadline.
        if not self.store.set_provision_host(rid, attempt, self.settings.host_id):
            return "skipped"
        rec = self.store.get_rollout(rid)
        if rec is None or rec.state != PROVISIONING or rec.provision_attempt != attempt:
            return "skipped"
        name = container_name(self.settings.instance, rid)
        started = time.monotonic()
        try:
            env = self.registry.get(rec.environment or DEFAULT_ENVIRONMENT)
            image = self.preparer.image_for(env)  # once per host and definition; outside the semaphore
            with self.semaphore:  # bounds the engine's work only: the guest boots outside it
                container_id = self.backend.create(self._spec(name, rec, env, image))
            self.backend.wait_ready(name, READY_TIMEOUT_S)
        except EngineUnavailable as exc:
            self._engine_result(ok=False)
            # Nothing was created and nothing served: another host may take the same attempt.
            if may_move and self.elsewhere is not None and self.elsewhere(rid, attempt):
                return "placed elsewhere"
            return self._failed(rid, attempt, name, exc.message, started, exc.reason.value)
        except InfraError as exc:
            self._engine_result(ok=False)
            return self._failed(rid, attempt, name, exc.message, started, exc.reason.value)
        except UnknownEnvironment as exc:
            return self._failed(rid, attempt, name, exc.message, started)
        except Exception as exc:  # a bug must still end the attempt, or callers wait for nothing
            log.exception("provisioning %s crashed", rid)
            return self._failed(rid, attempt, name, f"internal error: {exc}", started, "internal")
        if not self.store.mark_ready(rid, attempt, self.settings.host_id, container_id, name):
            now = self.store.get_rollout(rid)
            if now is None or now.state != PROVISIONING:  # released meanwhile: nobody will use it
                self.backend.destroy(name)
            return "superseded"
        self._engine_result(ok=True)
        metrics.PROVISIONS.labels("cold", "ok").inc()
        metrics.PROVISION_DURATION.labels("cold", "ok").observe(time.monotonic() - started)
        return "ready"

    def _engine_result(self, ok: bool) -> None:
        if self.failures is not None:
            self.failures.record(ok)

    def _failed(
        self, rid: str, attempt: int, name: str, message: str, started: float, reason: str = "provision_failed"
    ) -> str:
        metrics.PROVISIONS.labels("cold", "failed").inc()
        metrics.PROVISION_DURATION.labels("cold", "failed").observe(time.monotonic() - started)
        self.store.mark_provision_failed(rid, attempt, message, reason)
        with contextlib.suppress(InfraError):  # else the reconciler removes it later
            self.backend.destroy(name)
        return "failed"

    def _spec(self, name: str, rec: RolloutRecord, env: Environment, image: str) -> SandboxSpec:
        s = self.settings
        limits = env.spec.limits
        labels = {
            LABEL_ROLLOUT: rec.rollout_id,
            LABEL_ENVIRONMENT: rec.environment,
            LABEL_INSTANCE: s.instance,
            LABEL_HOST: s.host_id,
            LABEL_ROLE: "rollout",
            "sandbox.user": s.sandbox_user,
            **s.extra_labels,
        }
        return SandboxSpec(
            name=name,
            image=image,
            labels=labels,
            memory_bytes=limits.memory_bytes or s.limits.memory_bytes,
            cpus=limits.cpus or s.limits.cpus,
            pids=limits.pids or s.limits.pids,
            workdir=env.spec.workdir if env.spec.workspace or env.spec.image else s.workdir,
            user=s.sandbox_user,
        )


def end_rollout(store: Store, rid: str, state: str, reason: str, how: str) -> bool:
    """End a live rollout and observe how it ended; False when it had ended already."""
    if not store.end_rollout(rid, state, reason):
        return False
    rec = store.get_rollout(rid)
    calls = sum((rec.calls or {}).values()) if rec else 0
    metrics.observe_rollout_end(how, calls, (rec.ended_at - rec.created_at) if rec else 0.0)
    return True


def taint(store: Store, rid: str, reason: str) -> None:
    """Mark a rollout infra-tainted (the grader will refuse it), counted once per rollout."""
    if store.taint(rid, reason):
        metrics.ROLLOUTS_TAINTED.labels(reason).inc()


def mark_lost(store: Store, rid: str, reason: str, cause: InfraReason = InfraReason.SANDBOX_LOST) -> bool:
    """A sandbox that served results vanished (or its host did): end the rollout as lost (and tainted), once."""
    taint(store, rid, cause.value)
    return end_rollout(store, rid, LOST, reason, "lost")
