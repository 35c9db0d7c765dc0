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
from collections import Counter
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


def _token(args: argparse.Namespace) -> str:
    """--token, else the first of $SANDBOX_API_TOKENS, else the token `make up` keeps in .run/api-token."""
    token: str = args.token or os.environ.get("SANDBOX_API_TOKENS", "").split(",")[0]
    saved = Path(getattr(args, "run_dir", ".run")) / "api-token"
    if not token and saved.exists():
        token = saved.read_text().strip()
    return token


def _client(args: argparse.Namespace) -> httpx.Client:
    return httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {_token(args)}"}, timeout=900)


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
    bur = kinds.add_parser(
        "burst", help="N new rollouts at once (warm, cold), sustained and single-call load, with baselines"
    )
    bur.add_argument("--url", default="http://127.0.0.1:8000")
    bur.add_argument("--token", default="", help="default: $SANDBOX_API_TOKENS, else RUN_DIR/api-token")
    bur.add_argument("--rollouts", type=int, default=500, help="N: new rollouts in each burst")
    bur.add_argument("--calls", type=int, default=4, help="K: calls per rollout (echo, ls, read_file, grep; cycled)")
    bur.add_argument("--scenarios", type=_scenarios, default=["warm", "cold"], help="warm,cold (default both)")
    bur.add_argument("--sustained-seconds", type=float, default=20.0)
    bur.add_argument("--sustained-rollouts", type=int, default=32)
    bur.add_argument("--json", type=Path, default=Path("docs/benchmarks.json"))
    bur.add_argument("--markdown", type=Path, default=Path("docs/benchmarks.md"))
    bur.add_argument("--skip-baselines", action="store_true", help="no raw docker run / docker exec baselines")
    bur.add_argument("--image", default="rollout-sandbox:bookworm", help="image of the raw docker baselines")
    bur.add_argument("--run-dir", type=Path, default=Path(".run"), help="holds api.pid and worker.pid (memory)")
    bur.add_argument("--pool-timeout", type=float, default=900.0, help="longest wait for the warm pool to fill, s")
    bur.set_defaults(func=run_burst)


def _scenarios(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or set(names) - {"warm", "cold"}:
        raise argparse.ArgumentTypeError(f"scenarios are warm and/or cold, comma-separated, not {text!r}")
    return names


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


# --- sandbox bench burst: burst.py measures; the targets and the report are here -------------

MARKER = "<!-- Generated by `sandbox bench burst` below this line; the text above it is kept. -->"
INTRO = """# Benchmarks

Figures of `sandbox bench burst` (`make bench`): N new rollouts at once, warm and cold, sustained
and single-call load, memory, each beside the raw Docker engine doing the same work in the same
run on the same machine.
"""
VERDICT = {None: "NOT MEASURED", True: "PASS", False: "FAIL"}
Table = tuple[str, list[str], list[list[str]]]


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, int | float) else str(v)


def _measured(phase: dict[str, Any] | None, key: str) -> bool:
    return phase is not None and key in phase


def _baseline(r: dict[str, Any], kind: str, key: str) -> Any:
    return r.get("baselines", {}).get(kind, {}).get(key)


def burst_targets(r: dict[str, Any]) -> list[dict[str, str]]:
    """The five targets: PASS, FAIL, or NOT MEASURED (phase not run); a phase that broke is a FAIL."""
    raw_run, raw_exec = _baseline(r, "docker_run", "total_s"), _baseline(r, "docker_exec", "execs_per_s")
    rows: list[tuple[str, str, bool | None]] = []

    def burst(name: str, target: str, judge: Any) -> None:
        b = r.get(name)
        if b is None:
            rows.append((target, "not run (--scenarios)", None))
        elif "ttfo_s" not in b:
            rows.append((target, f"could not run: {b.get('error')}", False))
        else:
            clean = b["errors"] == 0 and b["all_accounted"]
            text, ok = judge(b)
            errors = f"{b['errors']} errors in {b['calls_answered']} of {b['calls_expected']} calls"
            rows.append((target, f"{errors}; {text}", False if not clean else ok))

    def warm(b: dict[str, Any]) -> tuple[str, bool]:
        p99 = b["ttfo_s"].get("p99")
        return f"TTFO p99 {_f(p99)} s", p99 is not None and p99 <= 3

    def cold(b: dict[str, Any]) -> tuple[str, bool | None]:
        if not raw_run:
            return f"all provisioned in {b['all_provisioned_s']} s, no raw docker run baseline", None
        ratio = b["all_provisioned_s"] / raw_run
        return (
            f"all provisioned in {b['all_provisioned_s']} s = {ratio:.2f}x raw docker run ({raw_run} s)",
            ratio <= 1.2,
        )

    burst("warm", "warm burst N x K: zero errors and TTFO p99 <= 3 s", warm)
    burst("cold", "cold burst: zero errors and all provisioned within 1.2x raw docker run of N", cold)

    target, sus = "sustained: >= 150 calls/s and >= 5x raw docker exec", r.get("sustained")
    if not _measured(sus, "calls_per_s"):
        rows.append((target, f"could not run: {(sus or {}).get('error')}", False))
    else:
        assert sus is not None
        cps, errors = sus["calls_per_s"], sum(sus["errors_by_outcome"].values())
        ratio = cps / raw_exec if raw_exec else None
        text = f"{cps} calls/s" + (f" = {ratio:.1f}x raw docker exec ({raw_exec}/s)" if ratio else ", no exec baseline")
        ok = None if ratio is None and cps >= 150 else cps >= 150 and (ratio or 0) >= 5
        rows.append((target, text + (f"; {errors} errors" if errors else ""), ok and not errors))

    target, single = "single call: p50 <= 15 ms", r.get("single_call")
    if not _measured(single, "latency_ms"):
        rows.append((target, f"could not run: {(single or {}).get('error')}", False))
    else:
        assert single is not None
        p50, errors = single["latency_ms"].get("p50"), sum(single["errors_by_outcome"].values())
        rows.append((target, f"p50 {_f(p50)} ms, {errors} errors", not errors and p50 is not None and p50 <= 15))

    target, mem = "API + worker peak RSS < 1 GiB", r.get("memory", {})
    if "peak_rss_mib" not in mem:
        rows.append((target, str(mem.get("error")), None))
    else:
        rows.append((target, f"peak {mem['peak_rss_mib']} MiB", mem["peak_rss_mib"] < 1024))
    return [{"target": t, "measured": m, "result": VERDICT[ok]} for t, m, ok in rows]


