"""Ended rollouts go to the archive (gzip JSON on disk) and Redis lets them go soon after; the
views read through, so nothing is lost when Redis forgets (store/archive.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from sandbox import metrics
from sandbox.domain.calls import CallResult, ToolCall
from sandbox.domain.rollout import RELEASED
from sandbox.store.archive import FORMAT
from sandbox.store.calls import STORED_ARGUMENTS_BYTES
from tests.fakes.host import World
from tests.unit.conftest import MakeWorld


def archived_world(make_world: MakeWorld, tmp_path: Path) -> World:
    return make_world(archive={"dir": str(tmp_path / "archive"), "redis_ttl_s": 120})


def served(w: World, rid: str, *commands: str) -> None:
    for command in commands:
        call = w.call(rid, command)
        w.tools.handle(ToolCall(call.tool, rid, call.call_id, "fc", call.arguments, call.arguments, None))


def forget_in_redis(w: World, rid: str) -> None:
    """What the archived TTL does, now."""
    k = w.store.keys
    w.store.redis.delete(k.rollout(rid), k.calls(rid), k.results(rid), k.children(rid), k.grade(rid))


def test_a_released_rollout_is_archived_and_read_back_once_redis_forgets_it(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    w = archived_world(make_world, tmp_path)
    served(w, "r-arch", "echo one", "echo two")
    w.rollouts.release("r-arch")
    path = w.store.connection.archive.path("r-arch")  # type: ignore[union-attr]
    with gzip.open(path) as f:
        doc = json.load(f)
    assert (doc["format"], doc["rollout_id"], doc["record"]["state"]) == (FORMAT, "r-arch", RELEASED)
    assert [c["output"] for c in doc["calls"]] == ["one\n", "two\n"]
    assert 0 < w.store.redis.ttl(w.store.keys.calls("r-arch")) <= 120  # Redis lets it go soon
    forget_in_redis(w, "r-arch")
    rec = w.rollouts.get("r-arch")
    assert (rec.state, sum((rec.calls or {}).values())) == (RELEASED, 2)
    _, calls = w.rollouts.trajectory("r-arch")
    assert [c["output"] for c in calls] == ["one\n", "two\n"]


def test_a_call_that_finishes_after_its_rollout_ended_is_archived_too(make_world: MakeWorld, tmp_path: Path) -> None:
    w = archived_world(make_world, tmp_path)
    served(w, "r-late", "echo first")
    w.rollouts.release("r-late")
    # The worker records what it ran, whatever happened meanwhile (released mid-call).
    late = CallResult("late-call", "fc", "shell", {"command": "echo late"}, "ok", "none", "late\n")
    w.store.calls.record("r-late", late)
    forget_in_redis(w, "r-late")
    assert [c["output"] for c in w.store.calls.trajectory("r-late")] == ["first\n", "late\n"]


def test_an_archive_that_cannot_be_written_leaves_the_rollout_in_redis_and_is_counted(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the archive directory should be")
    w = make_world(archive={"dir": str(blocked), "redis_ttl_s": 5})
    failed = metrics.ARCHIVE_WRITES.labels("failed")._value.get()
    served(w, "r-nodisk", "echo kept")
    w.rollouts.release("r-nodisk")  # ends all the same
    assert w.store.rollouts.get("r-nodisk").state == RELEASED  # type: ignore[union-attr]
    assert w.store.redis.ttl(w.store.keys.calls("r-nodisk")) > 5  # the full retention: not let go
    assert metrics.ARCHIVE_WRITES.labels("failed")._value.get() == failed + 1


def test_without_an_archive_nothing_is_written_and_retention_stays(world: World) -> None:
    served(world, "r-plain", "echo x")
    world.rollouts.release("r-plain")
    assert world.store.redis.ttl(world.store.keys.calls("r-plain")) > 0
    assert world.store.archive.load("r-plain") is None


@pytest.mark.parametrize("size", [100, STORED_ARGUMENTS_BYTES * 4])
def test_a_call_stores_at_most_a_bounded_head_of_its_arguments(world: World, size: int) -> None:
    rid = "r-bounded"
    arguments = {"command": "echo hi", "junk": "x" * size}
    call = world.call(rid)
    world.tools.handle(ToolCall("shell", rid, call.call_id, "fc", arguments, arguments, None))
    (stored,) = world.store.calls.trajectory(rid)
    if size < STORED_ARGUMENTS_BYTES:
        assert stored["arguments"] == arguments
    else:
        cut = stored["arguments"]["_truncated"]
        assert cut["bytes"] > size and len(cut["head"].encode()) <= STORED_ARGUMENTS_BYTES
        assert len(world.store.redis.lindex(world.store.keys.calls(rid), 0)) < STORED_ARGUMENTS_BYTES + 8192


def test_any_rollout_id_makes_a_valid_archive_file(make_world: MakeWorld, tmp_path: Path) -> None:
    """Ids the API takes may be long and in any script (the fuzzer found percent-encoded names
    past the file system's 255 bytes): the file is named by the id's hash."""
    w = archived_world(make_world, tmp_path)
    rid = "Ṱ̺̺̕o͞ ̷i̲̬͇̪͙n̝̗͕v̟̜̘̦͟o̶̙̰̠kè͚̮̺̪̹̱̤ chaos " * 4 + "/../x"
    path = w.store.connection.archive.path(rid)  # type: ignore[union-attr]
    assert len(path.name.encode()) < 120 and path.parent.parent == tmp_path / "archive"
    w.store.connection.archive.write(rid, {"state": "released"}, [{"call_id": "c"}], None)  # type: ignore[union-attr]
    assert w.store.archive.load(rid)["calls"] == [{"call_id": "c"}]  # type: ignore[index]
    assert w.store.archive.holds(rid) and not w.store.archive.holds(rid + "-other")
