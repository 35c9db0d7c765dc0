"""`python -m tools.bench archive`: Redis stays bounded over a long training run, and nothing is lost.

Simulates `--steps` training steps of `--rollouts` rollouts x `--calls` calls x `--call-bytes`
bytes of recorded output (500 x 30 x 8 KiB: over 100 MB of trajectory a step), through the
store's own code: each rollout is created, its calls recorded one by one (CallStore.record),
then it ends (endings.end_rollout), which archives it (store/archive.py) and lets Redis drop
its keys after `--redis-ttl` seconds. No containers: what is measured is where the records
live, not how commands run. Redis' used memory is sampled after every step; at the end every
rollout's trajectory is read back through the store (from the archive, Redis having let it go)
and checked call by call.

Runs against its own Redis key prefix (on SANDBOX_REDIS_URL, default the local one) and its own
archive directory, both removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import string
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import redis

from sandbox.domain.calls import CallResult
from sandbox.domain.rollout import RELEASED
from sandbox.endings import end_rollout
from sandbox.store import Store


def run_archive(args: argparse.Namespace) -> None:
    prefix = f"bench-archive-{uuid.uuid4().hex[:8]}"
    archive_dir = Path(tempfile.mkdtemp(prefix="bench-archive-", dir=args.dir))
    client = redis.Redis.from_url(args.redis_url, decode_responses=True)
    baseline = _used_memory(client)
    print(f"Redis used memory before: {baseline / 2**20:.1f} MiB; archive in {archive_dir}", flush=True)
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        with ProcessPoolExecutor(args.processes) as pool:
            for step in range(args.steps):
                t0 = time.monotonic()
                shards = [(args, prefix, str(archive_dir), step, shard) for shard in range(args.processes)]
                written = sum(pool.map(_one_step, shards))
                used = _used_memory(client)
                samples.append({"step": step + 1, "redis_used_mib": round(used / 2**20, 1),
                                "seconds": round(time.monotonic() - t0, 2), "archived_rollouts": written})  # fmt: skip
                if step % 10 == 0 or step == args.steps - 1:
                    print(f"  step {step + 1}/{args.steps}: Redis {used / 2**20:.1f} MiB, "
                          f"{time.monotonic() - t0:.1f} s", flush=True)  # fmt: skip
            time.sleep(args.redis_ttl + 2)  # the last steps' keys expire too
            settled = _used_memory(client)
            print("reading every trajectory back ...", flush=True)
            checks = [(args, prefix, str(archive_dir), step, shard)
                      for step in range(args.steps) for shard in range(args.processes)]  # fmt: skip
            verified = sum(pool.map(_verify, checks))
    finally:
        leftovers = list(client.scan_iter(f"{prefix}:*", count=1000))
        for start in range(0, len(leftovers), 1000):
            client.delete(*leftovers[start : start + 1000])
        disk = sum(p.stat().st_size for p in archive_dir.rglob("*.json.gz"))
        if not args.keep:
            shutil.rmtree(archive_dir, ignore_errors=True)
    total = args.steps * args.rollouts
    result = {
        "steps": args.steps,
        "rollouts_per_step": args.rollouts,
        "calls_per_rollout": args.calls,
        "call_bytes": args.call_bytes,
        "trajectory_mb_per_step": round(args.rollouts * args.calls * args.call_bytes / 1e6, 1),
        "redis_ttl_s": args.redis_ttl,
        "redis_used_mib_before": round(baseline / 2**20, 1),
        "redis_used_mib_max": max(s["redis_used_mib"] for s in samples),
        "redis_used_mib_last_step": samples[-1]["redis_used_mib"],
        "redis_used_mib_settled": round(settled / 2**20, 1),
        "archive_gib_on_disk": round(disk / 2**30, 2),
        "rollouts": total,
        "trajectories_verified": verified,
        "seconds": round(time.monotonic() - started, 1),
        "samples": samples,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    if verified != total:
        raise SystemExit(f"{total - verified} of {total} trajectories could not be read back whole")


def _store(args: argparse.Namespace, prefix: str, archive_dir: str) -> Store:
    return Store.from_url(args.redis_url, prefix, retention_s=7 * 86400, max_connections=8,
                          archive_dir=Path(archive_dir), archived_ttl_s=args.redis_ttl)  # fmt: skip


def _rids(args: argparse.Namespace, step: int, shard: int) -> list[str]:
    return [f"s{step}-r{i}" for i in range(shard, args.rollouts, args.processes)]


def _outputs(rng: random.Random, size: int, variants: int = 64) -> list[str]:
    """Command outputs as they look: lines of words and paths (they compress like the real thing).
    Made once per process: generating 15,000 of them a step would cost more than storing them."""
    words = ["src/", "test_", ".py", "def ", "return ", "import ", "error", "ok", "  ", "\n", "==", "0x"]
    alphabet = string.ascii_lowercase + string.digits
    made = []
    for _ in range(variants):
        out: list[str] = []
        length = 0
        while length < size:
            piece = rng.choice(words) + "".join(rng.choices(alphabet, k=rng.randint(2, 9)))
            out.append(piece)
            length += len(piece)
        made.append("".join(out)[:size])
    return made


def _one_step(job: tuple[argparse.Namespace, str, str, int, int]) -> int:
    args, prefix, archive_dir, step, shard = job
    store = _store(args, prefix, archive_dir)
    rng = random.Random(step * 1000 + shard)
    outputs = _outputs(rng, args.call_bytes)
    archived = 0
    for rid in _rids(args, step, shard):
        store.rollouts.ensure(rid, "default", None)
        for i in range(args.calls):
            now = time.time()
            result = CallResult(f"{rid}-c{i}", "fc", "shell", {"command": f"step {i}"}, "ok", "none",
                                rng.choice(outputs), 0, 1.0, args.call_bytes, 0, now, now)  # fmt: skip
            store.calls.record(rid, result)
        if end_rollout(store, rid, RELEASED, "bench", "released"):
            archived += 1
    return archived


def _verify(job: tuple[argparse.Namespace, str, str, int, int]) -> int:
    args, prefix, archive_dir, step, shard = job
    store = _store(args, prefix, archive_dir)
    whole = 0
    for rid in _rids(args, step, shard):
        calls = store.calls.trajectory(rid)  # Redis has let it go: this comes from the archive
        if [c["call_id"] for c in calls] == [f"{rid}-c{i}" for i in range(args.calls)] and all(
            len(c["output"]) == args.call_bytes for c in calls
        ):
            whole += 1
    return whole


def _used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def add_parser(kinds: Any, stack_args: Any) -> None:
    arc = kinds.add_parser("archive", help="200 training steps through the store: Redis bounded, every trajectory kept")
    arc.add_argument("--redis-url", default=os.environ.get("SANDBOX_REDIS_URL", "redis://127.0.0.1:6379/0"))
    arc.add_argument("--steps", type=int, default=200)
    arc.add_argument("--rollouts", type=int, default=500, help="rollouts per step")
    arc.add_argument("--calls", type=int, default=30, help="calls per rollout")
    arc.add_argument("--call-bytes", type=int, default=8192, help="recorded output per call")
    arc.add_argument("--redis-ttl", type=float, default=30.0, help="SANDBOX_ARCHIVE__REDIS_TTL_S of the run, s")
    arc.add_argument("--processes", type=int, default=2, help="processes writing at once (the machine's cores)")
    arc.add_argument("--dir", default=None, help="where the archive directory is made (default: the temp dir)")
    arc.add_argument("--keep", action="store_true", help="keep the archive directory")
    arc.add_argument("--json", type=Path, default=Path("docs/benchmarks-archive.json"))
    arc.set_defaults(func=run_archive)
