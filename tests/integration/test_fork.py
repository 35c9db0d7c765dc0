"""Fork on the real stack: a committed layer on the parent's host, children as ordinary rollouts,
isolation, failures that leave nothing behind, and the reconciler's view of fork images."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.stack import TEST_LABEL, Stack, wait_until

pytestmark = pytest.mark.integration


def rid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def fork_images(stack: Stack, parent: str) -> list[object]:
    return stack.docker.images.list(filters={"label": [f"sandbox.fork_of={parent}", f"{TEST_LABEL}={stack.session}"]})


def test_children_start_from_the_parents_filesystem_and_stay_apart(stack: Stack) -> None:
    parent = rid("fork-parent")
    assert stack.shell(parent, "mkdir -p data && echo hello > data/a.txt").status_code == 200
    assert stack.shell(parent, "echo second > b.txt").status_code == 200
    r = stack.http.post(f"/v1/rollouts/{parent}/fork", json={"count": 3})
    assert r.status_code == 200, r.text
    children = [c["rollout_id"] for c in r.json()["rollouts"]]
    assert len(set(children)) == 3 and all(c["state"] == "ready" for c in r.json()["rollouts"])

    for child in children:
        info = stack.http.get(f"/v1/rollouts/{child}").json()
        assert info["state"] == "ready" and info["parent"] == {"rollout_id": parent, "at_call": 1}
        assert stack.http.get(f"/v1/rollouts/{child}/trajectory").json()["calls"] == []
        assert stack.shell(child, "cat data/a.txt b.txt").json()["output"] == "hello\nsecond\n"
        assert len(stack.containers_of(child)) == 1
    assert stack.http.get(f"/v1/rollouts/{parent}").json()["children"] == children

    # Apart: a write in one is seen by none of the others, the parent's later work by no child.
    assert stack.shell(children[0], "echo mine > only-0.txt").status_code == 200
    later = stack.shell(parent, "echo later > parent-later.txt")
    assert later.status_code == 200, later.text  # the fork paused it; nothing took that for a stop
    for other in (children[1], children[2], parent):
        assert "[exit code 1]" in stack.shell(other, "cat only-0.txt").json()["output"]
    assert "[exit code 1]" in stack.shell(children[1], "cat parent-later.txt").json()["output"]
    # Children are ordinary rollouts: their own trajectory, release removes their container.
    assert len(stack.http.get(f"/v1/rollouts/{children[0]}/trajectory").json()["calls"]) == 2
    for child in children:
        assert stack.http.delete(f"/v1/rollouts/{child}").status_code == 200
    wait_until(lambda: all(stack.containers_of(c) == [] for c in children), timeout_s=60)


def test_forking_what_cannot_be_forked_is_refused_and_creates_nothing(stack: Stack) -> None:
    parent = rid("fork-refused")
    assert stack.http.post(f"/v1/rollouts/{parent}/fork", json={"count": 1}).status_code == 404
    assert stack.shell(parent, "echo x").status_code == 200
    bad = stack.http.post(f"/v1/rollouts/{parent}/fork", json={"count": 1, "rollout_ids": ["a"]})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_fork_request"
    taken = stack.http.post(f"/v1/rollouts/{parent}/fork", json={"rollout_ids": [rid("new"), parent + "x", parent]})
    assert taken.status_code == 400
    existing = rid("existing")
    assert stack.shell(existing, "true").status_code == 200
    clash = stack.http.post(f"/v1/rollouts/{parent}/fork", json={"rollout_ids": [rid("fresh"), existing]})
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "rollout_exists"
    assert fork_images(stack, parent) == []

    assert stack.http.delete(f"/v1/rollouts/{parent}").status_code == 200
    ended = stack.http.post(f"/v1/rollouts/{parent}/fork", json={"count": 2})
    assert ended.status_code == 409 and ended.json()["error"]["code"] == "rollout_not_forkable"

    lost = rid("fork-lost")
    assert stack.shell(lost, "true").status_code == 200
    stack.containers_of(lost)[0].remove(force=True)
    assert stack.shell(lost, "true").status_code == 503  # now lost and tainted
    assert stack.http.post(f"/v1/rollouts/{lost}/fork", json={"count": 1}).status_code == 409


def test_a_fork_that_fails_on_our_side_is_503_and_leaves_nothing_behind(stack: Stack) -> None:
    parent = rid("fork-fail")
    children = [rid("child"), rid("child")]
    assert stack.shell(parent, "echo x > x.txt").status_code == 200
    failed_before = stack.metric("sandbox_forks_total", {"result": "failed"})
    # The parent's container vanishes just before the fork: the snapshot finds nothing to copy.
    stack.containers_of(parent)[0].remove(force=True)
    r = stack.http.post(f"/v1/rollouts/{parent}/fork", json={"rollout_ids": children})
    assert r.status_code == 503 and r.json()["error"]["code"] == "sandbox_lost"
    assert stack.metric("sandbox_forks_total", {"result": "failed"}) == failed_before + 1
    for child in children:
        assert stack.http.get(f"/v1/rollouts/{child}").status_code == 404  # no record left
        assert stack.containers_of(child) == []
    assert fork_images(stack, parent) == []
    info = stack.http.get(f"/v1/rollouts/{parent}").json()
    assert info["state"] == "lost" and info["infra_tainted"] is True


def test_a_fork_image_goes_once_no_container_uses_it(stack: Stack) -> None:
    parent = rid("fork-image")
    assert stack.shell(parent, "echo x > x.txt").status_code == 200
    r = stack.http.post(f"/v1/rollouts/{parent}/fork", json={"count": 1})
    assert r.status_code == 200, r.text
    child = r.json()["rollouts"][0]["rollout_id"]
    assert len(fork_images(stack, parent)) == 1
    time.sleep(8)  # the reconciler runs every second here and the grace is 5 s: it has looked
    assert len(fork_images(stack, parent)) == 1  # its child still runs on it
    assert stack.http.delete(f"/v1/rollouts/{child}").status_code == 200
    wait_until(lambda: stack.containers_of(child) == [], timeout_s=60)
    wait_until(lambda: fork_images(stack, parent) == [], timeout_s=60, interval_s=1.0)
    assert stack.metric("sandbox_reconciler_actions_total", {"action": "fork_image_removed"}, source="worker") >= 1
