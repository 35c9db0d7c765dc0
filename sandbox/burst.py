"""Burst benchmark, the measuring half of `sandbox bench burst` (bench.py parses and reports).

What a trainer does at the start of a step: N new rollouts at once, each making K tool calls
in sequence. Measured in one run on this machine, beside the raw engine doing the same work:
- baselines: raw `docker run -d` of N containers at the engine's best concurrency, and raw
  `docker exec` of the same calls in 32 containers, 32 at a time, for 10 s;
- warm: the burst on an environment whose warm pool holds N pre-started containers;
- cold: the burst on the default environment (every container created on demand);
- sustained: echo loops on already provisioned rollouts; single: sequential echo calls;
- memory: peak RSS of the API and worker processes (and their children) over the whole run.

The measured calls go through a minimal keep-alive HTTP/1.1 client (Conn): on a small machine
the load generator competes with the service it measures, and httpx costs ~30x its CPU per
call. Control calls (environments, releases) use httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import resource
import shlex
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx

from .bench import percentile

CALLS: list[tuple[str, dict[str, Any]]] = [
    ("shell", {"command": "echo hello"}),
    ("shell", {"command": "ls -la"}),
    ("read_file", {"path": "/etc/os-release"}),
    ("shell", {"command": "grep -r root /etc/passwd /etc/group"}),
]
RAW_EXECS = [
    ["echo", "hello"],
    ["ls", "-la"],
    ["cat", "/etc/os-release"],
    ["grep", "-r", "root", "/etc/passwd", "/etc/group"],
]
PROBE_LEVELS = (2, 4, 8, 16)
PROBE_SIZE = 30
REMOVE_CONCURRENCY = 16
EXEC_CONTAINERS = 32
EXEC_SECONDS = 10.0
SINGLE_CALLS = 300
WARM_ENV = "bench-warm"
SETTLE_TIMEOUT_S = 300.0
HTTP_TIMEOUT_S = 900.0  # longer than any server-side deadline: we record the service's answer


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


# --- raw engine baselines -------------------------------------------------------------------


def _parallel(
    fn: Callable[[Any], Any], items: Iterable[Any], concurrency: int, progress: Progress
) -> tuple[float, list, str]:
    """fn on every item, `concurrency` at once: (seconds, results, first error)."""
    results, first_error, t = [], "", time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for fut in as_completed([pool.submit(fn, x) for x in items]):
            try:
                results.append(fut.result())
                progress.tick()
            except Exception as exc:  # the engine's errors come in many types; count them all
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                progress.tick(False)
    return time.perf_counter() - t, results, first_error


def _remove(engine: docker.DockerClient, ids: list[str], progress: Progress, what: str) -> float:
    progress.begin(f"baseline: removing {len(ids)} {what} containers", len(ids))
    remove = engine.api.remove_container
    secs, _, _ = _parallel(lambda cid: remove(cid, force=True), ids, REMOVE_CONCURRENCY, progress)
    progress.end()
    return round(secs, 2)


def baselines(engine: docker.DockerClient, args: argparse.Namespace, labels: dict[str, str], p: Progress) -> dict:
    api = engine.api
    config = api.create_host_config(network_mode="none")

    def create(_: Any = None) -> str:  # what `docker run -d --network none IMAGE sleep infinity` asks the engine
        cid: str = api.create_container(args.image, ["sleep", "infinity"], labels=labels, host_config=config)["Id"]
        api.start(cid)
        return cid

    probes: dict[int, float] = {}
    for level in PROBE_LEVELS:
        p.begin(f"baseline: docker run probe, {PROBE_SIZE} containers {level} at a time", PROBE_SIZE)
        secs, ids, err = _parallel(create, range(PROBE_SIZE), level, p)
        p.end()
        probes[level] = round(len(ids) / secs, 2)
        _remove(engine, ids, p, "probe")
        if err:
            raise RuntimeError(f"docker run failed during the probe: {err}")
    best = max(probes, key=lambda level: probes[level])
    p.begin(f"baseline: docker run of {args.rollouts} containers, {best} at a time", args.rollouts)
    secs, ids, err = _parallel(create, range(args.rollouts), best, p)
    p.end()
    run = {
        "probe_containers_per_s": probes,
        "best_concurrency": best,
        "containers": args.rollouts,
        "created": len(ids),
        "errors": args.rollouts - len(ids),
        "first_error": err,
        "total_s": round(secs, 2),
        "containers_per_s": round(len(ids) / secs, 2),
    }
    try:
        extra = max(0, EXEC_CONTAINERS - len(ids))
        if extra:
            p.begin(f"baseline: {extra} more containers for the exec baseline", extra)
            ids += _parallel(create, range(extra), best, p)[1]
            p.end()
        execs = _exec_baseline(engine, ids[:EXEC_CONTAINERS], args.calls, p)
    finally:
        run["remove_s"] = _remove(engine, ids, p, "baseline")
    return {"docker_run": run, "docker_exec": execs}


def _exec_baseline(engine: docker.DockerClient, ids: list[str], k: int, p: Progress) -> dict[str, Any]:
    api, latencies, errors = engine.api, [], Counter[str]()
    p.begin(f"baseline: docker exec in {len(ids)} containers, {len(ids)} at a time, {EXEC_SECONDS:.0f} s")
    deadline = time.perf_counter() + EXEC_SECONDS

    def loop(cid: str) -> None:
        j = 0
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                eid = api.exec_create(cid, RAW_EXECS[(j % k) % len(RAW_EXECS)])["Id"]
                api.exec_start(eid)
                code = api.exec_inspect(eid)["ExitCode"]  # what `docker exec` does for its exit status
                ok, why = code == 0, f"exit {code}"
            except Exception as exc:  # counted, never raised: the rate is the measure
                ok, why = False, type(exc).__name__
            if ok:
                latencies.append(time.perf_counter() - t)
            else:
                errors.update([why])
            p.tick(ok)
            j += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(ids)) as pool:
        list(pool.map(loop, ids))
    elapsed = time.perf_counter() - t0
    p.end()
    return {
        "containers": len(ids),
        "parallel": len(ids),
        "seconds": round(elapsed, 2),
        "execs": len(latencies),
        "errors": dict(errors),
        "execs_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": stats(latencies, 1000, 1),
    }


# --- the service, over HTTP -------------------------------------------------------------------


@dataclass
class Call:
    index: int
    status: int
    outcome: str
    reason: str
    start: float
    end: float

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.outcome == "ok"


@dataclass
class Session:
    url: str
    headers: dict[str, str]
    progress: Progress
    engine: docker.DockerClient
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    live: set[str] = field(default_factory=set)  # rollouts this run holds a container for
    roots: dict[str, int] = field(default_factory=dict)  # the API and worker processes

    def client(self, connections: int) -> httpx.AsyncClient:
        n = connections + 8
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=HTTP_TIMEOUT_S, limits=limits)

    def rollout_ids(self, phase: str, n: int) -> list[str]:
        return [f"bench-{self.tag}-{phase}-{i}" for i in range(n)]


def _body(tool: str, rid: str, args: dict[str, Any], item: dict[str, Any] | None) -> dict[str, Any]:
    body = {
        "type": "function_call",
        "id": f"fc_{uuid.uuid4().hex[:8]}",
        "call_id": f"call_{uuid.uuid4().hex}",
        "name": tool,
        "arguments": json.dumps(args),
        "trace_id": rid,
    }
    return {**body, "item": item} if item is not None else body


def _answer(status: int, headers: Any, body: bytes) -> tuple[int, str, str]:
    """(HTTP status, outcome header, reason header or the JSON error code)."""
    reason = headers.get("x-sandbox-reason", "")
    if not reason and status != 200:
        try:
            reason = str(json.loads(body)["error"]["code"])
        except (ValueError, KeyError, TypeError):
            reason = "unparsable_error_body"
    return status, headers.get("x-sandbox-outcome", ""), reason


class Conn:
    """One keep-alive HTTP/1.1 connection for the measured calls. The load generator shares the
    machine with the service: httpx spends ~5 ms of CPU per call here, this ~0.2 ms."""

    def __init__(self, s: Session) -> None:
        url = httpx.URL(s.url)
        self.host, self.port = url.host, url.port or 80
        fixed = {"Host": f"{self.host}:{self.port}", "Content-Type": "application/json", **s.headers}
        self.fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self.io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        data = json.dumps(body).encode()
        request = f"POST {path} HTTP/1.1\r\n{self.fixed}Content-Length: {len(data)}\r\n\r\n".encode() + data
        try:
            async with asyncio.timeout(HTTP_TIMEOUT_S):
                head, reader = await self._send(request)
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                if "content-length" not in headers:  # uvicorn sends it with every JSON answer
                    raise ValueError(f"answer without Content-Length: {lines[0]}")
                payload = await reader.readexactly(int(headers["content-length"]))
        except BaseException:
            self.close()  # never reuse a connection with an answer half read
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(lines[0].split()[1]), headers, payload

    async def _send(self, request: bytes) -> tuple[bytes, asyncio.StreamReader]:
        """Send and read the answer's head; once more on a new connection if the server had closed an idle one
        (safe: a call_id never runs twice)."""
        reused = self.io is not None
        if self.io is None:
            self.io = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.io
        try:
            writer.write(request)
            return await reader.readuntil(b"\r\n\r\n"), reader
        except (ConnectionError, asyncio.IncompleteReadError):
            if not reused:
                raise
            self.close()
            return await self._send(request)

    def close(self) -> None:
        if self.io is not None:
            self.io[1].close()
            self.io = None


async def _post(conn: Conn, tool: str, rid: str, args: dict[str, Any], item: Any = None) -> Call:
    t = time.perf_counter()
    try:
        status, outcome, reason = _answer(*await conn.post(f"/v1/tools/{tool}", _body(tool, rid, args, item)))
    except (OSError, EOFError, TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:  # incl. IncompleteRead
        status, outcome, reason = 0, "client_error", type(exc).__name__
    return Call(0, status, outcome, reason, t, time.perf_counter())


async def _burst(s: Session, rids: list[str], k: int, item: dict[str, Any] | None) -> list[Call]:
    """All rollouts start at the same instant; each makes its k calls in sequence, whatever they answer."""
    calls: list[Call] = []
    start, waiting, t0 = asyncio.Event(), 0, 0.0

    async def rollout(rid: str) -> None:
        nonlocal waiting
        conn = Conn(s)  # its own connection, opened after the start like a trainer's first request
        waiting += 1
        await start.wait()
        for j in range(k):
            tool, args = CALLS[j % len(CALLS)]
            c = await _post(conn, tool, rid, args, item if j == 0 else None)
            c.index, c.start, c.end = j, c.start - t0, c.end - t0
            calls.append(c)
            s.progress.tick(c.ok)
            if j == 0 and c.status == 200:
                s.live.add(rid)
        conn.close()

    tasks = [asyncio.create_task(rollout(rid)) for rid in rids]
    while waiting < len(tasks):
        await asyncio.sleep(0)
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    return calls


def summarize(calls: list[Call], n: int, k: int) -> dict[str, Any]:
    first = [c for c in calls if c.index == 0]
    makespan = max((c.end for c in calls), default=0.0)
    outcomes = Counter(f"{c.status} {c.outcome or '-'} {c.reason or '-'}" for c in calls)
    errors = Counter(f"{c.status} {c.outcome or '-'} {c.reason or '-'}" for c in calls if not c.ok)
    return {
        "rollouts": n,
        "calls_per_rollout": k,
        "calls_expected": n * k,
        "calls_answered": len(calls),
        "all_accounted": len(calls) == n * k,  # every call answered once, by the service or as a client error
        "errors": sum(errors.values()),
        "errors_by_outcome": dict(errors.most_common()),
        "outcomes": dict(outcomes.most_common()),
        "ttfo_s": stats(c.end for c in first if c.ok),
        "all_provisioned_s": round(max((c.end for c in first), default=0.0), 3),
        "makespan_s": round(makespan, 3),
        "calls_per_s": round(len(calls) / makespan, 1) if makespan else 0.0,
        "call_latency_ms": stats((c.end - c.start for c in calls), 1000, 1),
    }


async def _timed_burst(s: Session, name: str, rids: list[str], k: int, item: dict[str, Any] | None) -> dict:
    s.progress.begin(f"{name} burst: {len(rids)} rollouts x {k} calls", len(rids) * k)
    mark = CpuMark(s.roots)
    calls = await _burst(s, rids, k, item)
    s.progress.end()
    return {**summarize(calls, len(rids), k), **mark.since()}


async def _release(s: Session, client: httpx.AsyncClient, rids: list[str]) -> dict[str, Any]:
    s.progress.begin(f"releasing {len(rids)} rollouts", len(rids))
    sem, failed, t = asyncio.Semaphore(64), Counter[str](), time.perf_counter()

    async def one(rid: str) -> None:
        async with sem:
            try:
                r = await client.delete(f"/v1/rollouts/{rid}")
                status, _, reason = _answer(r.status_code, r.headers, r.content)
            except httpx.HTTPError as exc:
                status, reason = 0, type(exc).__name__
        s.progress.tick(status == 200)
        if status == 200:
            s.live.discard(rid)
        else:
            failed.update([f"{status} {reason}"])

    await asyncio.gather(*(one(rid) for rid in rids))
    s.progress.end()
    return {"seconds": round(time.perf_counter() - t, 2), "errors": dict(failed)}


async def _pool_available(client: httpx.AsyncClient) -> tuple[int | None, str]:
    """Containers the warm pool of WARM_ENV holds on all hosts, or None and what the service answered."""
    r = await client.get(f"/v1/environments/{WARM_ENV}")
    pool = r.json().get("pool") if r.status_code == 200 else None
    if not isinstance(pool, dict):
        return None, f"GET /v1/environments/{WARM_ENV} answered {r.status_code} without a 'pool': {r.text[:300]}"
    return sum(int(v.get("available", 0)) for v in pool.values()), ""


async def _fill_pool(s: Session, client: httpx.AsyncClient, n: int, timeout: float) -> dict[str, Any]:
    s.progress.begin(f"warm pool filling to {n}", n)
    t = time.monotonic()
    try:
        while True:
            available, error = await _pool_available(client)
            if available is None:
                return {"error": error}
            s.progress.done = available
            if available >= n:
                return {"seconds": round(time.monotonic() - t, 1), "available": available}
            if time.monotonic() - t > timeout:
                return {"error": f"the warm pool held {available} of {n} containers after {timeout:.0f} s; gave up"}
            await asyncio.sleep(1.0)
    finally:
        s.progress.end()


async def warm_scenario(s: Session, args: argparse.Namespace) -> dict[str, Any]:
    n, path = args.rollouts, f"/v1/environments/{WARM_ENV}"
    async with s.client(64) as client:
        r = await client.put(path, json={"warm_pool_size": n})
        if r.status_code >= 400:
            return {
                "error": f'the service refused a warm pool: PUT {path} {{"warm_pool_size": {n}}} answered '
                f"{r.status_code} {r.text[:300]} (a service without warm pools refuses the field)"
            }
        result: dict[str, Any] = {"environment": WARM_ENV}
        rids: list[str] = []
        try:
            result["pool_fill"] = fill = await _fill_pool(s, client, n, args.pool_timeout)
            if "error" in fill:
                result["error"] = fill["error"]
                return result
            rids = s.rollout_ids("warm", n)
            result.update(await _timed_burst(s, "warm", rids, args.calls, {"environment": WARM_ENV}))
            result["pool_available_after_burst"] = (await _pool_available(client))[0]  # refilled meanwhile
        finally:
            reset = await client.put(path, json={"warm_pool_size": 0})
            result["pool_reset_status"] = reset.status_code
            if rids:
                result["release"] = await _release(s, client, rids)
            result["settle"] = await asyncio.to_thread(_settle, s)
            result["pool_available_after_settle"] = (await _pool_available(client))[0]  # 0 unless entries are stale
        return result


async def cold_scenario(s: Session, args: argparse.Namespace) -> dict[str, Any]:
    rids = s.rollout_ids("cold", args.rollouts)
    try:
        result = {"environment": "default", **await _timed_burst(s, "cold", rids, args.calls, None)}
    finally:
        async with s.client(64) as client:
            release = await _release(s, client, rids)
    return {**result, "release": release, "settle": await asyncio.to_thread(_settle, s)}


async def _provision(s: Session, rids: list[str]) -> list[str]:
    """First calls for the sustained and single-call phases (not measured); the rollouts that answered."""
    s.progress.begin(f"provisioning {len(rids)} rollouts for the sustained and single-call phases", len(rids))

    async def first(rid: str) -> Call:
        conn = Conn(s)
        c = await _post(conn, "shell", rid, {"command": "echo ready"})
        conn.close()
        s.progress.tick(c.ok)
        if c.status == 200:
            s.live.add(rid)
        return c

    firsts = await asyncio.gather(*(first(rid) for rid in rids))
    s.progress.end()
    return [rid for rid, c in zip(rids, firsts, strict=True) if c.ok]


async def _sustained(s: Session, args: argparse.Namespace, ready: list[str]) -> dict[str, Any]:
    s.progress.begin(f"sustained: {len(ready)} clients looping echo for {args.sustained_seconds:.0f} s")
    calls: list[Call] = []
    mark, t0 = CpuMark(s.roots), time.perf_counter()
    deadline = t0 + args.sustained_seconds

    async def loop(rid: str) -> None:
        conn = Conn(s)
        while time.perf_counter() < deadline:
            calls.append(c := await _post(conn, "shell", rid, {"command": "echo hello"}))
            s.progress.tick(c.ok)
        conn.close()

    await asyncio.gather(*(loop(rid) for rid in ready))
    elapsed = time.perf_counter() - t0
    s.progress.end()
    ok = [c for c in calls if c.ok]
    return {
        "rollouts": len(ready),
        "seconds": round(elapsed, 2),
        "calls": len(calls),
        "ok_calls": len(ok),
        "errors_by_outcome": dict(Counter(f"{c.status} {c.outcome} {c.reason}" for c in calls if not c.ok)),
        "calls_per_s": round(len(ok) / elapsed, 1),
        "latency_ms": stats((c.end - c.start for c in ok), 1000, 1),
        **mark.since(),
    }


async def _single(s: Session, rid: str) -> dict[str, Any]:
    s.progress.begin(f"single call: {SINGLE_CALLS} sequential echo calls on one rollout", SINGLE_CALLS)
    conn, calls = Conn(s), []
    for _ in range(10):  # warm the connection and the worker's threads
        await _post(conn, "shell", rid, {"command": "echo hi"})
    mark, t0 = CpuMark(s.roots), time.perf_counter()
    for _ in range(SINGLE_CALLS):
        calls.append(c := await _post(conn, "shell", rid, {"command": "echo hi"}))
        s.progress.tick(c.ok)
    elapsed = time.perf_counter() - t0
    conn.close()
    s.progress.end()
    return {
        "calls": SINGLE_CALLS,
        "seconds": round(elapsed, 2),
        "errors_by_outcome": dict(Counter(f"{c.status} {c.outcome} {c.reason}" for c in calls if not c.ok)),
        "latency_ms": stats((c.end - c.start for c in calls if c.ok), 1000, 2),
        **mark.since(),
    }


def sustained_and_single(s: Session, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Provision the rollouts, then the single-call phase on one of them (first, so that it measures a
    lone call on a quiet service), then the sustained load on all of them."""
    rids = s.rollout_ids("sus", args.sustained_rollouts)
    try:
        ready = asyncio.run(_provision(s, rids))
        if not ready:
            failed = {"error": f"none of the {len(rids)} rollouts could be provisioned"}
            return failed, failed
        single = asyncio.run(_single(s, ready[0]))
        sustained = asyncio.run(_sustained(s, args, ready))
    finally:

        async def release() -> None:
            async with s.client(64) as client:
                await _release(s, client, rids)

        asyncio.run(release())
    return {**sustained, "settle": _settle(s)}, single


