"""Worker side of provisioning: create a rollout's container on this host's engine.

Safe to run twice (provisioning tasks are acks_late): the container name is derived from
the rollout id, so a second run adopts what the first made, and only the attempt that is
still current may mark the rollout ready.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .. import metrics
from ..backends.base import Backend
from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..domain.container import READY_TIMEOUT_S, ROLE_ROLLOUT, container_spec
from ..domain.errors import EngineUnavailable, InfraError, UnknownEnvironment
from ..domain.hosts import FailureWindow
from ..domain.outcomes import InfraReason
from ..domain.rollout import DEFAULT_ENVIRONMENT, PROVISIONING, READY, container_name
from ..environments import EnvironmentRegistry
from ..store import Store
from .preparation import Preparer

log = logging.getLogger(__name__)


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
    clock: Clock = SYSTEM_CLOCK

    def provision(self, rid: str, attempt: int, may_move: bool = True) -> str:
        """Create the container for one claimed attempt. Returns what happened.

        Safe to run twice (acks_late): the container name is derived from the rollout id,
        so a second run adopts what the first made.
        """
        # Taking the attempt names this host on the record: if the host dies now, waiters
        # see it and provision elsewhere instead of waiting out the stale deadline.
        if not self.store.rollouts.set_provision_host(rid, attempt, self.settings.host_id):
            return "skipped"
        rec = self.store.rollouts.get(rid)
        if rec is None or rec.state != PROVISIONING or rec.provision_attempt != attempt:
            return "skipped"
        name = container_name(self.settings.instance, rid)
        started = self.clock.monotonic()
        try:
            env = self.registry.of_rollout(rec.environment or DEFAULT_ENVIRONMENT)
            prepared = self.preparer.prepare(env)  # once per host and definition; outside the semaphore
            spec = container_spec(
                self.settings, env, prepared.image, name, role=ROLE_ROLLOUT, rollout_id=rid, workdir=prepared.workdir
            )
            with self.semaphore:  # bounds the engine's work only: the guest boots outside it
                container_id = self.backend.create(spec)
            self.backend.wait_ready(name, READY_TIMEOUT_S)
        except EngineUnavailable as exc:
            self._engine_result(ok=False)
            # Nothing was created and nothing served: another host may take the same attempt.
            if may_move and self.elsewhere is not None and self.elsewhere(rid, attempt):
                return "placed elsewhere"
            return self._failed(rid, attempt, name, exc.message, started, exc.reason)
        except InfraError as exc:
            self._engine_result(ok=False)
            return self._failed(rid, attempt, name, exc.message, started, exc.reason)
        except UnknownEnvironment as exc:
            return self._failed(rid, attempt, name, exc.message, started)
        except Exception as exc:  # a bug must still end the attempt, or callers wait for nothing
            log.exception("provisioning %s crashed", rid)
            return self._failed(rid, attempt, name, f"internal error: {exc}", started, InfraReason.INTERNAL)
        if not self.store.rollouts.mark_ready(rid, attempt, self.settings.host_id, container_id, name):
            now = self.store.rollouts.get(rid)
            if now is None or now.state != PROVISIONING:  # released meanwhile: nobody will use it
                self.backend.destroy(name)
            return "superseded"
        self._engine_result(ok=True)
        metrics.PROVISIONS.labels("cold", "ok").inc()
        metrics.PROVISION_DURATION.labels("cold", "ok").observe(self.clock.monotonic() - started)
        return "ready"

    def _engine_result(self, ok: bool) -> None:
        if self.failures is not None:
            self.failures.record(ok)

    def _failed(
        self,
        rid: str,
        attempt: int,
        name: str,
        message: str,
        started: float,
        reason: InfraReason = InfraReason.PROVISION_FAILED,
    ) -> str:
        metrics.PROVISIONS.labels("cold", "failed").inc()
        metrics.PROVISION_DURATION.labels("cold", "failed").observe(self.clock.monotonic() - started)
        ended = self.store.rollouts.mark_provision_failed(rid, attempt, message, reason)
        # Every attempt of a rollout uses the same container name: when a newer attempt has
        # taken over (this one went stale), the container is now that attempt's to keep.
        if ended or not self._taken_over(rid, attempt):
            with contextlib.suppress(InfraError):  # else the reconciler removes it later
                self.backend.destroy(name)
        return "failed"

    def _taken_over(self, rid: str, attempt: int) -> bool:
        rec = self.store.rollouts.get(rid)
        return rec is not None and rec.state in (PROVISIONING, READY) and rec.provision_attempt != attempt
