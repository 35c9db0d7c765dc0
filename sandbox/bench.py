"""Latency benchmark against a running stack: `sandbox bench latency`.

Measures what a trainer sees over HTTP, and in the same run the raw engine baselines on
this machine, so the figures can be compared fairly:
- provisioning: the first call of a new rollout (container created, guest ready, echo run);
- single call: `echo` on an existing rollout, one call at a time;
- baselines: `docker run` of one container, and `docker exec echo` in an existing one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import httpx


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "max_ms": round(max(ms), 2),
    }


def tool_call(client: httpx.Client, rollout_id: str, command: str) -> httpx.Response:
    args = json.dumps({"command": command})
    body = {"type": "function_call", "id": "fc", "call_id": uuid.uuid4().hex, "arguments": args, "trace_id": rollout_id}
    r = client.post("/v1/tools/shell", json=body)
    if r.status_code != 200:
        raise SystemExit(f"tool call failed: {r.status_code} {r.text}")
    return r


def bench_latency(args: argparse.Namespace) -> dict[str, Any]:
    token = args.token or os.environ.get("SANDBOX_API_TOKENS", "").split(",")[0]
    if not token and Path(".run/api-token").exists():
        token = Path(".run/api-token").read_text().strip()
    client = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {token}"}, timeout=300)
    engine = docker.from_env()
    tag = uuid.uuid4().hex[:6]
    rollouts = [f"bench-{tag}-{i}" for i in range(args.rollouts)]

    print(f"provisioning {len(rollouts)} rollouts one after another ...", flush=True)
    provision = []
    for rid in rollouts:
        t = time.perf_counter()
        tool_call(client, rid, "echo ready")
        provision.append(time.perf_counter() - t)

    print(f"{args.calls} sequential echo calls on an existing rollout ...", flush=True)
    for _ in range(10):  # warm the connection and the worker's threads
        tool_call(client, rollouts[0], "echo warm")
    single = []
    for i in range(args.calls):
        t = time.perf_counter()
        tool_call(client, rollouts[i % len(rollouts)], "echo hi")
        single.append(time.perf_counter() - t)

    print("baselines: raw docker run and docker exec on this engine ...", flush=True)
    raw_run = []
    for _ in range(args.rollouts):
        t = time.perf_counter()
        c = engine.containers.run(args.image, ["true"], detach=False, remove=True, network_mode="none")
        raw_run.append(time.perf_counter() - t)
        del c
    target = engine.containers.run(args.image, ["sleep", "infinity"], detach=True, network_mode="none", init=True)
    try:
        raw_exec = []
        for _ in range(min(args.calls, 100)):
            t = time.perf_counter()
            target.exec_run(["echo", "hi"])
            raw_exec.append(time.perf_counter() - t)
    finally:
        target.remove(force=True)
    for rid in rollouts:
        client.delete(f"/v1/rollouts/{rid}")

    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "engine": engine.version().get("Version")},
        "first_call_of_new_rollout": summary(provision),
        "echo_on_existing_rollout": summary(single),
        "baseline_docker_run": summary(raw_run),
        "baseline_docker_exec_echo": summary(raw_exec),
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\nmachine: {result['machine']}")
    print(f"{'measure':34} {'n':>5} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for key, row in result.items():
        if key == "machine":
            continue
        print(f"{key:34} {row['n']:>5} {row['p50_ms']:>9} {row['p95_ms']:>9} {row['p99_ms']:>9} {row['max_ms']:>9}")


def add_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmarks against a running stack")
    kinds = bench.add_subparsers(dest="kind", required=True)
    lat = kinds.add_parser("latency", help="provisioning and single-call latency, with engine baselines")
    lat.add_argument("--url", default="http://127.0.0.1:8000")
    lat.add_argument("--token", default="")
    lat.add_argument("--rollouts", type=int, default=10)
    lat.add_argument("--calls", type=int, default=300)
    lat.add_argument("--image", default="rollout-sandbox:bookworm")
    lat.add_argument("--json", type=Path, help="also write the figures to this file")
    lat.set_defaults(func=run_latency)


def run_latency(args: argparse.Namespace) -> None:
    result = bench_latency(args)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
