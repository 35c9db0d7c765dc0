"""Measuring helpers of the burst benchmark: a progress line while a phase runs, percentiles of
a phase's latencies, and the RSS and CPU of the API and worker process trees, read from /proc.

The trees matter: the worker runs an embedded beat as a child, and both count against the
memory and CPU targets.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tools.bench_common import percentile


def stats(values: Iterable[float], scale: float = 1.0, digits: int = 3) -> dict[str, float]:
    v = [x * scale for x in values]
    if not v:
        return {"n": 0}
    return {
        "n": len(v),
        **{f"p{q}": round(percentile(v, q), digits) for q in (50, 95, 99)},
        "max": round(max(v), digits),
    }


class Progress:
    """One line every ~2 s while a phase runs: phase, done/total, errors so far."""

    def __init__(self) -> None:
        self.phase, self.total, self.done, self.errors, self.started = "", 0, 0, 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-progress", daemon=True)
        self._thread.start()

    def begin(self, phase: str, total: int = 0) -> None:
        self.phase, self.total, self.done, self.errors, self.started = phase, total, 0, 0, time.monotonic()
        print(f"-- {phase}", flush=True)

    def tick(self, ok: bool = True) -> None:
        self.done += 1
        self.errors += not ok

    def end(self) -> None:
        self.line()
        self.phase = ""

    def line(self) -> None:
        of = f"/{self.total}" if self.total else ""
        took = time.monotonic() - self.started
        print(f"   {self.phase}: {self.done}{of} done, {self.errors} errors, {took:.1f} s", flush=True)

    def _loop(self) -> None:
        while not self._stop.wait(2.0):
            if self.phase:
                self.line()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _tree(root: int) -> list[int]:
    """A process and all its descendants (e.g. the worker's embedded beat)."""
    seen, todo = [], [root]
    while todo:
        if (pid := todo.pop()) not in seen:
            seen.append(pid)
            todo += _children(pid)
    return seen


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


def _cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of a process (all its threads), in clock ticks."""
    try:
        return sum(int(x) for x in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:15])
    except (OSError, ValueError):
        return 0


class MemorySampler:
    """RSS of the API and worker process trees every 0.5 s, with the bench's live rollout count."""

    def __init__(self, run_dir: Path, live: Callable[[], int]) -> None:
        self.roots: dict[str, int] = {}
        for name in ("api", "worker"):
            try:
                pid = int((run_dir / f"{name}.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if Path(f"/proc/{pid}").exists():
                self.roots[name] = pid
        self.run_dir, self.live = run_dir, live
        self.samples: list[tuple[float, dict[str, int], int, int]] = []  # (t, rss by root, live, processes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)
        self._t0 = time.monotonic()
        self._thread.start()

    def _loop(self) -> None:
        for i in itertools.count():
            if i % 10 == 0:  # the process trees change rarely; walking every thread's children costs
                trees = {name: _tree(pid) for name, pid in self.roots.items()}
            rss = {name: sum(_rss(p) for p in pids) for name, pids in trees.items()}
            self.samples.append((time.monotonic() - self._t0, rss, self.live(), sum(map(len, trees.values()))))
            if self._stop.wait(0.5):
                return

    def summary(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=5)
        if not self.roots:
            return {"error": f"no live api/worker pid in {self.run_dir}/api.pid, worker.pid: memory not measured"}
        mib = 1024**2
        peak = max(self.samples, key=lambda s: sum(s[1].values()))
        most_live = max(s[2] for s in self.samples)
        at_live = max((s for s in self.samples if s[2] == most_live), key=lambda s: sum(s[1].values()))
        return {
            "pids": self.roots,
            "samples": len(self.samples),
            "peak_rss_mib": round(sum(peak[1].values()) / mib, 1),
            "peak_by_process_mib": {k: round(v / mib, 1) for k, v in peak[1].items()},
            "peak_at_s": round(peak[0], 1),
            "processes_at_peak": peak[3],
            "most_live_rollouts": most_live,
            "rss_at_most_live_mib": round(sum(at_live[1].values()) / mib, 1),
        }


class CpuMark:
    """CPU used since the mark: the machine's busy share, the API and worker trees, the bench client itself
    (it shares the machine with the service, so its share is part of the picture)."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots
        self.start = self._now()

    def _now(self) -> list[float]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        trees = [sum(_cpu_ticks(pid) for pid in _tree(root)) / os.sysconf("SC_CLK_TCK") for root in self.roots.values()]
        return [time.process_time(), sum(fields) - fields[3] - fields[4], sum(fields), *trees]

    def since(self) -> dict[str, Any]:
        client, busy, total, *trees = (b - a for a, b in zip(self.start, self._now(), strict=True))
        return {
            "machine_cpu_busy_pct": round(100 * busy / max(1, total), 1),
            "service_cpu_s": round(sum(trees), 1),
            "service_cpu_by_process_s": {name: round(t, 1) for name, t in zip(self.roots, trees, strict=True)},
            "bench_client_cpu_s": round(client, 1),
        }
