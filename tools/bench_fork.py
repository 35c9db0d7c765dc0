"""`python -m tools.bench fork`: fork a rollout that changed M MB of files into N children, beside N
fresh rollouts of the same environment started at once, interleaved round by round in one run.

- setup (not timed): a parent rollout whose first call writes M files of 1 MiB in the workspace;
- each round: the baseline first (N first calls `true` on new rollout ids, sent at once, timed
  until all N answered: container created, guest ready, one trivial call), then the fork (the
  parent touches a file, then `POST /v1/rollouts/{parent}/fork {"count": N}` is timed from send to
  its 200, i.e. every child ready). Not timed: each child must see the parent's M files and this
  round's stamp, name the parent in its record, and a file written in child 0 must be seen by
  neither child 1 nor the parent. Everything a round created is released before the next.
Targets (issue, 2-core machine): fork p50 <= 1 s, and fork p50 <= 1.5x the baseline p50.
Exits non-zero on errors, not on a missed target; releases what it created on every exit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tools.bench_common import api_client, api_token, percentile

FORK_P50_TARGET_S = 1.0
RATIO_TARGET = 1.5
SETUP_TIMEOUT_S = 300.0  # the service's default cap on a call's deadline
MARKER = "fork-isolation-marker"
OPTIONS = ("url", "children", "megabytes", "rounds", "settle", "name_children", "json")  # in the report (no token)


class BenchError(RuntimeError):
    """A failed step of a round: recorded as an error, and the run goes on to the next round."""


ROUND_ERRORS = (BenchError, httpx.HTTPError, KeyError, TypeError, ValueError)


def _error(r: httpx.Response) -> str:
    try:
        e = r.json()["error"]
        return f"{r.status_code} {e['code']}: {e['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{r.status_code} {r.text[:200]}"


def shell(client: httpx.Client, rid: str, command: str, timeout: float = 120.0) -> str:
    """One shell tool call; its output, or BenchError on anything but a 200."""
    arguments = json.dumps({"command": command, "timeout": timeout})
    body = {"type": "function_call", "id": "fc", "call_id": uuid.uuid4().hex, "arguments": arguments, "trace_id": rid}
    r = client.post("/v1/tools/shell", json=body)
    if r.status_code != 200:
        raise BenchError(f"{rid}: {command[:40]!r}: {_error(r)}")
    return str(r.json()["output"])


def release(client: httpx.Client, live: set[str], rids: list[str]) -> None:
    for rid in rids:
        try:
            r = client.delete(f"/v1/rollouts/{rid}")
            if r.status_code < 300 or r.status_code == 404:
                live.discard(rid)
            else:
                print(f"!! release {rid}: {_error(r)}", file=sys.stderr, flush=True)
        except httpx.HTTPError as exc:
            print(f"!! release {rid}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def setup_parent(client: httpx.Client, parent: str, files: int) -> dict[str, Any]:
    write = f"mkdir -p data && for i in $(seq 1 {files}); do head -c 1048576 /dev/urandom > data/f$i || exit 1; done"
    t = time.perf_counter()
    out = shell(client, parent, f"{write}; ls data | wc -l; du -sm data | cut -f1", timeout=SETUP_TIMEOUT_S)
    lines = out.split()
    if len(lines) != 2 or lines[0] != str(files):
        raise BenchError(f"parent setup: expected {files} files, the call answered {out[-300:]!r}")
    return {"seconds": round(time.perf_counter() - t, 2), "files": files, "du_mb": int(lines[1])}


def baseline_round(client: httpx.Client, pool: ThreadPoolExecutor, rids: list[str], live: set[str]) -> list[float]:
    """N first calls at once on new rollouts; each one's time from the common send instant."""
    live.update(rids)
    t0 = time.perf_counter()

    def first_call(rid: str) -> float:
        shell(client, rid, "true")
        return time.perf_counter() - t0

    futures = [pool.submit(first_call, rid) for rid in rids]
    failures = [exc for exc in (f.exception() for f in futures) if exc is not None]
    if failures:
        raise BenchError(f"{len(failures)} of {len(rids)} fresh rollouts failed, e.g. {failures[0]}")
    return [round(f.result(), 4) for f in futures]


