"""`sandbox` command: run the API or a worker with the right flags from Settings."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .config import get_settings


def run_api(args: argparse.Namespace) -> None:
    import uvicorn

    s = get_settings()
    workers = args.workers or s.api_workers
    port = args.port or s.api_port
    if workers > 1:
        # Each uvicorn worker counts in its own files here; a scrape (answered by any of
        # them) merges them all. Emptied at start: counters restart with the service.
        metrics_dir = Path(tempfile.gettempdir()) / f"sandbox-api-metrics-{port}"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    uvicorn.run(
        "sandbox.api.app:create_app",
        factory=True,
        host=args.host or s.api_host,
        port=port,
        log_level=args.log_level,
        # One process serves hundreds of calls at once (they wait on Redis in threads);
        # more processes spread the JSON and HTTP work over more cores.
        workers=workers,
        # An access-log line per tool call costs CPU the sandboxes need; ask for it with --access-log.
        access_log=args.access_log,
        timeout_keep_alive=30,
        backlog=2048,
    )


def run_worker(args: argparse.Namespace) -> None:
    s = get_settings()
    queues = [s.provision_queue, s.host_queue, s.maintenance_queue]
    argv = [
        sys.executable, "-m", "celery", "-A", "sandbox.worker.app:celery_app", "worker",
        "--pool", "threads",
        "--concurrency", str(s.worker_concurrency),
        "--queues", ",".join(queues),
        "--hostname", f"sandbox-{s.instance}@{s.host_id}",
        "--loglevel", args.log_level.upper(),
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    if args.beat:
        argv += ["--beat", "--schedule", args.beat_schedule]
    os.execv(argv[0], argv)  # celery's own CLI in this interpreter, so signals reach it directly


def run_beat(args: argparse.Namespace) -> None:
    """Beat alone: with many sandbox hosts, exactly one process in the cluster keeps the schedule."""
    argv = [
        sys.executable, "-m", "celery", "-A", "sandbox.worker.app:celery_app", "beat",
        "--schedule", args.beat_schedule,
        "--loglevel", args.log_level.upper(),
    ]  # fmt: skip
    os.execv(argv[0], argv)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    api = sub.add_parser("api", help="run the HTTP API (uvicorn)")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument("--workers", type=int, default=0, help="uvicorn worker processes (default SANDBOX_API_WORKERS)")
    api.add_argument("--log-level", default="info")
    api.add_argument("--access-log", action="store_true", help="log every request (costs CPU under load)")
    api.set_defaults(func=run_api)
    worker = sub.add_parser("worker", help="run a Celery worker for this sandbox host")
    worker.add_argument("--beat", action="store_true", help="also run beat (reaper and reconciler schedule)")
    worker.add_argument("--beat-schedule", default=".run/celerybeat-schedule")
    # INFO logs two lines per task (received, succeeded): CPU the sandboxes need under load.
    worker.add_argument("--log-level", default="warning")
    worker.set_defaults(func=run_worker)
    beat = sub.add_parser("beat", help="run Celery beat alone (one per cluster; workers then run without --beat)")
    beat.add_argument("--beat-schedule", default=".run/celerybeat-schedule")
    beat.add_argument("--log-level", default="warning")
    beat.set_defaults(func=run_beat)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