def burst_tables(r: dict[str, Any]) -> list[Table]:
    run, ex = r.get("baselines", {}).get("docker_run", {}), r.get("baselines", {}).get("docker_exec", {})
    skipped = r.get("baselines", {}).get("error", "not measured (--skip-baselines)")
    raw_run, raw_exec = skipped, skipped
    if "total_s" in run:
        raw_run = f"docker run -d x{run['created']}, {run['best_concurrency']} at a time: {run['total_s']} s"
    if "execs_per_s" in ex:
        raw_exec = (
            f"docker exec, {ex['parallel']} at a time: {ex['execs_per_s']}/s, p50 {ex['latency_ms'].get('p50')} ms"
        )
    results, bursts, outcomes, upkeep = [], [], [], []
    for name in ("warm", "cold"):
        if (b := r.get(name)) is None:
            continue
        if "ttfo_s" not in b:
            results.append([f"{name} burst", f"could not run: {b.get('error')}", "-", "-"])
            continue
        ratio = f"{b['all_provisioned_s'] / run['total_s']:.2f}x" if "total_s" in run else "-"
        ours = f"{b['all_provisioned_s']} s"
        results.append([f"{name} burst: all {b['rollouts']} provisioned", ours, raw_run, ratio])
        t = b["ttfo_s"]
        bursts.append(
            [name, f"{b['rollouts']} x {b['calls_per_rollout']}", _f(b["calls_answered"]), _f(b["errors"])]
            + [_f(t.get(q)) for q in ("p50", "p95", "p99", "max")]
            + [_f(b[k]) for k in ("all_provisioned_s", "makespan_s", "calls_per_s")]
        )
        outcomes += [[name, key, str(n)] for key, n in b["outcomes"].items()]
        fill, settle = b.get("pool_fill", {}), b.get("settle", {})
        upkeep.append([name, _f(fill.get("seconds")), _f(b.get("pool_available_after_burst"))])
        upkeep[-1] += [
            _f(b.get("release", {}).get("seconds")),
            _f(settle.get("seconds")),
            _f(settle.get("containers_left")),
        ]
    loads = []
    for name, b in (("sustained echo", r.get("sustained") or {}), ("single call echo", r.get("single_call") or {})):
        if "latency_ms" not in b:
            loads.append([name, f"could not run: {b.get('error')}"] + ["-"] * 6)
            continue
        lat, errors = b["latency_ms"], sum(b["errors_by_outcome"].values())
        loads.append([name, _f(lat.get("n")), _f(errors), _f(b.get("calls_per_s"))])
        loads[-1] += [_f(lat.get(q)) for q in ("p50", "p95", "p99", "max")]
    if "calls_per_s" in (sus := r.get("sustained") or {}):
        ratio = f"{sus['calls_per_s'] / ex['execs_per_s']:.1f}x" if ex.get("execs_per_s") else "-"
        ours = f"{sus['calls_per_s']} calls/s, p50 {sus['latency_ms'].get('p50')} ms"
        results.append([f"sustained echo, {sus['rollouts']} clients", ours, raw_exec, ratio])
    if "latency_ms" in (single := r.get("single_call") or {}):
        results.append(["single call echo, one at a time", f"p50 {single['latency_ms'].get('p50')} ms", "-", "-"])
    probes = run.get("probe_containers_per_s", {})
    engine = [[f"docker run, {c} at a time (probe)", f"{v} containers/s"] for c, v in probes.items()]
    if "total_s" in run:
        engine.append([f"docker run of {run['containers']}", f"{run['total_s']} s, {run['containers_per_s']}/s"])
        engine.append([f"errors of docker run of {run['containers']}", f"{run['errors']} {run['first_error']}".strip()])
        engine.append([f"removal of {run['created']}, in parallel", f"{run.get('remove_s')} s"])
    if "execs_per_s" in ex:
        lat = ex["latency_ms"]
        engine.append([f"docker exec for {ex['seconds']} s", f"{ex['execs_per_s']}/s, {ex['errors'] or 'no'} errors"])
        engine.append(["docker exec latency, ms", f"p50 {lat.get('p50')}, p95 {lat.get('p95')}, p99 {lat.get('p99')}"])
    cpu = []
    phases = [("warm burst", "warm", "makespan_s"), ("cold burst", "cold", "makespan_s")]
    for name, key, secs in phases + [("sustained", "sustained", "seconds"), ("single call", "single_call", "seconds")]:
        if "service_cpu_s" in (b := r.get(key) or {}):
            split = ", ".join(f"{k} {v}" for k, v in b["service_cpu_by_process_s"].items())
            cpu.append([name, _f(b.get(secs)), _f(b["machine_cpu_busy_pct"]), f"{b['service_cpu_s']} ({split})"])
            cpu[-1] += [_f(b.get("ok_calls", b.get("calls_answered", b.get("calls")))), _f(b["bench_client_cpu_s"])]
    mem = r.get("memory", {})
    memory = [["memory", _f(mem.get("error"))]]
    if "peak_rss_mib" in mem:
        parts = ", ".join(f"{k} {v}" for k, v in mem["peak_by_process_mib"].items())
        memory = [
            ["peak of the sum", f"{mem['peak_rss_mib']} MiB ({parts}; {mem['processes_at_peak']} processes)"],
            [f"at the most live rollouts ({mem['most_live_rollouts']})", f"{mem['rss_at_most_live_mib']} MiB"],
        ]
    targets = [[t["target"], t["measured"], f"**{t['result']}**"] for t in r["targets"]]
    cleanup = ["release", "containers removed after", "containers left"]
    times = ["TTFO p50", "p95", "p99", "max", "all provisioned", "makespan", "calls/s"]
    return [
        ("Results beside the raw engine", ["measure", "this service", "raw engine, same run", "ratio"], results),
        ("Bursts (times in s from the burst's start)", ["scenario", "N x K", "answered", "errors", *times], bursts),
        ("Outcomes of every call", ["scenario", "HTTP status, outcome, reason", "calls"], outcomes),
        ("Warm pool and clean-up (s)", ["scenario", "pool filled in", "pool after the burst", *cleanup], upkeep),
        (
            "Sustained and single call (ms)",
            ["load", "ok calls", "errors", "calls/s", "p50", "p95", "p99", "max"],
            loads,
        ),
        ("Raw engine baselines", ["measure", "result"], engine),
        ("CPU during each phase", ["phase", "s", "machine busy %", "API + worker CPU s", "calls", "bench CPU s"], cpu),
        ("Memory: API and worker process trees (VmRSS, sampled every 0.5 s)", ["measure", "value"], memory),
        ("Targets", ["target", "measured", "result"], targets),
    ]


