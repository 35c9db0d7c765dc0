"""How a host's registration is judged (up, full, quarantined, down) and where new rollouts go."""

from __future__ import annotations

import pytest

from sandbox.domain.hosts import DOWN, FULL, QUARANTINED, UP, FailureWindow, HostView, pick_host

NOW = 1_000_000.0


def view(host: str = "h1", age_s: float = 1.0, **info: object) -> HostView:
    base = {"engine_healthy": "1", "capacity": "10", "containers": "3", "down_after_s": "20", "quarantined_until": "0"}
    fields = base | {k: str(v) for k, v in info.items()} | {"heartbeat_at": str(NOW - age_s)}
    return HostView(host, fields, NOW)


@pytest.mark.parametrize(
    ("kwargs", "status", "reason", "takes_new", "lost"),
    [
        ({}, UP, "", True, False),
        ({"containers": 10}, FULL, "", False, False),
        ({"capacity": 0, "containers": 5000}, UP, "", True, False),  # no cap
        ({"engine_healthy": "0"}, QUARANTINED, "engine_unhealthy", False, True),
        ({"quarantined_until": NOW + 5}, QUARANTINED, "failure_spike", False, False),
        ({"quarantined_until": NOW - 5}, UP, "", True, False),  # the cool-down is over: it rejoins
        ({"age_s": 21.0}, DOWN, "heartbeat_lost", False, True),
        ({"age_s": 19.0}, UP, "", True, False),
        ({"age_s": 21.0, "engine_healthy": "0"}, DOWN, "heartbeat_lost", False, True),
    ],
)
def test_status_of_a_registration(kwargs: dict, status: str, reason: str, takes_new: bool, lost: bool) -> None:
    v = view(**kwargs)
    assert (v.status, v.reason, v.takes_new_rollouts, v.lost_its_sandboxes) == (status, reason, takes_new, lost)
    assert v.serves is not lost


def test_public_view_names_status_and_reason() -> None:
    shown = view(engine_healthy="0").public()
    assert shown["status"] == "quarantined" and shown["reason"] == "engine_unhealthy"
    assert shown["engine_healthy"] is False and shown["heartbeat_age_s"] == 1.0


def test_pick_host_prefers_room_and_skips_hosts_that_take_nothing() -> None:
    hosts = [
        view("a", containers=8),
        view("b", containers=2),
        view("c", containers=0, engine_healthy="0"),
        view("d", containers=0, age_s=60),
        view("e", containers=10),
    ]
    assert pick_host(hosts) == "b"
    assert pick_host(hosts, exclude="b") == "a"
    assert pick_host([view("c", engine_healthy="0"), view("e", containers=10)]) is None


def test_failure_window_quarantines_on_a_spike_only() -> None:
    w = FailureWindow(window_s=60, min_failures=5, ratio=0.5, quarantine_s=30)
    for i in range(20):  # a busy, healthy host with a few failures
        w.record(ok=True, now=NOW + i)
    for i in range(5):
        w.record(ok=False, now=NOW + 20 + i)
    assert w.quarantined_until() == 0.0  # 5 of 25: below the ratio
    for i in range(16):
        w.record(ok=False, now=NOW + 30 + i)
    assert w.quarantined_until() > NOW + 30  # now most operations fail


def test_failure_window_forgets_old_failures() -> None:
    w = FailureWindow(window_s=10, min_failures=3, ratio=0.5, quarantine_s=30)
    w.record(ok=False, now=NOW)
    w.record(ok=False, now=NOW + 1)
    w.record(ok=False, now=NOW + 50)  # the first two fell out of the window
    assert w.quarantined_until() == 0.0
    w.record(ok=False, now=NOW + 51)
    w.record(ok=False, now=NOW + 52)
    assert w.quarantined_until() == NOW + 52 + 30
