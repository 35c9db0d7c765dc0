"""Tool calls reach their host through two Redis lists, read by a pool of threads.

Why not one Celery task per call, as for everything else a host does: a profile of the
sustained phase (docs/benchmarks.md) put Celery's own machinery (consumer loop, QoS
bookkeeping, ack, task tracing) at more than half of the worker's CPU per call, and
the publish at a fifth of the API's. A tool call needs none of it:
- it runs at most once: a popped request belongs to the thread that popped it, and a
  worker that dies mid-call shows as `worker_lost` (the API sees it was started);
- it carries its own deadline (`expires_at`): one that waited too long is answered
  `queue_timeout` without running, so a call the API gave up on never runs behind its back;
- its reply goes back on a list the API blocks on (store.queues.push_reply).

First calls of a rollout have their own list, which every thread reads first: at the
start of a training step the trainer waits for every rollout's first answer, so those
must not queue behind the follow-up calls of rollouts that already started.
"""

from __future__ import annotations

import logging
import threading
import time

from ..domain.errors import InfraError
from ..domain.messages import CallReply, CallRequest
from ..domain.outcomes import InfraReason
from ..store import Store
from .executor import Executor

log = logging.getLogger(__name__)
POP_TIMEOUT_S = 1.0  # how often an idle thread looks at the stop flag


def run_call(executor: Executor, store: Store, request: CallRequest) -> None:
    """Run one queued call and deliver its reply; never raises (the API would wait in vain)."""
    now = time.time()
    if request.expires_at and now > request.expires_at:
        waited = now - (request.queued_at or request.expires_at)
        reply = CallReply.infra(InfraReason.QUEUE_TIMEOUT, f"the call waited {waited:.1f} s for this host; not run")
    else:
        try:
            reply = executor.execute(request)  # marks the call started (worker_lost vs queue_timeout)
        except InfraError as exc:
            reply = CallReply.failed(exc)
        except Exception as exc:  # never leave the API waiting for a reply that will not come
            log.exception("execute crashed for rollout %s", request.rollout_id)
            reply = CallReply.infra(InfraReason.INTERNAL, f"internal error: {exc}")
    try:
        store.queues.push_reply(request.reply_id, reply)
    except InfraError:
        log.error("cannot deliver reply %s: state store unavailable", request.reply_id)


class CallConsumers:
    """`threads` threads, each taking this host's next call and running it."""

    def __init__(self, store: Store, executor: Executor, host_id: str, threads: int, stop: threading.Event) -> None:
        self.store = store
        self.executor = executor
        self.host_id = host_id
        self.count = threads
        self.stop = stop
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.count):
            thread = threading.Thread(target=self._loop, name=f"calls-{i}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def join(self, timeout_s: float) -> None:
        """Wait for calls in progress to finish (the stop flag must be set)."""
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                request = self.store.queues.pop_call(self.host_id, POP_TIMEOUT_S)
            except InfraError:
                log.warning("cannot read the call queue of host %s: state store unavailable", self.host_id)
                self.stop.wait(POP_TIMEOUT_S)
                continue
            except (KeyError, TypeError, ValueError):  # not a CallRequest: nobody to answer, drop it
                log.exception("dropped a malformed call request on the queue of host %s", self.host_id)
                continue
            if request is not None:
                run_call(self.executor, self.store, request)
