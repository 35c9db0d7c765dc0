"""`python -m tools.bench grading`: the tests grader against the bare test run, and a burst of gradings.

- setup (not timed): a small real package (20 functions) and its hidden 20-test pytest suite,
  written under the service's workspace root and registered as an environment with a `tests`
  block; an idle container of the environment's image for the baseline.
- latency, R rounds: a rollout makes one call (its container exists), then `POST /v1/grade`
  with `{"grader": "tests"}` is timed from send to answer (restore, hidden files written, the
  suite run, results read and scored, the container released). Baseline in the same round:
  the same suite run bare with `docker exec ... python3 -m pytest` in the idle container, timed
  inside the container (pytest's own wall time) and from outside (the docker exec).
  Target (issue 12): grading adds at most 0.3 s over the bare run at p50.
- burst: N rollouts get their containers (first calls, at most 64 at once, not timed), then N
  grade requests are sent at once from one httpx.AsyncClient; makespan, latency and errors
  (target: errors = 0; the gradings queue on the host, none fails).
Exits non-zero on a failed setup; releases what it created on every exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx

from tools.bench_common import api_token, percentile, tool_call

OVERHEAD_TARGET_S = 0.3
FUNCTIONS = 20


def package_source() -> str:
    """20 small functions a realistic suite exercises: arithmetic, strings, lists."""
    lines = []
    for i in range(FUNCTIONS):
        lines.append(f"def f{i}(xs):\n    return sorted(set(x * {i + 1} for x in xs))[: {i + 3}]\n")
    return "\n\n".join(lines)


def suite_source() -> str:
    tests = ["from mathlib import *  # noqa: F403\n"]
    for i in range(FUNCTIONS):
        tests.append(
            f"def test_f{i}():\n    xs = list(range(50, 0, -1)) + [3, 3]\n"
            f"    assert f{i}(xs) == sorted(set(x * {i + 1} for x in xs))[: {i + 3}]\n"  # noqa: E501
        )
    return "\n\n".join(tests)


def setup_environment(client: httpx.Client, root: Path, tag: str) -> tuple[str, Path]:
    repo = root / f"bench-grading-{tag}"
    (repo / "mathlib").mkdir(parents=True)
    (repo / "mathlib" / "__init__.py").write_text(package_source())
    hidden = root / f"bench-grading-hidden-{tag}"
    (hidden / "tests").mkdir(parents=True)
    (hidden / "tests" / "test_hidden.py").write_text(suite_source())
    name = f"bench-grading-{tag}"
    spec = {
        "workspace": {"type": "dir", "path": str(repo)},
        "tests": {"dir": str(hidden), "command": "python3 -m pytest -q tests/test_hidden.py", "restore": ["tests/"]},
    }
    r = client.put(f"/v1/environments/{name}", json=spec)
    if r.status_code != 200:
        raise SystemExit(f"cannot register the environment: {r.status_code} {r.text}")
    return name, hidden


def image_of(client: httpx.Client, env: str) -> str:
    """The environment's prepared image on this host (a first rollout prepares it)."""
    rid = f"bench-g-prep-{uuid.uuid4().hex[:8]}"
    tool_call(client, rid, "true", item={"environment": env})
    client.delete(f"/v1/rollouts/{rid}")
    prep = client.get(f"/v1/environments/{env}").json()["preparation"]
    return next(iter(prep.values()))["image"]


def bare_runs(engine: docker.DockerClient, image: str, hidden: Path, rounds: int) -> tuple[list[float], list[float]]:
    """(pytest's own wall time, docker exec's) for the suite run bare, `rounds` times."""
    container = engine.containers.run(image, ["sleep", "infinity"], detach=True, network_mode="none", user="sandbox")
    try:
        script = (
            "mkdir -p tests && cat > tests/test_hidden.py <<'EOF'\n" + (hidden / "tests" / "test_hidden.py").read_text()
        ) + "\nEOF"
        container.exec_run(["bash", "-c", script])
        inner, outer = [], []
        timed = "s=$(date +%s%N); python3 -m pytest -q -p no:cacheprovider tests/test_hidden.py >/dev/null; "
        timed += "e=$(date +%s%N); echo $(( (e - s) / 1000 ))"
        for _ in range(rounds):
            started = time.perf_counter()
            result = container.exec_run(["bash", "-c", timed])
            outer.append(time.perf_counter() - started)
            inner.append(int(result.output.decode().strip().splitlines()[-1]) / 1e6)
        return inner, outer
    finally:
        container.remove(force=True)


def grade(client: httpx.Client, rid: str) -> tuple[float, dict[str, Any]]:
    body = {"sample": {"output_text": ""}, "item": {"grader": "tests"}, "trace_id": rid}
    started = time.perf_counter()
    r = client.post("/v1/grade", json=body, timeout=600)
    elapsed = time.perf_counter() - started
    if r.status_code != 200:
        raise SystemExit(f"grade failed: {r.status_code} {r.text}")
    return elapsed, r.json()


def latency_phase(client: httpx.Client, env: str, rounds: int) -> tuple[list[float], list[float]]:
    """(grade latency, the guest's test command duration) per round."""
    latencies, runs = [], []
    for i in range(rounds):
        rid = f"bench-g-lat-{uuid.uuid4().hex[:8]}"
        tool_call(client, rid, "ls", item={"environment": env})
        elapsed, answer = grade(client, rid)
        if answer["score"] != 1.0:
            raise SystemExit(f"round {i}: the suite should pass, got {answer['tests']}")
        latencies.append(elapsed)
        runs.append(answer["tests"]["duration_s"])
    return latencies, runs


