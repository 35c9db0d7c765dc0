"""Admission of tool calls in one API process: a few at a time, first calls first (sandbox/api/admission.py)."""

from __future__ import annotations

import threading
import time

from sandbox.api.admission import NO_TICKET, CallAdmission


def _enter_in_thread(admission: CallAdmission, first: bool, order: list[str], name: str) -> threading.Thread:
    def run() -> None:
        ticket = admission.enter(first)
        order.append(name)
        ticket.release()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_for_waiters(admission: CallAdmission, n: int) -> None:
    deadline = time.monotonic() + 5
    while sum(admission.waiting()) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(admission.waiting()) == n


def test_calls_beyond_the_slots_wait_and_first_calls_go_before_earlier_follow_ups() -> None:
    admission = CallAdmission(slots=1, follow_up_max_wait_s=60)  # one slot: admission order is completion order
    held = [admission.enter(first=True)]
    order: list[str] = []
    threads = [_enter_in_thread(admission, False, order, "follow-up-1")]
    _wait_for_waiters(admission, 1)
    threads.append(_enter_in_thread(admission, False, order, "follow-up-2"))
    _wait_for_waiters(admission, 2)
    threads.append(_enter_in_thread(admission, True, order, "first-1"))
    _wait_for_waiters(admission, 3)
    threads.append(_enter_in_thread(admission, True, order, "first-2"))
    _wait_for_waiters(admission, 4)
    assert order == []  # the slot is held
    for ticket in held:
        ticket.release()
        ticket.release()  # a second release (queued, then the finally) gives back nothing more
    for thread in threads:
        thread.join(5)
    assert order == ["first-1", "first-2", "follow-up-1", "follow-up-2"]
    assert admission.waiting() == (0, 0)
    # Two slots: a third caller waits until one is given back.
    admission = CallAdmission(slots=2, follow_up_max_wait_s=60)
    a, b = admission.enter(first=False), admission.enter(first=False)
    late: list[str] = []
    thread = _enter_in_thread(admission, True, late, "third")
    _wait_for_waiters(admission, 1)
    a.release()
    thread.join(5)
    assert late == ["third"]
    b.release()
    NO_TICKET.release()


def test_a_follow_up_call_that_waited_too_long_goes_before_new_first_calls() -> None:
    admission = CallAdmission(slots=1, follow_up_max_wait_s=0.2)
    held = admission.enter(first=True)
    order: list[str] = []
    threads = [_enter_in_thread(admission, False, order, "follow-up")]
    _wait_for_waiters(admission, 1)
    threads.append(_enter_in_thread(admission, True, order, "first"))
    _wait_for_waiters(admission, 2)
    time.sleep(0.3)
    held.release()
    for thread in threads:
        thread.join(5)
    assert order == ["follow-up", "first"]
