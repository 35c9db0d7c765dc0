"""The host's container count from one listing and the engine's events (sandbox/worker/container_count.py)."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

from sandbox.domain.container import SandboxInfo
from sandbox.domain.errors import EngineUnavailable
from sandbox.worker.container_count import ContainerCount


def info(cid: str) -> SandboxInfo:
    return SandboxInfo(name=cid, container_id=cid, rollout_id="", running=True, created_at=0.0)


class FakeEngine:
    """Containers and an event stream that replays from `since`, as the engine's does."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.log: list[tuple[float, str, str]] = []
        self.now = 100.0
        self.live: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self.listings = 0

    def create(self, cid: str) -> None:
        self.ids.add(cid)
        self.log.append((self.now, "create", cid))
        self.live.put(("create", cid))

    def destroy(self, cid: str) -> None:
        self.ids.discard(cid)
        self.log.append((self.now, "destroy", cid))
        self.live.put(("destroy", cid))

    def listing(self) -> list[SandboxInfo]:
        self.listings += 1
        return [info(c) for c in sorted(self.ids)]

    def events_since(self, since: float) -> Iterator[tuple[str, str]]:
        # What happened before the call is replayed, what happens after arrives live.
        replay = [(a, c) for t, a, c in self.log if t >= since]
        live: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self.live = live
        return self._stream(replay, live)

    @staticmethod
    def _stream(replay: list[tuple[str, str]], live: queue.Queue[tuple[str, str] | None]) -> Iterator[tuple[str, str]]:
        yield from replay
        while (event := live.get(timeout=10)) is not None:
            yield event
        raise EngineUnavailable("engine went away")


def test_changes_between_the_stream_start_and_the_listing_are_not_lost() -> None:
    engine = FakeEngine()
    engine.create("a")
    engine.now = 200.0
    count = ContainerCount(lambda: engine.listing(), engine.events_since, clock=lambda: engine.now)
    assert count.value() is None  # not known before the first listing

    # A container made and one removed just before the listing: both in the replay.
    original_listing = engine.listing

    def listing_after_changes() -> list[SandboxInfo]:
        engine.create("b")
        engine.destroy("a")
        return original_listing()

    engine.listing = listing_after_changes  # type: ignore[method-assign]
    done = threading.Thread(target=lambda: _sync_until_broken(count))
    done.start()
    _wait(lambda: count.value() == 1)
    engine.create("c")
    _wait(lambda: count.value() == 2)
    engine.destroy("b")
    engine.destroy("zzz")  # a container never seen: nothing to subtract
    _wait(lambda: count.value() == 1)
    engine.live.put(None)  # the stream breaks
    done.join(5)
    assert not done.is_alive()


def test_a_broken_stream_means_unknown_then_a_fresh_listing() -> None:
    engine = FakeEngine()
    engine.create("a")
    count = ContainerCount(engine.listing, engine.events_since, clock=lambda: engine.now)
    stop = threading.Event()
    count.start(stop)
    _wait(lambda: count.value() == 1)
    assert engine.listings == 1
    engine.live.put(None)  # engine restart: the count is not trusted until listed again
    _wait(lambda: engine.listings == 2)
    _wait(lambda: count.value() == 1)
    stop.set()
    engine.live.put(None)


def _sync_until_broken(count: ContainerCount) -> None:
    with contextlib.suppress(EngineUnavailable):
        count.sync_once()


def _wait(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
