"""One sandbox host against two, in the same run, and what a host stop does to live rollouts.

`python -m tools.bench_hosts [--rollouts N]` (or `make bench-hosts`) builds the same stack
as the two-host integration test (a private Redis, the API, host A on this machine's
engine with beat, host B on a dockerd of its own) and measures:

1. one host: N new rollouts at once (each: first call `echo`, then 3 more calls);
   rollouts/s is N over the time until the last first call answered, calls/s over all calls;
2. two hosts: the same with host B's worker added, and how many rollouts each host took;
3. a host stop: N rollouts calling in a loop over both hosts, host B's engine stopped;
   every answer is counted by status and code, and the time until every rollout of B is
   ended (lost) is measured. Redis commands per tool call and Redis CPU are read from
   INFO, to show how far the store is from being the bottleneck.

Prints a table and writes docs/scaling.json. Needs what `make deps` installs; run as root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from tests.stack import ROOT, TEST_LABEL, DockerEngine, Stack, answer_code, free_port, two_engine_stack, wait_until

LOGS = Path("/tmp/bench-hosts-logs")
CALLS = ["echo first", "ls -la", "grep -c root /etc/passwd", "cat /etc/os-release"]


def redis_counters(url: str) -> tuple[int, float]:
    info = redis.Redis.from_url(url).info()
    return int(info["total_commands_processed"]), float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_per_call(stack: Stack, commands0: int, cpu0: float, calls: int, digits: int) -> dict[str, float]:
    """Redis commands and CPU (ms) per call since the counters read as (commands0, cpu0)."""
    commands1, cpu1 = redis_counters(stack.redis_url)
    return {
        "redis_commands_per_call": round((commands1 - commands0) / max(calls, 1), 1),
        "redis_cpu_ms_per_call": round((cpu1 - cpu0) * 1000 / max(calls, 1), digits),
    }


def host_of(stack: Stack, rid: str) -> str:
    return str(stack.http.get(f"/v1/rollouts/{rid}").json().get("host"))


def burst(stack: Stack, n: int, tag: str) -> dict[str, Any]:
    """N rollouts at once, each making len(CALLS) calls in sequence."""
    rids = [f"bh-{tag}-{i}" for i in range(n)]
    first_done: list[float] = []
    codes: Counter[str] = Counter()
    lock = threading.Lock()
    commands0, cpu0 = redis_counters(stack.redis_url)
    start = time.monotonic()

    def one(rid: str) -> None:
        for i, command in enumerate(CALLS):
            r = stack.shell(rid, command)
            with lock:
                codes[answer_code(r)] += 1
                if i == 0:
                    first_done.append(time.monotonic() - start)
            if r.status_code != 200:
                return

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, rids))
    makespan = time.monotonic() - start
    calls = sum(codes.values())
    redis_cost = redis_per_call(stack, commands0, cpu0, calls, digits=2)
    per_host = Counter(host_of(stack, rid) for rid in rids)
    settle(stack, rids)
    provisioned_s = max(first_done)
    return {
        "rollouts": n,
        "all_first_calls_answered_s": round(provisioned_s, 2),
        "rollouts_per_s": round(n / provisioned_s, 2),
        "makespan_s": round(makespan, 2),
        "calls_per_s": round(calls / makespan, 1),
        "answers": dict(codes),
        "rollouts_per_host": dict(per_host),
        **redis_cost,
    }


def sustained(stack: Stack, clients: int, seconds: float, tag: str) -> dict[str, Any]:
    """`clients` provisioned rollouts each calling `echo` in a loop: the steady state's cost.

    Redis commands and CPU per call here are the store's share of a tool call, without the
    provisioning waits of a burst; they say how many calls/s one Redis carries.
    """
    rids = [f"bh-{tag}-sus-{i}" for i in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda rid: stack.shell(rid, "echo warm"), rids))
    done = Counter[str]()
    lock = threading.Lock()
    commands0, cpu0 = redis_counters(stack.redis_url)
    end = time.monotonic() + seconds
    start = time.monotonic()

    def loop(rid: str) -> None:
        while time.monotonic() < end:
            r = stack.shell(rid, "echo tick")
            with lock:
                done[answer_code(r)] += 1

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(loop, rids))
    took = time.monotonic() - start
    calls = sum(done.values())
    redis_cost = redis_per_call(stack, commands0, cpu0, calls, digits=3)
    per_host = Counter(host_of(stack, rid) for rid in rids)
    settle(stack, rids)
    return {
        "clients": clients,
        "calls_per_s": round(calls / took, 1),
        "answers": dict(done),
        "rollouts_per_host": dict(per_host),
        **redis_cost,
    }


def settle(stack: Stack, rids: list[str]) -> None:
    """Release the phase's rollouts and wait until their containers are gone, so that their
    removal does not eat into the next phase's CPU."""
    for rid in rids:
        stack.http.delete(f"/v1/rollouts/{rid}")
    gauge = "sandbox_live_sandboxes"
    wait_until(lambda: sum(stack.metric(gauge, {"state": s, "host": h}) for s in ("ready", "provisioning")
                           for h in ("host-a", "host-b", "unplaced")) == 0, timeout_s=300)  # fmt: skip
    mine = {"label": f"{TEST_LABEL}={stack.session}"}
    wait_until(lambda: not stack.docker.containers.list(sparse=True, filters=mine), timeout_s=300)
    time.sleep(5.0)  # host B's engine removes its own; give it the same quiet


