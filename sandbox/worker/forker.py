"""Worker side of a fork: the parent's filesystem committed as an image, a container per child.

Why a filesystem snapshot is a complete fork here: nothing the sandbox user starts survives
the end of its command, so between calls a rollout's whole state is its filesystem (the
working directory of every command is the workspace). Committing the container's
copy-on-write layer, paused so no call is half inside it, captures all of it; children
start from that image as any rollout starts from its environment's image.

A fork leaves nothing half-made: when any step fails, the children's containers and the
image are removed here, and the API forgets the children's records.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..backends.base import Backend
from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..domain.container import (
    READY_TIMEOUT_S,
    ROLE_ROLLOUT,
    container_spec,
    fork_image_labels,
    fork_image_tag,
)
from ..domain.errors import InfraError, InternalError, SandboxLost
from ..domain.messages import ForkReply, ForkRequest
from ..domain.outcomes import InfraReason
from ..domain.rollout import DEFAULT_ENVIRONMENT, READY, RolloutRecord, container_name
from ..endings import mark_lost
from ..environments import EnvironmentRegistry
from ..store import Store

log = logging.getLogger(__name__)


@dataclass
class Forker:
    store: Store
    backend: Backend
    settings: Settings
    registry: EnvironmentRegistry
    semaphore: threading.BoundedSemaphore  # the host's engine slots, shared with creations
    clock: Clock = SYSTEM_CLOCK

    def fork(self, request: ForkRequest) -> ForkReply:
        """Create every child of `request` on this host, or nothing at all."""
        if request.expires_at and self.clock.time() > request.expires_at:
            return ForkReply(False, InfraReason.QUEUE_TIMEOUT, "the fork waited too long for this host; not run")
        self.store.queues.mark_started(request.reply_id)
        parent = self.store.rollouts.get(request.parent_id)
        if parent is None or parent.state != READY or parent.tainted:
            state = "missing" if parent is None else ("tainted" if parent.tainted else parent.state)
            return ForkReply(False, message=f"the parent rollout is {state}; nothing to fork", refused=True)
        if parent.host != self.settings.host_id:
            return ForkReply(False, InfraReason.INTERNAL, f"fork for host {parent.host!r} reached this host")
        tag = fork_image_tag(self.settings.instance, parent.rollout_id, request.reply_id)
        made: dict[str, str] = {}  # container name -> id ("" until created)
        try:
            with self.semaphore:
                self.backend.snapshot(
                    parent.container_name, tag, fork_image_labels(self.settings, parent.rollout_id, request.reply_id)
                )
            self._create_children(parent, request.child_ids, tag, made)
            for child_id in request.child_ids:
                name = container_name(self.settings.instance, child_id)
                if not self.store.rollouts.mark_ready(child_id, 1, self.settings.host_id, made[name], name):
                    raise InternalError(f"child {child_id!r} was no longer waiting for its fork (released?)")
        except InfraError as exc:
            self._undo(made, tag)
            if isinstance(exc, SandboxLost):
                self._parent_lost(parent, exc.message)
            return ForkReply(False, exc.reason, exc.message)
        except Exception as exc:  # a bug must still undo the fork and answer, or the API waits in vain
            log.exception("fork of %s crashed", parent.rollout_id)
            self._undo(made, tag)
            return ForkReply(False, InfraReason.INTERNAL, f"internal error: {exc}")
        return ForkReply(True)

    def _create_children(
        self, parent: RolloutRecord, child_ids: tuple[str, ...], tag: str, made: dict[str, str]
    ) -> None:
        env = self.registry.of_rollout(parent.environment or DEFAULT_ENVIRONMENT)
        # A task's workdir is its image's WORKDIR; the snapshot keeps the parent container's.
        workdir = self.backend.image_workdir(tag) if env.spec.task is not None else None

        def create(child_id: str) -> None:
            name = container_name(self.settings.instance, child_id)
            spec = container_spec(
                self.settings, env, tag, name, role=ROLE_ROLLOUT, rollout_id=child_id, workdir=workdir
            )
            made[name] = ""  # before creating: a failure half-way must still remove it
            with self.semaphore:  # bounds the engine's work only: the guest boots outside it
                made[name] = self.backend.create(spec)
            self.backend.wait_ready(name, READY_TIMEOUT_S)

        workers = max(1, min(len(child_ids), 2 * self.settings.provision_concurrency))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(create, child_id) for child_id in child_ids]:
                future.result()  # the first failure raises; the others have finished by the `with`'s end

    def _undo(self, names: dict[str, str], tag: str) -> None:
        """Remove what a failed fork made; what cannot be removed now, the reconciler removes later."""
        for name in names:
            with contextlib.suppress(InfraError):
                self.backend.destroy(name)
        with contextlib.suppress(InfraError):
            self.backend.remove_image(tag)

    def _parent_lost(self, parent: RolloutRecord, message: str) -> None:
        """The parent's container vanished under the snapshot: the rollout is lost, as on a call."""
        if not self.store.rollouts.fail_unserved(parent.rollout_id, message):
            mark_lost(self.store, parent.rollout_id, message)