# --- the run -------------------------------------------------------------------------------


def machine(engine: docker.DockerClient) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    mem_kb = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
    os_release = platform.freedesktop_os_release() if hasattr(platform, "freedesktop_os_release") else {}
    info, load = engine.info(), os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024**2, 1),
        "os": os_release.get("PRETTY_NAME", platform.platform()),
        "kernel": platform.release(),
        "docker_version": engine.version().get("Version"),
        "storage_driver": info.get("Driver"),
        "load_average_at_start": [round(x, 2) for x in load],
        "containers_running_at_start": info.get("ContainersRunning"),
    }


def _settle(s: Session) -> dict[str, Any]:
    """Wait until the service has removed the containers of this run's released rollouts and of
    the bench-warm pool (it removes them in the background), so the next phase does not compete."""
    prefix, t = f"bench-{s.tag}-", time.monotonic()
    s.progress.begin("waiting for the service to remove released containers (done = containers left)")
    try:
        while True:
            left = [
                c
                for c in s.engine.api.containers(all=True, filters={"label": "sandbox.rollout_id"})
                if (c.get("Labels") or {}).get("sandbox.rollout_id", "").startswith(prefix)
            ]
            pool = ["sandbox.role=pool", f"sandbox.environment={WARM_ENV}"]
            left += s.engine.api.containers(all=True, filters={"label": pool})
            s.progress.done = len(left)
            if not left or time.monotonic() - t > SETTLE_TIMEOUT_S:
                return {"seconds": round(time.monotonic() - t, 1), "containers_left": len(left)}
            time.sleep(1.0)
    finally:
        s.progress.end()


