"""`python -m tools.bench runtime`: what gVisor costs, against runc in the same run.

For each runtime (an environment with `runtime: "runc"` and one with `"runsc"`, same image):
R new rollouts one after another, each timed from its first call's send to its answer
(container created, guest ready, `true` run), then C calls of a realistic command
(`ls / | head -5; echo k`) on one rollout, one at a time. httpx.Client, as trainers use.
Prints p50/p95 per runtime and the ratio; writes docs/benchmarks-runtime.json.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from tools.bench_common import api_client, summary, tool_call

COMMAND = "ls / | head -5; echo k"


def measure(client: Any, env: str, rollouts: int, calls: int) -> dict[str, Any]:
    firsts, follow = [], []
    rids = []
    for _ in range(rollouts):
        rid = f"bench-rt-{uuid.uuid4().hex[:8]}"
        rids.append(rid)
        started = time.perf_counter()
        tool_call(client, rid, "true", item={"environment": env})
        firsts.append(time.perf_counter() - started)
    for _ in range(calls):
        started = time.perf_counter()
        tool_call(client, rids[0], COMMAND)
        follow.append(time.perf_counter() - started)
    for rid in rids:
        client.delete(f"/v1/rollouts/{rid}")
    return {"first_call": summary(firsts), "call": summary(follow)}


def run_runtime(args: argparse.Namespace) -> None:
    client = api_client(args)
    tag = uuid.uuid4().hex[:6]
    results: dict[str, Any] = {}
    for runtime in ("runc", "runsc"):
        env = f"bench-{runtime}-{tag}"
        r = client.put(f"/v1/environments/{env}", json={"runtime": runtime})
        if r.status_code != 200:
            raise SystemExit(f"cannot register a {runtime} environment: {r.status_code} {r.text}")
        try:
            tool_call(client, f"bench-rt-warm-{tag}-{runtime}", "true", item={"environment": env})  # not timed
            client.delete(f"/v1/rollouts/bench-rt-warm-{tag}-{runtime}")
            results[runtime] = measure(client, env, args.rollouts, args.calls)
        finally:
            client.delete(f"/v1/environments/{env}")
    print(f"\n{'':22}{'runc p50/p95 ms':>20}{'runsc p50/p95 ms':>20}{'ratio p50':>11}")
    for what in ("first_call", "call"):
        a, b = results["runc"][what], results["runsc"][what]
        print(
            f"{what:22}{a['p50_ms']:>11.1f} /{a['p95_ms']:>7.1f}{b['p50_ms']:>11.1f} /{b['p95_ms']:>7.1f}"
            f"{b['p50_ms'] / a['p50_ms']:>10.2f}x"
        )
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "client": "httpx.Client, one call at a time",
        "command": COMMAND,
        "rollouts": args.rollouts,
        "calls": args.calls,
        **results,
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