@contextmanager
def interrupt_after() -> Iterator[None]:
    """Ctrl-C waits for the block's end (the fork's answer names the children to release); twice, not."""
    hits: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        hits.append(signum)
        if len(hits) > 1:
            raise KeyboardInterrupt
        print("\ninterrupted: waiting for the fork's answer to release its children", file=sys.stderr, flush=True)

    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:  # ignored (a background job) or someone else's
        yield
        return
    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if hits:
        raise KeyboardInterrupt


def fork_round(
    client: httpx.Client, parent: str, args: argparse.Namespace, row: dict[str, Any], live: set[str]
) -> None:
    """Time the fork into row["fork_s"] and its children into row["children"] (kept in live)."""
    n = args.children
    names = [f"{parent}-r{row['round']}-child-{j}" for j in range(n)] if args.name_children else []
    body: dict[str, Any] = {"rollout_ids": names} if names else {"count": n}
    live.update(names)  # named children can be released even if the fork fails half-way
    row["children"] = names
    with interrupt_after():
        t0 = time.perf_counter()
        r = client.post(f"/v1/rollouts/{parent}/fork", json=body)
        elapsed = time.perf_counter() - t0
        answered = r.json()["rollouts"] if r.status_code == 200 else []
        row["children"] = children = [str(c["rollout_id"]) for c in answered] or names
        live.update(children)
    if r.status_code != 200:
        raise BenchError(f"fork: {_error(r)}")
    row["fork_s"] = round(elapsed, 4)
    states = [c.get("state") for c in answered]
    if len(children) != n or len(set(children)) != n or any(s != "ready" for s in states):
        raise BenchError(f"fork: asked for {n} children, got {list(zip(children, states, strict=False))}")
    if names and sorted(children) != sorted(names):
        raise BenchError(f"fork: asked for children {names}, got {children}")


def verify(client: httpx.Client, parent: str, children: list[str], files: int, stamp: str) -> None:
    expected = f"{files}\n{stamp}"
    for rid in children:
        got = shell(client, rid, "ls data | wc -l; cat stamp").strip()
        if got != expected:
            raise BenchError(f"child {rid} sees {got[-200:]!r}, not the parent's {expected!r}")
        r = client.get(f"/v1/rollouts/{rid}")
        if r.status_code != 200:
            raise BenchError(f"GET child {rid}: {_error(r)}")
        of = (r.json().get("parent") or {}).get("rollout_id")
        if of != parent:
            raise BenchError(f"child {rid}'s record names parent {of!r}, not {parent!r}")
    shell(client, children[0], f"touch {MARKER}")
    for rid in [*children[1:2], parent]:
        got = shell(client, rid, f"test -e {MARKER} && echo seen || echo absent").strip()
        if got != "absent":
            raise BenchError(f"{rid} sees a file written in child {children[0]} after the fork ({got[-200:]!r})")


def stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_s": round(percentile(values, 50), 3),
        "p95_s": round(percentile(values, 95), 3),
        "min_s": round(min(values), 3),
        "max_s": round(max(values), 3),
        "mean_s": round(statistics.fmean(values), 3),
    }


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def warm_pool_target(url: str) -> float | None:
    """The default environment's warm pool (a baseline that claims pre-started containers is faster)."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    rows = [ln for ln in text.splitlines() if ln.startswith('sandbox_warm_pool_target{environment="default"')]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in rows) if rows else None


def command_line() -> str:
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    argv = [python, "-m", "tools.bench", *sys.argv[1:]]
    for i, word in enumerate(argv):  # the report is published: never the token
        if word.startswith("--token="):
            argv[i] = "--token=***"
        elif i and argv[i - 1] == "--token":
            argv[i] = "***"
    return shlex.join(argv)


def bench_fork(args: argparse.Namespace, client: httpx.Client, live: set[str]) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    parent, n = f"bench-fork-{tag}-parent", args.children
    result: dict[str, Any] = {
        "command": command_line(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "machine": machine(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k in OPTIONS},
        "warm_pool_target_default": warm_pool_target(args.url),
    }
    if result["warm_pool_target_default"]:
        print("note: the default environment has a warm pool; the baseline may not create containers", flush=True)
    print(f"setup: parent {parent} writes {args.megabytes} files of 1 MiB ...", flush=True)
    live.add(parent)
    result["setup"] = setup_parent(client, parent, args.megabytes)
    print(f"setup: {result['setup']}", flush=True)
    rounds: list[dict[str, Any]] = []
    with ThreadPoolExecutor(n) as pool:
        for i in range(args.rounds):
            row: dict[str, Any] = {"round": i}
            rounds.append(row)
            fresh = [f"bench-fork-{tag}-r{i}-fresh-{j}" for j in range(n)]
            try:
                row["baseline_each_s"] = each = baseline_round(client, pool, fresh, live)
                row["baseline_s"] = max(each)
            except ROUND_ERRORS as exc:
                row["baseline_error"] = f"{type(exc).__name__}: {exc}"
            finally:
                release(client, live, fresh)
                time.sleep(args.settle)
            try:
                stamp = f"round-{i}-{uuid.uuid4().hex[:6]}"
                shell(client, parent, f"echo {stamp} > stamp")  # every round forks a state of its own
                fork_round(client, parent, args, row, live)
                verify(client, parent, row["children"], args.megabytes, stamp)
            except ROUND_ERRORS as exc:
                row["fork_error"] = f"{type(exc).__name__}: {exc}"
            finally:
                release(client, live, row.get("children", []))
                time.sleep(args.settle)
            shown = {k: row[k] for k in ("baseline_s", "fork_s", "baseline_error", "fork_error") if k in row}
            print(f"round {i + 1}/{args.rounds}: {shown}", flush=True)
    result["rounds"] = rounds
    fork = stats([r["fork_s"] for r in rounds if "fork_s" in r and "fork_error" not in r])
    base = stats([r["baseline_s"] for r in rounds if "baseline_s" in r])
    result["fork_all_ready"], result["baseline_fresh"] = fork, base
    ratio = round(fork["p50_s"] / base["p50_s"], 2) if fork["n"] and base["n"] else None
    result["ratio_p50"] = ratio
    result["targets"] = [
        _target(f"fork into {n}: all ready, p50 (s)", fork.get("p50_s"), FORK_P50_TARGET_S),
        _target(f"fork p50 / {n} fresh rollouts p50", ratio, RATIO_TARGET),
    ]
    kinds = ("baseline_error", "fork_error")
    result["errors"] = [f"round {r['round']} {k}: {r[k]}" for r in rounds for k in kinds if k in r]
    return result


def _target(name: str, value: float | None, limit: float) -> dict[str, Any]:
    verdict = "n/a" if value is None else "PASS" if value <= limit else "FAIL"
    return {"target": name, "value": value, "limit": limit, "result": verdict}


def print_fork_table(result: dict[str, Any]) -> None:
    m, o = result["machine"], result["options"]
    print(f"\nmachine: {m['cpus']} cores, {m['cpu_model']}; {o['megabytes']} MB changed, {o['children']} children")
    print(f"{'measure':36} {'n':>3} {'p50 s':>7} {'p95 s':>7} {'min s':>7} {'max s':>7}")
    for label, key in (("fork: all children ready", "fork_all_ready"), ("baseline: fresh rollouts", "baseline_fresh")):
        s = result[key]
        cells = [f"{s.get(c, '-'):>7}" for c in ("p50_s", "p95_s", "min_s", "max_s")]
        print(f"{label:36} {s['n']:>3} {' '.join(cells)}")
    print(f"\n{'target':36} {'value':>7} {'limit':>7}  result")
    for t in result["targets"]:
        print(f"{t['target']:36} {str(t['value']):>7} {t['limit']:>7}  {t['result']}")
    print(f"\nerrors: {len(result['errors'])}")
    for e in result["errors"]:
        print(f"  {e}")


def run_fork(args: argparse.Namespace) -> None:
    if args.children < 1 or args.megabytes < 1 or args.rounds < 1:
        raise SystemExit("--children, --megabytes and --rounds must be at least 1")
    if not api_token(args):
        raise SystemExit("no API token: pass --token, or set SANDBOX_API_TOKENS, or `make up` (.run/api-token)")
    client, live = api_client(args), set[str]()
    try:
        result = bench_fork(args, client, live)
    except httpx.ConnectError as exc:
        raise SystemExit(f"no sandbox service answers at {args.url} ({exc}); start it with `make up`") from exc
    except (httpx.HTTPError, BenchError) as exc:
        raise SystemExit(f"fork benchmark: {type(exc).__name__}: {exc}") from exc
    except KeyboardInterrupt:
        raise SystemExit("interrupted") from None
    finally:
        if live:
            print(f"releasing {len(live)} rollouts ...", file=sys.stderr, flush=True)
            release(client, live, sorted(live))
    print_fork_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    if result["errors"]:
        raise SystemExit(f"{len(result['errors'])} errors (see above)")