def _guard(phase: str, fn: Callable[[], Any]) -> Any:
    """A phase that breaks is recorded as an error and the run goes on to the next phase."""
    try:
        result = fn()
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    if isinstance(result, dict) and "error" in result:
        print(f"!! {phase}: {result['error']}", flush=True)
    return result


def _check_service(url: str, headers: dict[str, str]) -> None:
    try:
        r = httpx.get(f"{url}/v1/environments", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise SystemExit(f"no sandbox service answers at {url} ({exc}); start it with `make up`") from exc
    if r.status_code != 200:
        raise SystemExit(f"{url}/v1/environments answered {r.status_code} {r.text[:200]} (wrong token?)")


def run(args: argparse.Namespace, token: str) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # N connections at once need N descriptors
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    headers = {"Authorization": f"Bearer {token}"}
    _check_service(args.url, headers)
    engine = docker.from_env(max_pool_size=64, timeout=600)
    argv = [os.path.relpath(sys.argv[0]) if sys.argv[0].startswith(os.getcwd()) else sys.argv[0], *sys.argv[1:]]
    for i, word in enumerate(argv):  # the report is published: never the token
        if word.startswith("--token="):
            argv[i] = "--token=***"
        elif i and argv[i - 1] == "--token":
            argv[i] = "***"
    result: dict[str, Any] = {
        "command": shlex.join(argv),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "machine": machine(engine),
        "options": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("func", "token")
        },
    }
    s = Session(args.url, headers, Progress(), engine)
    labels = {"bench": "1", "bench.run": s.tag}
    sampler = MemorySampler(args.run_dir, lambda: len(s.live))
    s.roots = sampler.roots
    started = time.monotonic()
    try:
        if not args.skip_baselines:
            result["baselines"] = _guard("baselines", lambda: baselines(engine, args, labels, s.progress))
        if "warm" in args.scenarios:
            result["warm"] = _guard("warm", lambda: asyncio.run(warm_scenario(s, args)))
        if "cold" in args.scenarios:
            result["cold"] = _guard("cold", lambda: asyncio.run(cold_scenario(s, args)))
        pair = _guard("sustained", lambda: sustained_and_single(s, args))
        result["sustained"], result["single_call"] = pair if isinstance(pair, tuple) else (pair, pair)
    finally:
        for cid in (c["Id"] for c in engine.api.containers(all=True, filters={"label": f"bench.run={s.tag}"})):
            engine.api.remove_container(cid, force=True)  # whatever a broken baseline left behind
        s.progress.close()
        result["memory"] = sampler.summary()
    result["duration_s"] = round(time.monotonic() - started, 1)
    return result
