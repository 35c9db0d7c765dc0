"""Which tool calls an API process works on, and in what order.

At the start of a training step hundreds of rollouts send their first call at once, and
the trainer waits for every one of them. Handled all at once, 500 threads share one
interpreter lock: every call progresses a little at a time and nearly all of them finish
together, late (measured: time-to-first-output p50 10 s, p99 15 s for 500). Admitted a
few at a time, they finish in arrival order, the early ones early, and with less lock
thrash in total. And as soon as the early rollouts are answered their follow-up calls
arrive: they must not take CPU from first calls still waiting.

So the CPU-bound part of a call (reading its state, claiming a container, handing it to
its host) runs in one of `slots` admission slots, first calls of rollouts before
follow-up calls. Waiting is not CPU work: a call leaves its slot before it blocks for a
container, for a duplicate's result, or for its host's reply. A follow-up call that has
waited `follow_up_max_wait_s` goes before first calls, so a stream of new rollouts cannot
starve running ones. The hosts keep the same order with a separate queue for first calls
(sandbox/worker/call_queue.py).
"""

from __future__ import annotations

import threading
import time
from collections import deque


class _Waiter:
    __slots__ = ("since", "event")

    def __init__(self) -> None:
        self.since = time.monotonic()
        self.event = threading.Event()


class AdmissionTicket:
    """One admission slot, held until released (once: when queued, or on any exit)."""

    def __init__(self, admission: CallAdmission | None) -> None:
        self._admission = admission

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._leave()


NO_TICKET = AdmissionTicket(None)  # holds no slot, releases nothing


class CallAdmission:
    def __init__(self, slots: int, follow_up_max_wait_s: float) -> None:
        self.follow_up_max_wait_s = follow_up_max_wait_s
        self._lock = threading.Lock()
        self._free = slots
        # Waiters are handed a slot directly, oldest first: no thundering herd of 500 threads.
        self._first: deque[_Waiter] = deque()
        self._follow_ups: deque[_Waiter] = deque()

    def enter(self, first: bool) -> AdmissionTicket:
        """Block until this call may work; `first`: the rollout's first call."""
        with self._lock:
            if self._free > 0:  # free slots mean nobody waits: slots are handed over directly
                self._free -= 1
                return AdmissionTicket(self)
            waiter = _Waiter()
            (self._first if first else self._follow_ups).append(waiter)
        waiter.event.wait()
        return AdmissionTicket(self)

    def waiting(self) -> tuple[int, int]:
        """(first calls, follow-up calls) waiting for a slot."""
        with self._lock:
            return len(self._first), len(self._follow_ups)

    def _leave(self) -> None:
        with self._lock:
            waiter = self._next_waiter()
            if waiter is None:
                self._free += 1
                return
        waiter.event.set()

    def _next_waiter(self) -> _Waiter | None:
        overdue = self._follow_ups and time.monotonic() - self._follow_ups[0].since > self.follow_up_max_wait_s
        if overdue or (not self._first and self._follow_ups):
            return self._follow_ups.popleft()
        return self._first.popleft() if self._first else None
