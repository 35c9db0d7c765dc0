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


def tool_call(
    client: httpx.Client, rollout_id: str, command: str, item: dict[str, Any] | None = None
) -> httpx.Response:
    args = json.dumps({"command": command})
    body: dict[str, Any] = {
        "type": "function_call",
        "id": "fc",
        "call_id": uuid.uuid4().hex,
        "arguments": args,
        "trace_id": rollout_id,
    }
    if item is not None:
        body["item"] = item
    r = client.post("/v1/tools/shell", json=body)
    if r.status_code != 200:
        raise SystemExit(f"tool call failed: {r.status_code} {r.text}")
    return r


def bench_latency(args: argparse.Namespace) -> dict[str, Any]:
    client = _client(args)
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
        "machine": _machine(engine),
        "first_call_of_new_rollout": summary(provision),
        "echo_on_existing_rollout": summary(single),
        "baseline_docker_run": summary(raw_run),
        "baseline_docker_exec_echo": summary(raw_exec),
    }


def bench_environment(args: argparse.Namespace) -> dict[str, Any]:
    client = _client(args)
    engine = docker.from_env()
    name = f"bench-env-{uuid.uuid4().hex[:6]}"
    spec = {"workspace": {"type": "git", "path": str(args.repo), "commit": args.commit}}
    print(f"registering {args.repo} at {args.commit} as {name} ...", flush=True)
    t = time.perf_counter()
    r = client.put(f"/v1/environments/{name}", json=spec)
    register_s = time.perf_counter() - t
    if r.status_code != 200:
        raise SystemExit(f"registration failed: {r.status_code} {r.text}")
    env = r.json()
    item = {"environment": name}
    print(f"{env['file_count']} files; first rollout (prepares the image) ...", flush=True)
    t = time.perf_counter()
    tool_call(client, f"{name}-first", "git log --oneline | wc -l", item=item)
    first_s = time.perf_counter() - t
    prep = client.get(f"/v1/environments/{name}").json()["preparation"]
    print(f"{args.rollouts} more rollouts in the prepared environment, one after another ...", flush=True)
    starts = []
    for i in range(args.rollouts):
        t = time.perf_counter()
        tool_call(client, f"{name}-{i}", "echo ready", item=item)
        starts.append(time.perf_counter() - t)
    image = next(iter(prep.values()))["image"]
    raw = []
    for _ in range(args.rollouts):
        t = time.perf_counter()
        engine.containers.run(image, ["true"], remove=True, network_mode="none")
        raw.append(time.perf_counter() - t)
    print(f"{args.grades} grades (file_f1) ...", flush=True)
    grades = []
    for i in range(args.grades):
        rid = f"{name}-{i % args.rollouts}"
        body = {"sample": {"output_text": "setup.py\nsrc/missing.py"}, "trace_id": rid,
                "item": {"environment": name, "reference_files": ["setup.py"], "grader": "file_f1"}}  # fmt: skip
        t = time.perf_counter()
        g = client.post("/v1/grade", json=body)
        grades.append(time.perf_counter() - t)
        if g.status_code != 200:
            raise SystemExit(f"grade failed: {g.status_code} {g.text}")
    for i in range(args.rollouts):
        client.delete(f"/v1/rollouts/{name}-{i}")
    client.delete(f"/v1/rollouts/{name}-first")
    return {
        "machine": _machine(engine),
        "environment": {
            "files": env["file_count"],
            "register_s": round(register_s, 3),
            "prepare_s": next(iter(prep.values())).get("duration_s"),
            "first_rollout_with_preparation_s": round(first_s, 3),
        },  # fmt: skip
        "rollout_start_in_prepared_env": summary(starts),
        "baseline_docker_run_of_env_image": summary(raw),
        "grade_file_f1": summary(grades),
    }


def _client(args: argparse.Namespace) -> httpx.Client:
    token = args.token or os.environ.get("SANDBOX_API_TOKENS", "").split(",")[0]
    if not token and Path(".run/api-token").exists():
        token = Path(".run/api-token").read_text().strip()
    return httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {token}"}, timeout=900)


def _machine(engine: docker.DockerClient) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "engine": engine.version().get("Version")}


def print_table(result: dict[str, Any]) -> None:
    print(f"\nmachine: {result['machine']}")
    if "environment" in result:
        print(f"environment: {result['environment']}")
    print(f"{'measure':34} {'n':>5} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for key, row in result.items():
        if key in ("machine", "environment"):
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
    envb = kinds.add_parser("environment", help="environment preparation, rollout start and grader latency")
    envb.add_argument("--url", default="http://127.0.0.1:8000")
    envb.add_argument("--token", default="")
    envb.add_argument("--repo", type=Path, required=True, help="a git repository under SANDBOX_WORKSPACE_ROOTS")
    envb.add_argument("--commit", default="HEAD")
    envb.add_argument("--rollouts", type=int, default=10)
    envb.add_argument("--grades", type=int, default=100)
    envb.add_argument("--json", type=Path)
    envb.set_defaults(func=run_environment)


def run_latency(args: argparse.Namespace) -> None:
    result = bench_latency(args)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def run_environment(args: argparse.Namespace) -> None:
    result = bench_environment(args)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