async def burst_phase(url: str, token: str, env: str, n: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=n + 16, max_keepalive_connections=n + 16)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=1800, limits=limits) as client:
        rids = [f"bench-g-burst-{uuid.uuid4().hex[:8]}" for _ in range(n)]
        gate = asyncio.Semaphore(64)
        started = time.perf_counter()

        async def first_call(rid: str) -> None:
            async with gate:
                body = {
                    "type": "function_call",
                    "call_id": uuid.uuid4().hex,
                    "arguments": json.dumps({"command": "true"}),
                    "trace_id": rid,
                    "item": {"environment": env},
                }
                r = await client.post("/v1/tools/shell", json=body)
                if r.status_code != 200:
                    raise SystemExit(f"first call failed: {r.status_code} {r.text}")

        await asyncio.gather(*(first_call(r) for r in rids))
        provisioned_s = time.perf_counter() - started
        print(f"  {n} rollouts provisioned in {provisioned_s:.1f} s; sending {n} grade requests at once")

        async def one(rid: str) -> tuple[float, int, float | None]:
            t0 = time.perf_counter()
            body = {"sample": {"output_text": ""}, "item": {"grader": "tests"}, "trace_id": rid}
            r = await client.post("/v1/grade", json=body)
            score = r.json().get("score") if r.status_code == 200 else None
            return time.perf_counter() - t0, r.status_code, score

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(r) for r in rids))
        makespan = time.perf_counter() - t0
        for rid in rids:  # graded ones are released already; anything else is released here
            await client.delete(f"/v1/rollouts/{rid}")
    latencies = [r[0] for r in results]
    codes: dict[str, int] = {}
    for _, code, _ in results:
        codes[str(code)] = codes.get(str(code), 0) + 1
    return {
        "rollouts": n,
        "provision_s": round(provisioned_s, 2),
        "makespan_s": round(makespan, 2),
        "grades_per_s": round(n / makespan, 2),
        "p50_s": round(percentile(latencies, 50), 3),
        "p95_s": round(percentile(latencies, 95), 3),
        "status_codes": codes,
        "errors": sum(1 for _, code, _ in results if code != 200),
        "not_one": sum(1 for _, code, score in results if code == 200 and score != 1.0),
    }


def run_grading(args: argparse.Namespace) -> None:
    token = api_token(args)
    client = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {token}"}, timeout=600)
    tag = uuid.uuid4().hex[:6]
    env, hidden = setup_environment(client, args.workspace_root, tag)
    try:
        print(f"environment {env}: 20 functions, a hidden suite of {FUNCTIONS} pytest tests")
        image = image_of(client, env)
        engine = docker.from_env()
        report: dict[str, Any] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
            "client": "httpx.Client (latency), httpx.AsyncClient (burst)",
        }
        if args.rounds:
            latencies, runs = latency_phase(client, env, args.rounds)
            inner, outer = bare_runs(engine, image, hidden, args.rounds)
            lat_p50, bare_p50 = statistics.median(latencies), statistics.median(inner)
            report["latency"] = {
                "rounds": args.rounds,
                "grade_p50_s": round(lat_p50, 3),
                "grade_p95_s": round(percentile(latencies, 95), 3),
                "guest_test_run_p50_s": round(statistics.median(runs), 3),
                "bare_pytest_p50_s": round(bare_p50, 3),
                "bare_pytest_p95_s": round(percentile(inner, 95), 3),
                "bare_docker_exec_p50_s": round(statistics.median(outer), 3),
                "overhead_p50_s": round(lat_p50 - bare_p50, 3),
                "target_overhead_s": OVERHEAD_TARGET_S,
                "target_met": lat_p50 - bare_p50 <= OVERHEAD_TARGET_S,
            }
            print_latency(report["latency"])
        if args.burst:
            report["burst"] = asyncio.run(burst_phase(args.url, token, env, args.burst))
            print_burst(report["burst"])
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
            print(f"wrote {args.json}")
    finally:
        client.delete(f"/v1/environments/{env}")
        shutil.rmtree(args.workspace_root / f"bench-grading-{tag}", ignore_errors=True)
        shutil.rmtree(hidden, ignore_errors=True)


def print_latency(lat: dict[str, Any]) -> None:
    print(f"\nlatency, {lat['rounds']} rounds (p50 / p95, s)")
    print(f"  POST /v1/grade, tests grader      {lat['grade_p50_s']:.3f} / {lat['grade_p95_s']:.3f}")
    print(f"  the test command in the guest     {lat['guest_test_run_p50_s']:.3f}")
    print(f"  bare pytest, inside a container   {lat['bare_pytest_p50_s']:.3f} / {lat['bare_pytest_p95_s']:.3f}")
    print(f"  bare pytest through docker exec   {lat['bare_docker_exec_p50_s']:.3f}")
    verdict = "met" if lat["target_met"] else "NOT met"
    print(f"  grading adds {lat['overhead_p50_s']:.3f} s at p50 (target <= {OVERHEAD_TARGET_S} s: {verdict})")


def print_burst(b: dict[str, Any]) -> None:
    print(f"\nburst: {b['rollouts']} grade requests at once")
    print(f"  makespan {b['makespan_s']:.1f} s ({b['grades_per_s']:.1f} grades/s), p50 {b['p50_s']:.2f} s, "
          f"p95 {b['p95_s']:.2f} s")  # fmt: skip
    print(f"  status codes {b['status_codes']}, errors {b['errors']}, scores other than 1.0: {b['not_one']}")
