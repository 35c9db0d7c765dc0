"""Fault injection for drills: `python -m tools.chaos ...` (or `make chaos FAULT=...`).

Each fault is one an operator must be able to recognise on the dashboard as
infrastructure, never as the model: a rollout's container removed, the Docker engine
stopped and started, a worker killed, Redis unavailable for a moment. Processes are only
touched through the pidfiles `make up` wrote (.run/*.pid), never by name.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from sandbox.config import get_settings
from sandbox.domain.rollout import READY
from sandbox.store import Store

ROOT = Path(__file__).resolve().parent.parent


def _pid(run_dir: Path, name: str) -> int:
    path = run_dir / f"{name}.pid"
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{name} was not started by `make up` here ({path}): refusing to touch it ({exc})") from exc
    return pid


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def remove_container(args: argparse.Namespace) -> None:
    import docker

    s = get_settings()
    store = Store.from_url(s.redis_url, s.key_prefix, s.lifecycle.retention_s, max_connections=4)
    ready = [r for r in store.rollouts.live() if r.state == READY and r.host == s.host_id]
    if args.rollout:
        ready = [r for r in ready if r.rollout_id == args.rollout]
    if not ready:
        raise SystemExit("no ready rollout on this host to break")
    victim = random.choice(ready)
    docker.DockerClient(base_url=s.docker_host).api.remove_container(victim.container_name, force=True)
    print(f"removed the container of rollout {victim.rollout_id!r} ({victim.container_name}); "
          "its next call must answer 503 sandbox_lost")  # fmt: skip


def engine_restart(args: argparse.Namespace) -> None:
    pid = _pid(args.run_dir, "dockerd")
    os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, 60):
        raise SystemExit(f"dockerd (pid {pid}) did not stop within 60 s")
    print(f"Docker engine stopped; down for {args.seconds:g} s", flush=True)
    time.sleep(args.seconds)
    subprocess.run(["bash", str(ROOT / "deploy" / "deps.sh")], check=True)
    print("Docker engine started again; rollouts whose containers died are now lost (sandbox_lost)")


def kill_worker(args: argparse.Namespace) -> None:
    pid = _pid(args.run_dir, "worker")
    # Its process group: the embedded beat runs as a child and must die with it.
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    _wait_gone(pid, 10)
    print(f"worker (pid {pid}) killed with SIGKILL; calls in flight end as worker_lost, queued ones as queue_timeout")
    if args.restart_after is not None:
        time.sleep(args.restart_after)
        subprocess.run(["bash", str(ROOT / "deploy" / "up.sh")], check=True, stdout=subprocess.DEVNULL)
        print("worker started again")


def redis_outage(args: argparse.Namespace) -> None:
    pid = _pid(args.run_dir, "redis")
    os.kill(pid, signal.SIGTERM)  # redis-server flushes its append-only file on SIGTERM
    if not _wait_gone(pid, 30):
        raise SystemExit(f"redis (pid {pid}) did not stop within 30 s")
    print(f"Redis stopped; calls answer 503 store_unavailable for {args.seconds:g} s", flush=True)
    time.sleep(args.seconds)
    subprocess.run(["bash", str(ROOT / "deploy" / "deps.sh")], check=True, stdout=subprocess.DEVNULL)
    print("Redis started again from its append-only file")


def build_parser() -> argparse.ArgumentParser:
    chaos = argparse.ArgumentParser(
        prog="python -m tools.chaos", description="inject a fault for a drill (see docs/runbook.md)"
    )
    chaos.add_argument("--run-dir", type=Path, default=ROOT / ".run", help="where `make up` keeps its pidfiles")
    kinds = chaos.add_subparsers(dest="fault", required=True)
    rc = kinds.add_parser("remove-container", help="remove a (random) ready rollout's container")
    rc.add_argument("--rollout", help="this rollout instead of a random one")
    rc.set_defaults(func=remove_container)
    er = kinds.add_parser("engine-restart", help="stop the Docker engine make up started, then start it")
    er.add_argument("--seconds", type=float, default=5.0, help="how long the engine stays down")
    er.set_defaults(func=engine_restart)
    kw = kinds.add_parser("kill-worker", help="SIGKILL the worker make up started")
    kw.add_argument("--restart-after", type=float, default=None, help="start it again after this many seconds")
    kw.set_defaults(func=kill_worker)
    ro = kinds.add_parser("redis-outage", help="stop the Redis make up started, then start it again")
    ro.add_argument("--seconds", type=float, default=5.0)
    ro.set_defaults(func=redis_outage)
    return chaos


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