def host_stop(stack: Stack, engine_b: DockerEngine, n: int, tag: str) -> dict[str, Any]:
    """N rollouts calling in a loop over both hosts; host B's engine stops under them."""
    rids = [f"bh-{tag}-stop-{i}" for i in range(n)]
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda rid: stack.shell(rid, "echo first"), rids))
    placed = {rid: host_of(stack, rid) for rid in rids}  # "None": its first call failed
    on_b = [rid for rid, host in placed.items() if host == "host-b"]
    answers: dict[str, Counter[str]] = {host: Counter() for host in set(placed.values())}
    lock = threading.Lock()
    stop = threading.Event()

    def loop(rid: str) -> None:
        host = placed[rid]
        while not stop.is_set():
            r = stack.shell(rid, "echo tick")
            with lock:
                answers[host][answer_code(r)] += 1
            if r.status_code != 200:
                return  # a trainer discards the rollout after an infra failure

    threads = [threading.Thread(target=loop, args=(rid,)) for rid in rids]
    for t in threads:
        t.start()
    time.sleep(3.0)
    stopped = time.monotonic()
    engine_b.stop()
    stop_took = time.monotonic() - stopped

    def all_lost() -> bool:
        return all(stack.http.get(f"/v1/rollouts/{rid}").json()["state"] == "lost" for rid in on_b)

    wait_until(all_lost, timeout_s=120, interval_s=0.2)
    all_lost_s = time.monotonic() - stopped
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    return {
        "rollouts": n,
        "on_host_b": len(on_b),
        "engine_stop_took_s": round(stop_took, 2),
        "all_of_b_ended_lost_after_s": round(all_lost_s, 2),
        "answers_by_host_at_start": {host: dict(counts) for host, counts in answers.items()},
    }


def measure(stack: Stack, engine_b: DockerEngine, n: int, result: dict[str, Any]) -> None:
    tag = uuid.uuid4().hex[:6]
    print(f"one host: {n} rollouts x {len(CALLS)} calls ...", flush=True)
    result["one_host"] = burst(stack, n, f"{tag}-one")
    print(json.dumps(result["one_host"]), flush=True)
    result["one_host"]["sustained"] = sustained(stack, 32, 15.0, f"{tag}-one")
    print(json.dumps(result["one_host"]["sustained"]), flush=True)
    stack.start_host("host-b", engine_b.sock, free_port())
    wait_until(lambda: stack.http.get("/readyz").json()["checks"]["hosts"].get("host-b", {}).get("status") == "up")
    print(f"two hosts: {n} rollouts x {len(CALLS)} calls ...", flush=True)
    result["two_hosts"] = burst(stack, n, f"{tag}-two")
    print(json.dumps(result["two_hosts"]), flush=True)
    result["two_hosts"]["sustained"] = sustained(stack, 32, 15.0, f"{tag}-two")
    print(json.dumps(result["two_hosts"]["sustained"]), flush=True)
    print("host B's engine stopped under live rollouts ...", flush=True)
    result["host_stop"] = host_stop(stack, engine_b, n, tag)
    print(json.dumps(result["host_stop"]), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_hosts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=60)
    parser.add_argument("--out", default=str(ROOT / "docs" / "scaling.json"))
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"cores": os.cpu_count(), "rollouts": args.rollouts}
    with two_engine_stack(SANDBOX_WORKER_CONCURRENCY="128") as (stack, engine_b):
        try:
            measure(stack, engine_b, args.rollouts, result)
        finally:
            shutil.rmtree(LOGS, ignore_errors=True)
            shutil.copytree(stack.logs, LOGS)  # the API's and workers' logs outlive the stack
    one, two = result["one_host"], result["two_hosts"]
    result["two_vs_one_rollouts_per_s"] = round(two["rollouts_per_s"] / one["rollouts_per_s"], 2)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("\n| measure | one host | two hosts |\n|---|---|---|")
    for key in ("rollouts_per_s", "all_first_calls_answered_s", "calls_per_s", "makespan_s", "redis_cpu_ms_per_call"):
        print(f"| {key} | {one[key]} | {two[key]} |")
    print(f"| rollouts per host | {one['rollouts_per_host']} | {two['rollouts_per_host']} |")
    for key in ("calls_per_s", "redis_commands_per_call", "redis_cpu_ms_per_call"):
        print(f"| sustained {key} | {one['sustained'][key]} | {two['sustained'][key]} |")
    print(f"\ntwo hosts vs one: {result['two_vs_one_rollouts_per_s']}x rollouts/s; written to {args.out}")


if __name__ == "__main__":
    main()
