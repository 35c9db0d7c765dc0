"""Burst benchmark, `python -m tools.bench burst`: the run, then its report.

What a trainer does at the start of a step: N new rollouts at once, each making K tool calls
in sequence. Measured in one run on this machine, beside the raw engine doing the same work:
- baselines: raw `docker run -d` of N containers and raw `docker exec` (burst_baselines.py);
- warm and cold bursts, sustained and single-call load (burst_scenarios.py, over burst_http.py);
- memory: peak RSS of the API and worker processes (and their children) over the whole run
  (burst_measure.py);
- loaded: with `--live` rollouts idle on the host, calls through httpx (the trainers' client) and
  the lean client, the machine's CPU per call and idle cost split by process, the guests' memory,
  and raw `docker exec` of the same command (burst_loaded.py, burst_cpu.py). `--only loaded` runs
  just these, and keeps the other figures of the JSON file it writes to.
The figures go to docs/benchmarks.json first, then the tables to docs/benchmarks.md (burst_report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shlex
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx

from tools.bench_common import api_token
from tools.burst_baselines import baselines
from tools.burst_http import Session
from tools.burst_loaded import loaded_scenario
from tools.burst_measure import MemorySampler, Progress
from tools.burst_report import burst_tables, burst_targets, render_markdown, render_text, write_markdown
from tools.burst_report_loaded import loaded_tables, loaded_targets, render_loaded_markdown
from tools.burst_scenarios import cold_scenario, sustained_and_single, warm_scenario


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
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    argv = [python, "-m", "tools.bench", *sys.argv[1:]]
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
    only_loaded = args.only == "loaded"
    try:
        if not args.skip_baselines and not only_loaded:
            result["baselines"] = _guard("baselines", lambda: baselines(engine, args, labels, s.progress))
        if "warm" in args.scenarios and not only_loaded:
            result["warm"] = _guard("warm", lambda: asyncio.run(warm_scenario(s, args)))
        if "cold" in args.scenarios and not only_loaded:
            result["cold"] = _guard("cold", lambda: asyncio.run(cold_scenario(s, args)))
        if not only_loaded:
            pair = _guard("sustained", lambda: sustained_and_single(s, args))
            result["sustained"], result["single_call"] = pair if isinstance(pair, tuple) else (pair, pair)
        if args.live > 0:
            result["loaded"] = _guard("loaded", lambda: loaded_scenario(s, args, labels))
            result["loaded"].update(run_command=result["command"], machine=result["machine"])
    finally:
        for cid in (c["Id"] for c in engine.api.containers(all=True, filters={"label": f"bench.run={s.tag}"})):
            engine.api.remove_container(cid, force=True)  # whatever a broken baseline left behind
        s.progress.close()
        memory = sampler.summary()
        if only_loaded:
            result.setdefault("loaded", {})["memory"] = memory
        else:
            result["memory"] = memory
    result["duration_s"] = round(time.monotonic() - started, 1)
    return result


def _merge_loaded(path: Path, loaded: dict[str, Any]) -> dict[str, Any]:
    """`--only loaded`: the figures already in `path` (of a whole run), with the loaded ones replaced."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    if not isinstance(old, dict) or "machine" not in old:
        return {}
    old.pop("loaded_targets", None)
    return {**old, "loaded": loaded}


def run_burst(args: argparse.Namespace) -> None:
    if args.only == "loaded" and args.live <= 0:
        raise SystemExit("--only loaded needs --live N > 0: the loaded phases run with N live rollouts")
    result = run(args, api_token(args))
    if args.only == "loaded":  # the whole run's figures stay, when the file holds some
        result = _merge_loaded(args.json, result["loaded"]) or result
    whole = any(k in result for k in ("baselines", "warm", "cold", "sustained"))
    result["targets"] = burst_targets(result) if whole else []
    if "loaded" in result:
        result["loaded_targets"] = loaded_targets(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")  # first: a report bug must not lose the figures
    tables, loaded = burst_tables(result) if whole else [], loaded_tables(result)
    print(render_text(tables + loaded))
    body = render_markdown(result, tables) if whole else ""
    write_markdown(args.markdown, body + render_loaded_markdown(result, loaded))
    judged = [] if args.only == "loaded" else result["targets"]  # --only loaded: the targets of this run
    verdicts = Counter(t["result"] for t in judged + result.get("loaded_targets", []))
    print(f"\ntargets: {dict(verdicts)}; wrote {args.json} and {args.markdown}")
    if verdicts["FAIL"]:
        raise SystemExit(f"{verdicts['FAIL']} of {verdicts.total()} targets FAIL (see the Targets tables)")
