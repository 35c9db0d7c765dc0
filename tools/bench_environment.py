"""`python -m tools.bench environment`: what a git environment costs, one step at a time:
registration, the first rollout (which prepares the image), rollout starts in the prepared
environment beside a raw `docker run` of that image, and `file_f1` grades.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import docker

from tools.bench_common import api_client, machine_brief, print_table, summary, tool_call


def bench_environment(args: argparse.Namespace) -> dict[str, Any]:
    client = api_client(args)
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
        "machine": machine_brief(engine),
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


def run_environment(args: argparse.Namespace) -> None:
    result = bench_environment(args)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
