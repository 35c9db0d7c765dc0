"""The burst benchmark's scenarios against the service:
- warm: N new rollouts at once on an environment whose warm pool holds N pre-started containers;
- cold: the same on the default environment (every container created on demand);
- single: sequential echo calls on one rollout; sustained: echo loops on provisioned rollouts.
Each rollout of a burst makes K calls in sequence; after each phase the rollouts are released
and the run waits until the service has removed their containers, so phases do not compete.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from typing import Any

import httpx

from tools.burst_http import Call, Conn, Session, parse_answer, post_call
from tools.burst_measure import CpuMark, stats

CALLS: list[tuple[str, dict[str, Any]]] = [
    ("shell", {"command": "echo hello"}),
    ("shell", {"command": "ls -la"}),
    ("read_file", {"path": "/etc/os-release"}),
    ("shell", {"command": "grep -r root /etc/passwd /etc/group"}),
]
SINGLE_CALLS = 300
WARM_ENV = "bench-warm"
SETTLE_TIMEOUT_S = 300.0


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
            c = await post_call(conn, tool, rid, args, item if j == 0 else None)
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


async def release_rollouts(s: Session, client: httpx.AsyncClient, rids: list[str]) -> dict[str, Any]:
    s.progress.begin(f"releasing {len(rids)} rollouts", len(rids))
    sem, failed, t = asyncio.Semaphore(64), Counter[str](), time.perf_counter()

    async def one(rid: str) -> None:
        async with sem:
            try:
                r = await client.delete(f"/v1/rollouts/{rid}")
                status, _, reason = parse_answer(r.status_code, r.headers, r.content)
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
                result["release"] = await release_rollouts(s, client, rids)
            result["settle"] = await asyncio.to_thread(settle, s)
            result["pool_available_after_settle"] = (await _pool_available(client))[0]  # 0 unless entries are stale
        return result


async def cold_scenario(s: Session, args: argparse.Namespace) -> dict[str, Any]:
    rids = s.rollout_ids("cold", args.rollouts)
    try:
        result = {"environment": "default", **await _timed_burst(s, "cold", rids, args.calls, None)}
    finally:
        async with s.client(64) as client:
            release = await release_rollouts(s, client, rids)
    return {**result, "release": release, "settle": await asyncio.to_thread(settle, s)}


async def _provision(s: Session, rids: list[str]) -> list[str]:
    """First calls for the sustained and single-call phases (not measured); the rollouts that answered."""
    s.progress.begin(f"provisioning {len(rids)} rollouts for the sustained and single-call phases", len(rids))

    async def first(rid: str) -> Call:
        conn = Conn(s)
        c = await post_call(conn, "shell", rid, {"command": "echo ready"})
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
            calls.append(c := await post_call(conn, "shell", rid, {"command": "echo hello"}))
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
        await post_call(conn, "shell", rid, {"command": "echo hi"})
    mark, t0 = CpuMark(s.roots), time.perf_counter()
    for _ in range(SINGLE_CALLS):
        calls.append(c := await post_call(conn, "shell", rid, {"command": "echo hi"}))
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
                await release_rollouts(s, client, rids)

        asyncio.run(release())
    return {**sustained, "settle": settle(s)}, single


def settle(s: Session) -> dict[str, Any]:
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
