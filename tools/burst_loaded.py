"""The burst benchmark's loaded phases: what a trainer sees during a training step, when most of
its rollouts wait on the model and a few make calls.

1. Idle cost: the machine's CPU for `--idle-seconds` on the host without sandboxes, split by
   process group (burst_cpu.py).
2. `--live` rollouts provisioned the way a trainer does it (`POST /v1/rollouts`), then the idle
   cost again with all of them live and idle, and their guests' resident memory.
3. Single call: sequential `echo` calls on one live rollout through one keep-alive client, with
   httpx (the client Python trainers use) and with the lean client of the other phases.
4. Sustained: `--sustained-rollouts` live rollouts, each looped on by its own client with
   `ls / | head -5; echo k`, through one httpx.AsyncClient (its pool as large as the clients),
   then the same with the lean client, each with the machine's CPU per call split by group.
5. Raw `docker exec` of the same command beside the same live rollouts (burst_baselines.py).
The live rollouts are released at the end, and the run waits until their containers are gone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from tools.burst_baselines import loaded_exec_baseline
from tools.burst_cpu import Snapshot, cpu_split, pid_files, sandbox_memory, snapshot
from tools.burst_http import Call, Conn, Session, parse_answer, post_call, tool_body
from tools.burst_measure import stats
from tools.burst_scenarios import SINGLE_CALLS, release_rollouts, settle

COMMAND = "ls / | head -5; echo k"
SINGLE_COMMAND = "echo hi"
PROVISION_BATCH = 100
POLL_CONCURRENCY = 8
POLL_BATCH = 40
QUIET_S = 5.0  # after the last rollout is ready, before the idle sample: provisioning's tail settles
Caller = Callable[[str, str], Awaitable[Call]]  # (rollout id, command) -> the call as answered


def loaded_scenario(s: Session, args: argparse.Namespace, labels: dict[str, str]) -> dict[str, Any]:
    return asyncio.run(_loaded(s, args, labels))


async def _loaded(s: Session, args: argparse.Namespace, labels: dict[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "command": COMMAND,
    }
    roots = {
        **s.roots,
        **pid_files(args.run_dir),
    }  # API, worker; this stack's dockerd and Redis if make up started them
    result["idle_empty"] = await _phase(s, "idle, no sandboxes", lambda: _idle(s, args, roots, set()))
    rids = s.rollout_ids("live", args.live)
    async with s.client(max(64, args.sustained_rollouts)) as control:
        try:
            result["provision"] = prov = await _provision(s, control, rids, args.pool_timeout)
            ready: list[str] = prov.pop("ready_ids", [])
            if len(ready) < max(2, min(args.live, args.sustained_rollouts)):
                result["error"] = f"only {len(ready)} of {len(rids)} rollouts got ready: {prov.get('error', '')}"
                return result
            result["live"] = len(ready)
            await asyncio.sleep(QUIET_S)
            containers = _containers(s, set(ready))
            result["idle_live"] = await _phase(s, f"idle, {len(ready)} live", lambda: _idle(s, args, roots, containers))
            result["guest_memory"] = sandbox_memory(containers, s.roots)
            clients = ready[: args.sustained_rollouts]
            async with s.client(len(clients)) as client:  # the trainer's one client, its pool for all
                on_httpx = _httpx_caller(client)
                result["single_httpx"] = await _phase(s, "single httpx", lambda: _single(s, roots, ready[0], on_httpx))
                result["sustained_httpx"] = await _phase(
                    s,
                    "sustained httpx",
                    lambda: _sustained(s, args, roots, clients, [on_httpx] * len(clients), "httpx"),
                )
            conns = [Conn(s) for _ in clients]
            try:
                result["single_lean"] = await _phase(
                    s, "single lean", lambda: _single(s, roots, ready[1], _lean(conns[0]))
                )
                result["sustained_lean"] = await _phase(
                    s,
                    "sustained lean",
                    lambda: _sustained(s, args, roots, clients, [_lean(c) for c in conns], "lean client"),
                )
            finally:
                for conn in conns:
                    conn.close()
            command = ["bash", "-c", COMMAND]  # what the guest runs for a shell call
            result["raw_docker_exec"] = await _phase(
                s,
                "raw docker exec",
                lambda: asyncio.to_thread(
                    loaded_exec_baseline,
                    s.engine,
                    args.image,
                    labels,
                    command,
                    len(clients),
                    args.sustained_seconds,
                    roots,
                    s.progress,
                ),
            )
        finally:
            result["release"] = await release_rollouts(s, control, rids)
            result["settle"] = await asyncio.to_thread(settle, s)
    return result


async def _phase(s: Session, name: str, fn: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """A sub-phase that breaks is recorded as an error; the others still run (and the release)."""
    try:
        return await fn()
    except Exception as exc:
        s.progress.end()
        print(f"!! loaded, {name}: {type(exc).__name__}: {exc}", flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"}


def _split(s: Session, roots: dict[str, int], before: Snapshot, calls: int) -> dict[str, Any]:
    """CPU since `before`, by group; the containers of other engines on the machine count as `other`."""
    after = snapshot()
    ours = {c["Id"] for c in s.engine.api.containers()}
    return cpu_split(before, after, roots, calls, ours)


def _containers(s: Session, rids: set[str]) -> set[str]:
    """Ids of the containers of these rollouts (by the service's rollout label)."""
    found = s.engine.api.containers(filters={"label": "sandbox.rollout_id"})
    return {c["Id"] for c in found if (c.get("Labels") or {}).get("sandbox.rollout_id") in rids}


async def _idle(s: Session, args: argparse.Namespace, roots: dict[str, int], containers: set[str]) -> dict[str, Any]:
    s.progress.begin(f"idle: machine CPU for {args.idle_seconds:.0f} s with {len(containers)} live sandboxes")
    running = s.engine.info().get("ContainersRunning")
    before = snapshot()
    await asyncio.sleep(args.idle_seconds)
    split = _split(s, roots, before, 0)
    s.progress.end()
    return {"sandboxes": len(containers), "containers_running": running, **split}


async def _provision(s: Session, client: httpx.AsyncClient, rids: list[str], timeout: float) -> dict[str, Any]:
    """POST /v1/rollouts in batches, then poll each rollout until it is ready (or failed)."""
    s.progress.begin(f"provisioning {len(rids)} live rollouts (POST /v1/rollouts)", len(rids))
    t0 = time.monotonic()
    try:
        for i in range(0, len(rids), PROVISION_BATCH):
            batch = [{"rollout_id": rid} for rid in rids[i : i + PROVISION_BATCH]]
            r = await client.post("/v1/rollouts", json={"rollouts": batch})
            if r.status_code != 202:
                return {"error": f"POST /v1/rollouts answered {r.status_code} {r.text[:300]}", "ready_ids": []}
            s.live.update(x["rollout_id"] for x in batch)
        queued_s = time.monotonic() - t0
        states: dict[str, str] = {}
        sem = asyncio.Semaphore(POLL_CONCURRENCY)

        async def poll(rid: str) -> None:
            async with sem:
                r = await client.get(f"/v1/rollouts/{rid}")
            states[rid] = r.json().get("state", f"http {r.status_code}") if r.status_code == 200 else str(r.status_code)

        pending = list(rids)
        while pending and time.monotonic() - t0 < timeout:
            # the first POLL_BATCH still pending (they get ready about in order): GETs of all would load the API
            await asyncio.gather(*(poll(rid) for rid in pending[:POLL_BATCH]))
            pending = [rid for rid in pending if states.get(rid, "pending") in ("pending", "provisioning")]
            s.progress.done = len(rids) - len(pending)
            if pending:
                await asyncio.sleep(1.0)
        ready = [rid for rid in rids if states.get(rid) == "ready"]
        out = {
            "rollouts": len(rids),
            "queued_s": round(queued_s, 2),
            "all_settled_s": round(time.monotonic() - t0, 1),
            "ready": len(ready),
            "states": dict(Counter(states.values())),
            "ready_ids": ready,
        }
        if pending:
            out["error"] = f"{len(pending)} rollouts still provisioning after {timeout:.0f} s"
        return out
    finally:
        s.progress.end()


def _ok(status: int, outcome: str) -> bool:
    return status == 200 and outcome == "ok"


def _httpx_caller(client: httpx.AsyncClient) -> Caller:
    async def call(rid: str, command: str) -> Call:
        t = time.perf_counter()
        try:
            r = await client.post("/v1/tools/shell", json=tool_body("shell", rid, {"command": command}, None))
            status, outcome, reason = parse_answer(r.status_code, r.headers, r.content)
            if _ok(status, outcome):
                r.json()  # what a trainer does with the answer
        except httpx.HTTPError as exc:
            status, outcome, reason = 0, "client_error", type(exc).__name__
        return Call(0, status, outcome, reason, t, time.perf_counter())

    return call


def _lean(conn: Conn) -> Caller:
    """A caller over one keep-alive connection of the lean client (burst_http.Conn)."""

    async def call(rid: str, command: str) -> Call:
        return await post_call(conn, "shell", rid, {"command": command})

    return call


def _calls_summary(calls: list[Call], elapsed: float) -> dict[str, Any]:
    ok = [c for c in calls if c.ok]
    return {
        "seconds": round(elapsed, 2),
        "calls": len(calls),
        "ok_calls": len(ok),
        "errors_by_outcome": dict(Counter(f"{c.status} {c.outcome} {c.reason}" for c in calls if not c.ok)),
        "calls_per_s": round(len(ok) / elapsed, 1) if elapsed else 0.0,
        "latency_ms": stats((c.end - c.start for c in ok), 1000, 2),
    }


async def _single(s: Session, roots: dict[str, int], rid: str, call: Caller) -> dict[str, Any]:
    s.progress.begin(f"loaded single call: {SINGLE_CALLS} sequential `{SINGLE_COMMAND}` on one rollout", SINGLE_CALLS)
    for _ in range(10):  # the connection and the rollout's first calls, not counted
        await call(rid, SINGLE_COMMAND)
    calls, before, t0 = [], snapshot(), time.perf_counter()
    for _ in range(SINGLE_CALLS):
        calls.append(c := await call(rid, SINGLE_COMMAND))
        s.progress.tick(c.ok)
    elapsed = time.perf_counter() - t0
    s.progress.end()
    summary = _calls_summary(calls, elapsed)
    return {"command": SINGLE_COMMAND, **summary, "cpu": _split(s, roots, before, summary["ok_calls"])}


async def _sustained(
    s: Session,
    args: argparse.Namespace,
    roots: dict[str, int],
    rids: list[str],
    callers: list[Caller],
    client: str,
) -> dict[str, Any]:
    """Each rollout looped on by a task of its own, through its caller."""
    await asyncio.gather(*(c(rid, COMMAND) for c, rid in zip(callers, rids, strict=True)))  # not counted
    s.progress.begin(f"loaded sustained, {client}: {len(rids)} clients looping for {args.sustained_seconds:.0f} s")
    calls: list[Call] = []
    before, t0 = snapshot(), time.perf_counter()
    deadline = t0 + args.sustained_seconds

    async def loop(call: Caller, rid: str) -> None:
        while time.perf_counter() < deadline:
            calls.append(c := await call(rid, COMMAND))
            s.progress.tick(c.ok)

    await asyncio.gather(*(loop(c, rid) for c, rid in zip(callers, rids, strict=True)))
    elapsed = time.perf_counter() - t0
    cpu = _split(s, roots, before, len([c for c in calls if c.ok]))
    s.progress.end()
    summary = _calls_summary(calls, elapsed)
    return {
        "client": client,
        "clients": len(rids),
        "command": COMMAND,
        **summary,
        "cpu": cpu,
    }
