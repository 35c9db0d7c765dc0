"""`python -m tools.soak`: faults under load, checked call by call (a benchmark, not in CI).

N rollouts call in a loop (httpx.AsyncClient, as trainers do) against the `make up` stack
while the drills of tools/chaos.py run one after another: a container removed, the worker
killed and restarted, Redis stopped and started, the Docker engine stopped and started.
A rollout whose answer says it is gone (5xx sandbox_lost, 409 released, a tainted one) is
discarded and a new one takes its place, as a trainer would. Afterwards, with the stack
healthy again, it checks:

1. every call was answered (no client timeout, no dropped connection);
2. every answer is a 200 (ok or the model's error) or a 5xx with an infrastructure reason,
   nothing else;
3. each rollout's trajectory holds exactly the calls the client saw answered 200, once each,
   with the same outcome; a call the client saw fail but the trajectory holds as run (the
   store went away between the run and the answer) must be what a retry of that call id gets
   back: the first answer, not a second run;
4. no container is left behind once every rollout is released;
5. the API's sandbox_tool_calls_total grew by exactly the client's counts, per outcome.

Writes docs/soak.json and prints a table; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx

from tools.bench_common import api_token

ROOT = Path(__file__).resolve().parent.parent
INFRA_CODES = {
    "provision_failed",
    "engine_unavailable",
    "sandbox_lost",
    "host_unavailable",
    "host_full",
    "queue_timeout",
    "worker_lost",
    "store_unavailable",
    "internal",
    "rollout_infra_tainted",
}
GONE_CODES = {"sandbox_lost", "rollout_released", "rollout_infra_tainted"}  # discard the rollout
DRILLS = {
    "remove-container": ["remove-container"],
    "kill-worker": ["kill-worker", "--restart-after", "3"],
    "redis-outage": ["redis-outage", "--seconds", "5"],
    "engine-restart": ["engine-restart", "--seconds", "5"],
}


@dataclass
class Answer:
    rollout_id: str
    call_id: str
    status: int  # 0: no answer (timeout, connection dropped)
    kind: str  # ok, model_error, infra:<code>, unanswered, other:<status>:<code>
    seconds: float


@dataclass
class Soak:
    url: str
    token: str
    answers: list[Answer] = field(default_factory=list)
    rollouts: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    recovered_by_retry: int = 0  # answered 5xx, ran and recorded; a retry returned the stored answer

    async def loop(self, client: httpx.AsyncClient, slot: int) -> None:
        rid = self._new_rollout(slot)
        n = 0
        while not self.stop.is_set():
            n += 1
            call_id = f"soak-{slot}-{n}-{uuid.uuid4().hex[:6]}"
            answer = await self._call(client, rid, call_id, f"echo {n}; ls / | head -3")
            self.answers.append(answer)
            code = answer.kind.split(":")[-1]
            if answer.status != 200 and code in GONE_CODES:
                rid = self._new_rollout(slot)  # the trainer discards it and goes on with another
            elif answer.status != 200:
                await asyncio.sleep(0.5)  # an outage: back off a little, as a trainer's retry would

    def _new_rollout(self, slot: int) -> str:
        rid = f"soak-{slot}-{uuid.uuid4().hex[:8]}"
        self.rollouts.append(rid)
        return rid

    async def _call(self, client: httpx.AsyncClient, rid: str, call_id: str, command: str) -> Answer:
        body = {
            "type": "function_call",
            "id": f"fc_{call_id}",
            "call_id": call_id,
            "name": "shell",
            "arguments": json.dumps({"command": command}),
            "trace_id": rid,
        }
        started = time.perf_counter()
        try:
            r = await client.post("/v1/tools/shell", json=body)
        except httpx.HTTPError as exc:
            return Answer(rid, call_id, 0, f"unanswered:{type(exc).__name__}", time.perf_counter() - started)
        elapsed = time.perf_counter() - started
        if r.status_code == 200:
            return Answer(rid, call_id, 200, r.headers.get("X-Sandbox-Outcome", "?"), elapsed)
        try:
            code = r.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = "?"
        if r.status_code >= 500 and code in INFRA_CODES:
            return Answer(rid, call_id, r.status_code, f"infra:{code}", elapsed)
        return Answer(rid, call_id, r.status_code, f"other:{r.status_code}:{code}", elapsed)


def tool_call_counts(client: httpx.Client) -> Counter[str]:
    """sandbox_tool_calls_total by outcome, from the API's /metrics."""
    counts: Counter[str] = Counter()
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("sandbox_tool_calls_total{") and 'tool="shell"' in line:
            outcome = line.split('outcome="')[1].split('"')[0]
            counts[outcome] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def run_drills(names: list[str], interval_s: float, stop: asyncio.Event, log: list[dict[str, Any]]) -> None:
    """Each drill in turn, `interval_s` apart (a thread: the drills block)."""
    for name in names:
        time.sleep(interval_s)
        if stop.is_set():
            return
        started = time.time()
        done = subprocess.run(
            [sys.executable, "-m", "tools.chaos", *DRILLS[name]], cwd=ROOT, capture_output=True, text=True
        )
        log.append({"drill": name, "at": round(started, 1), "rc": done.returncode, "said": done.stdout.strip()[-300:]})
        print(f"  drill {name}: rc {done.returncode} {done.stdout.strip().splitlines()[-1:]}", flush=True)


