"""What the `latency`, `environment` and `burst` benchmarks share: percentiles, the API token and
client, one tool call, and the table the one-call-at-a-time benchmarks print.

Kept apart from bench.py (the entry point) so that no benchmark module imports `tools.bench`,
which `python -m tools.bench` would otherwise load a second time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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


def api_token(args: argparse.Namespace) -> str:
    """--token, else the first of $SANDBOX_API_TOKENS, else the token `make up` keeps in .run/api-token."""
    token: str = args.token or os.environ.get("SANDBOX_API_TOKENS", "").split(",")[0]
    saved = Path(getattr(args, "run_dir", ".run")) / "api-token"
    if not token and saved.exists():
        token = saved.read_text().strip()
    return token


def api_client(args: argparse.Namespace) -> httpx.Client:
    return httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {api_token(args)}"}, timeout=900)


def machine_brief(engine: docker.DockerClient) -> dict[str, Any]:
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
