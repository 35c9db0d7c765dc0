"""`python -m tools.bench client`: what the Python SDK (client/) costs, and how fast files move.

1. SDK overhead per call: the same exec (`echo`) on one rollout through `Rollout.exec` and as a
   raw POST with httpx (the library the SDK uses, one pooled client each), interleaved call by
   call so both see the same server and machine. Target: the SDK within 10% of raw at p50.
2. Files: a tree of random (incompressible) files, SDK `upload_dir` / `download_dir` against
   `docker cp` of the same tree into / out of the same rollout's container, interleaved round by
   round. Both sides include making and unpacking the tar. Target: at least as fast as docker cp.
   (The two do not do the same thing: docker cp writes as root with the tar's owners, the SDK's
   upload writes as the sandbox user through the service, which is what a trainer needs.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from rollout_sandbox import Client
from tools.bench_common import api_token, percentile


def run_client(args: argparse.Namespace) -> None:
    token = api_token(args)
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "calls": args.calls, "tree_mb": args.megabytes}
    with Client(args.url, token) as client, client.rollout(f"bench-client-{uuid.uuid4().hex[:8]}") as rollout:
        rollout.exec("true", source="trainer")  # provisioned before anything is timed
        result["overhead"] = _overhead(args, token, rollout)
        _print_overhead(result["overhead"])
        container = str(rollout.info()["container_id"])
        with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
            tree = _make_tree(Path(tmp) / "tree", args.megabytes, args.files)
            result["files"] = _transfers(args, rollout, container, tree, Path(tmp))
    _print_files(result["files"], args.megabytes)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")


def _overhead(args: argparse.Namespace, token: str, rollout: Any) -> dict[str, Any]:
    raw = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    path = f"/v1/rollouts/{rollout.id}/exec"
    sdk_s: list[float] = []
    raw_s: list[float] = []
    for i in range(args.calls + args.warmup):
        started = time.perf_counter()
        rollout.exec(["echo", "hi"], source="trainer")
        sdk = time.perf_counter() - started
        started = time.perf_counter()
        body = {"argv": ["echo", "hi"], "source": "trainer", "merge_stderr": False, "request_id": uuid.uuid4().hex}
        r = raw.post(path, json=body)
        r.raise_for_status()
        r.json()
        direct = time.perf_counter() - started
        if i >= args.warmup:
            sdk_s.append(sdk)
            raw_s.append(direct)
    raw.close()
    out = {name: _ms(values) for name, values in (("sdk", sdk_s), ("raw_httpx", raw_s))}
    out["overhead_p50_pct"] = round((out["sdk"]["p50_ms"] / out["raw_httpx"]["p50_ms"] - 1) * 100, 1)
    return out


def _ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"p50_ms": round(percentile(ms, 50), 2), "p90_ms": round(percentile(ms, 90), 2),
            "mean_ms": round(statistics.fmean(ms), 2)}  # fmt: skip


def _make_tree(root: Path, megabytes: int, files: int) -> Path:
    size = megabytes * 1024 * 1024 // files
    for i in range(files):
        path = root / f"d{i % 10}" / f"sub{i % 3}" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    return root


def _transfers(args: argparse.Namespace, rollout: Any, container: str, tree: Path, tmp: Path) -> dict[str, Any]:
    times: dict[str, list[float]] = {"sdk_upload": [], "docker_cp_in": [], "sdk_download": [], "docker_cp_out": []}
    for i in range(args.rounds):
        rollout.exec(["rm", "-rf", "/workspace/up", "/workspace/cp"], source="trainer")
        subprocess.run(["docker", "exec", "-u", "0", container, "rm", "-rf", "/workspace/cp"], check=True)
        order = [("sdk", "docker"), ("docker", "sdk")][i % 2]  # neither side always goes first
        for side in order:
            if side == "sdk":
                times["sdk_upload"].append(_timed(lambda: rollout.upload_dir(tree, "/workspace/up")))
            else:
                times["docker_cp_in"].append(_timed(lambda: _docker_cp(f"{tree}/.", f"{container}:/workspace/cp")))
        for side in order:
            out = tmp / f"out-{side}-{i}"
            if side == "sdk":
                times["sdk_download"].append(_timed(lambda out=out: rollout.download_dir("/workspace/up", out)))
            else:
                out.mkdir()
                src = f"{container}:/workspace/cp/."
                times["docker_cp_out"].append(_timed(lambda out=out, src=src: _docker_cp(src, str(out))))
            shutil.rmtree(out)
    return {name: {"median_s": round(statistics.median(v), 3), "runs_s": [round(x, 3) for x in v]}
            for name, v in times.items()}  # fmt: skip


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _docker_cp(src: str, dst: str) -> None:
    subprocess.run(["docker", "cp", "-q", src, dst], check=True, capture_output=True)


def _print_overhead(o: dict[str, Any]) -> None:
    print(f"\n{'exec echo, one rollout':24} {'p50 ms':>8} {'p90 ms':>8} {'mean ms':>8}")
    for name in ("sdk", "raw_httpx"):
        row = o[name]
        print(f"{name:24} {row['p50_ms']:>8} {row['p90_ms']:>8} {row['mean_ms']:>8}")
    print(f"SDK overhead at p50: {o['overhead_p50_pct']:+.1f}% (target: within 10%)")


def _print_files(f: dict[str, Any], megabytes: int) -> None:
    print(f"\n{f'{megabytes} MiB tree':24} {'median s':>9} {'MiB/s':>8}")
    for name in ("sdk_upload", "docker_cp_in", "sdk_download", "docker_cp_out"):
        median = f[name]["median_s"]
        print(f"{name:24} {median:>9} {megabytes / median:>8.0f}")