def render_text(tables: list[Table]) -> str:
    out = []
    for title, header, rows in tables:
        cells = [header] + [[c.replace("**", "") for c in row] for row in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        out.append(f"\n{title}")
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(out)


def render_markdown(r: dict[str, Any], tables: list[Table]) -> str:
    m = r["machine"]
    out = [
        f"## Burst benchmark, {r['date']}",
        "",
        f"- Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB memory",
        f"- System: {m['os']}, kernel {m['kernel']}",
        f"- Docker: server {m['docker_version']}, storage driver {m['storage_driver']}",
        f"- At the start: containers running {m['containers_running_at_start']}, load average "
        + " / ".join(map(str, m["load_average_at_start"])),
        f"- Command: `{r['command']}` (the whole run took {r['duration_s']} s)",
        "",
    ]
    for title, header, rows in tables:
        out += [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows] + [""]
    return "\n".join(out)


def write_markdown(path: Path, body: str) -> None:
    """Rewrite what is below the marker; keep the hand-written text above it (or write a short intro)."""
    old = path.read_text() if path.exists() else ""
    intro = old.split(MARKER)[0].rstrip() + "\n" if MARKER in old else INTRO
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{intro}\n{MARKER}\n\n{body}")


def run_burst(args: argparse.Namespace) -> None:
    from . import burst

    result = burst.run(args, _token(args))
    result["targets"] = burst_targets(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")  # first: a report bug must not lose the figures
    tables = burst_tables(result)
    print(render_text(tables))
    write_markdown(args.markdown, render_markdown(result, tables))
    verdicts = Counter(t["result"] for t in result["targets"])
    print(f"\ntargets: {dict(verdicts)}; wrote {args.json} and {args.markdown}")
    if verdicts["FAIL"]:
        raise SystemExit(f"{verdicts['FAIL']} of {len(result['targets'])} targets FAIL (see the Targets table)")
