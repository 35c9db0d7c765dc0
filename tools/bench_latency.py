"""`python -m tools.bench latency`: what a trainer sees over HTTP, one call at a time, and in the
same run the raw engine baselines on this machine, so the figures can be compared fairly:
- provisioning: the first call of a new rollout (container created, guest ready, echo run);
- single call: `echo` on an existing rollout, one call at a time;
- baselines: `docker run` of one container, and `docker exec echo` in an existing one.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import docker

from tools.bench_common import api_client, machine_brief, print_table, summary, tool_call


def bench_latency(args: argparse.Namespace) -> dict[str, Any]:
    client = api_client(args)
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
        "machine": machine_brief(engine),
        "first_call_of_new_rollout": summary(provision),
        "echo_on_existing_rollout": summary(single),
        "baseline_docker_run": summary(raw_run),
        "baseline_docker_exec_echo": summary(raw_exec),
    }


def run_latency(args: argparse.Namespace) -> None:
    result = bench_latency(args)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
