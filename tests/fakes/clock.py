"""A clock that moves only when told, so time-driven logic (TTLs, deadlines, grace periods) is
tested without sleeping."""

from __future__ import annotations

import threading


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        """A sleep is time passing: it returns at once with the clock moved on."""
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, seconds)