async def load(soak: Soak, n: int, seconds: float, drills: list[str], interval_s: float) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {soak.token}"}
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    drill_log: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=soak.url, headers=headers, timeout=240, limits=limits) as client:
        loops = [asyncio.create_task(soak.loop(client, i)) for i in range(n)]
        drilling = asyncio.create_task(asyncio.to_thread(run_drills, drills, interval_s, soak.stop, drill_log))
        await asyncio.sleep(seconds)
        soak.stop.set()
        await asyncio.gather(*loops)
        await drilling
    return drill_log


def wait_ready(client: httpx.Client, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("the stack did not become ready again after the drills")


def check_trajectories(client: httpx.Client, soak: Soak) -> list[str]:
    problems = []
    by_rollout: dict[str, list[Answer]] = {}
    for a in soak.answers:
        by_rollout.setdefault(a.rollout_id, []).append(a)
    for rid, answers in by_rollout.items():
        r = client.get(f"/v1/rollouts/{rid}/trajectory")
        if r.status_code != 200:
            if any(a.status == 200 for a in answers):
                problems.append(f"{rid}: trajectory answered {r.status_code} but the client saw calls answered")
            continue
        recorded = Counter((c["call_id"], c["outcome"]) for c in r.json()["calls"])
        for a in answers:
            ok_entries = recorded[(a.call_id, "ok")] + recorded[(a.call_id, "model_error")]
            if a.status == 200 and (ok_entries != 1 or recorded[(a.call_id, a.kind)] != 1):
                problems.append(f"{rid}/{a.call_id}: answered {a.kind}, recorded {ok_entries} time(s) as such")
            if a.status != 200 and ok_entries:
                recorded_as = "ok" if recorded[(a.call_id, "ok")] else "model_error"
                retry = retry_answer(client, rid, a.call_id)
                soak.recovered_by_retry += 1
                if retry != recorded_as:
                    problems.append(
                        f"{rid}/{a.call_id}: answered {a.kind}, recorded {recorded_as}, a retry got {retry}"
                    )
    return problems


def retry_answer(client: httpx.Client, rid: str, call_id: str) -> str:
    """What the platform's retry of a call gets: the stored answer's outcome (never a second run)."""
    body = {
        "type": "function_call",
        "id": f"fc_{call_id}",
        "call_id": call_id,
        "name": "shell",
        "arguments": json.dumps({"command": "echo this-must-not-run"}),
        "trace_id": rid,
    }
    r = client.post("/v1/tools/shell", json=body)
    if r.status_code != 200 or "this-must-not-run" in r.text:
        return f"{r.status_code} {r.text[:120]}"
    return r.headers.get("X-Sandbox-Outcome", "?")


def leaked_containers(client: httpx.Client, soak: Soak, engine: docker.DockerClient) -> list[str]:
    for rid in set(soak.rollouts):
        client.delete(f"/v1/rollouts/{rid}")
    deadline = time.monotonic() + 120
    leaked: list[str] = []
    while time.monotonic() < deadline:
        names = {rid for rid in soak.rollouts}
        # The low-level listing: the high-level one inspects each container, and one removed
        # meanwhile (the reaper at work) would fail it.
        leaked = [
            c["Names"][0]
            for c in engine.api.containers(all=True, filters={"label": "sandbox.rollout_id"})
            if c["Labels"].get("sandbox.rollout_id") in names
        ]
        if not leaked:
            return []
        time.sleep(2)
    return leaked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", default="")
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--drills", default=",".join(DRILLS), help=f"comma-separated, in order, of {list(DRILLS)}")
    parser.add_argument("--interval", type=float, default=40, help="seconds between drills")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "soak.json")
    args = parser.parse_args(argv)
    drills = [d for d in args.drills.split(",") if d]
    token = api_token(args)
    client = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    wait_ready(client)
    before = tool_call_counts(client)
    soak = Soak(args.url, token)
    print(f"soak: {args.rollouts} rollouts calling for {args.seconds:g} s; drills {drills}, {args.interval:g} s apart")
    drill_log = asyncio.run(load(soak, args.rollouts, args.seconds, drills, args.interval))
    wait_ready(client)
    time.sleep(2)  # the last answers' metrics are counted before they are sent; let them land
    after = tool_call_counts(client)
    kinds = Counter(a.kind for a in soak.answers)
    client_outcomes = Counter(
        "infra_error" if a.kind.startswith("infra:") else a.kind
        for a in soak.answers
        if a.status in (200, 500, 502, 503)
    )
    metric_delta = {k: after[k] - before[k] for k in set(after) | set(before) if after[k] - before[k]}
    checks = {
        "every call answered": [f"{a.rollout_id}/{a.call_id}: {a.kind}" for a in soak.answers if a.status == 0],
        "every answer classified": [
            f"{a.rollout_id}/{a.call_id}: {a.kind}" for a in soak.answers if a.kind.startswith("other:")
        ],
        "trajectories hold exactly the answered calls": check_trajectories(client, soak),
        "no container leaked": leaked_containers(client, soak, docker.from_env()),
        "metrics equal the client's counts": (
            []
            if metric_delta == dict(client_outcomes)
            else [f"metrics {metric_delta} != client {dict(client_outcomes)}"]
        ),
    }
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "rollouts_at_once": args.rollouts,
        "seconds": args.seconds,
        "rollouts_used": len(set(soak.rollouts)),
        "calls": len(soak.answers),
        "answers": dict(kinds),
        "p50_s": round(sorted(a.seconds for a in soak.answers)[len(soak.answers) // 2], 3) if soak.answers else None,
        "max_s": round(max((a.seconds for a in soak.answers), default=0), 2),
        "answered_5xx_but_ran_and_retry_returned_it": soak.recovered_by_retry,
        "drills": drill_log,
        "checks": {name: {"ok": not found, "problems": found[:20]} for name, found in checks.items()},
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['calls']} calls on {report['rollouts_used']} rollouts; answers: {dict(kinds)}")
    print(f"latency p50 {report['p50_s']} s, max {report['max_s']} s")
    for name, found in checks.items():
        print(f"  {'ok  ' if not found else 'FAIL'} {name}" + (f": {found[:3]}" if found else ""))
    print(f"wrote {args.json}")
    return 0 if all(not found for found in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
