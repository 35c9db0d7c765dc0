"""API side of `POST /v1/rollouts/{id}/fork`: check the parent, create the children's records,
hand the fork to the parent's host, wait for its answer.

Children live on the parent's host, where the parent's layer is: a fork never moves a
layer between hosts (docs/architecture.md, "Fork", says how it could). The children's
records exist from the start (provisioning, attempt 1), so a call to a child made while the
fork runs waits for it like any first call; when the fork fails they are forgotten, so the
same ids can be asked for again and nothing is left in a state that never resolves.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from .. import metrics
from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..dispatch import Dispatcher
from ..domain.calls import check_rollout_id
from ..domain.errors import (
    BadRequest,
    HostFull,
    HostUnavailable,
    InfraError,
    InvalidForkRequest,
    QueueTimeout,
    RolloutExists,
    RolloutNotForkable,
    RolloutNotFound,
    WorkerLost,
    infra_error_from_reason,
)
from ..domain.messages import ForkRequest
from ..domain.rollout import ENDED_STATES, READY, RolloutRecord
from ..store import Store
from .rollout_service import RolloutService

CHILD_SUFFIX_CHARS = 12


@dataclass
class ForkService:
    store: Store
    dispatcher: Dispatcher
    settings: Settings
    rollouts: RolloutService  # for its cached view of the hosts
    clock: Clock = SYSTEM_CLOCK

    def fork(self, parent_id: str, body: Any) -> list[dict[str, str]]:
        """Fork the parent into new rollouts; return them, all ready.

        Raises InvalidForkRequest (400), RolloutNotFound (404), RolloutNotForkable and
        RolloutExists (409), HostFull and HostUnavailable (503, nothing attempted), and
        InfraError (503: the fork failed and left nothing behind).
        """
        started = self.clock.monotonic()
        try:
            children = self._fork(check_rollout_id(parent_id), body)
        except InfraError as exc:
            if isinstance(exc, HostUnavailable):
                metrics.FORKS.labels("refused").inc()
            else:
                metrics.FORKS.labels("failed").inc()
            raise
        except (BadRequest, RolloutNotFound, RolloutNotForkable, RolloutExists, HostFull):
            metrics.FORKS.labels("refused").inc()
            raise
        metrics.FORKS.labels("ok").inc()
        metrics.FORK_DURATION.observe(self.clock.monotonic() - started)
        metrics.FORK_CHILDREN.inc(len(children))
        return [{"rollout_id": child, "state": READY} for child in children]

    def _fork(self, parent_id: str, body: Any) -> list[str]:
        rec = self.store.rollouts.get(parent_id)
        if rec is None:
            raise RolloutNotFound(f"no rollout {parent_id!r}")
        child_ids = self._child_ids(parent_id, body)
        self._check_forkable(rec, len(child_ids))
        calls = self.store.calls.count(parent_id)
        self._create_records(rec, child_ids, at_call=calls - 1 if calls else None)
        try:
            self._run_on_host(rec, child_ids)
        except BaseException:
            for child in child_ids:
                self.store.rollouts.forget_child(child, parent_id)
            raise
        self.store.rollouts.add_children(parent_id, child_ids)
        return child_ids

    def _child_ids(self, parent_id: str, body: Any) -> list[str]:
        limit = self.settings.fork_max_children
        if not isinstance(body, dict) or ("count" in body) == ("rollout_ids" in body):
            raise InvalidForkRequest('send {"count": N} or {"rollout_ids": [...]}, one of the two')
        if "count" in body:
            count = body["count"]
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= limit:
                raise InvalidForkRequest(f"count must be an integer from 1 to {limit}")
            # Readable ids that point at their parent; the parent's id is cut so the child's fits.
            return [f"{parent_id[:200]}~{uuid.uuid4().hex[:CHILD_SUFFIX_CHARS]}" for _ in range(count)]
        ids = body["rollout_ids"]
        if not isinstance(ids, list) or not 1 <= len(ids) <= limit:
            raise InvalidForkRequest(f"rollout_ids must be a list of 1 to {limit} ids")
        checked = [check_rollout_id(i) for i in ids]
        if len(set(checked)) != len(checked) or parent_id in checked:
            raise InvalidForkRequest("rollout_ids must be distinct and differ from the parent's id")
        return checked

    def _check_forkable(self, rec: RolloutRecord, children: int) -> None:
        if rec.state in ENDED_STATES or rec.tainted:
            why = f"it is {rec.state}" + (f", tainted by {rec.taint_reason}" if rec.tainted else "")
            raise RolloutNotForkable(f"rollout {rec.rollout_id!r} cannot be forked: {why}")
        if rec.state != READY:
            raise RolloutNotForkable(
                f"rollout {rec.rollout_id!r} has no sandbox yet (state {rec.state}); call it first"
            )
        view = self.rollouts.host_views().get(rec.host)
        if view is None or view.lost_its_sandboxes:
            status = "unknown" if view is None else f"{view.status} ({view.reason})"
            raise HostUnavailable(f"the rollout's sandbox host {rec.host!r} is {status}; it cannot be forked")
        if view.capacity > 0 and view.containers + children > view.capacity:
            raise HostFull(
                f"host {rec.host!r} holds {view.containers} of {view.capacity} containers: no room for {children} "
                "children there (they must live beside the parent's layer); retry later or fork fewer"
            )

    def _create_records(self, rec: RolloutRecord, child_ids: list[str], at_call: int | None) -> None:
        created: list[str] = []
        for child in child_ids:
            if not self.store.rollouts.create_child(child, rec, at_call, rec.host):
                for made in created:
                    self.store.rollouts.forget_child(made, rec.rollout_id)
                raise RolloutExists(f"rollout {child!r} exists already; a fork's children must be new rollouts")
            created.append(child)

    def _run_on_host(self, rec: RolloutRecord, child_ids: list[str]) -> None:
        queue_s = self.settings.timeouts.queue_s
        wait_s = queue_s + self.settings.timeouts.fork_s
        request = ForkRequest(uuid.uuid4().hex, rec.rollout_id, tuple(child_ids), self.clock.time() + queue_s)
        self.store.rollouts.begin_fork(request.reply_id, wait_s)
        try:
            self.dispatcher.fork(rec.host, request)
            reply = self.store.queues.wait_fork_reply(request.reply_id, wait_s)
        finally:
            self.store.rollouts.end_fork(request.reply_id)
        if reply is None:
            if self.store.queues.was_started(request.reply_id):
                raise WorkerLost("the worker running the fork stopped answering")
            raise QueueTimeout(f"no worker of host {rec.host!r} took the fork within {queue_s:g} s")
        if reply.refused:
            raise RolloutNotForkable(f"rollout {rec.rollout_id!r} cannot be forked: {reply.message}")
        if not reply.ok:
            reason = reply.infra_reason.value if reply.infra_reason is not None else "internal"
            raise infra_error_from_reason(reason, f"the fork failed and left nothing behind: {reply.message}")
