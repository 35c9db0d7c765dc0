"""Benchmarks against a running stack: `python -m tools.bench <kind>`, one subcommand per kind.

This module is the entry point: the command line and nothing else. Each subcommand lives in a
module of its own: `latency` in bench_latency.py, `environment` in bench_environment.py, and
`burst` in burst.py (which measures with the burst_* modules and reports with burst_report.py), and
`fork` in bench_fork.py, `grading` in bench_grading.py, `runtime` in bench_runtime.py, `client`
(the SDK's overhead, files against docker cp) in bench_client.py, `e2b` (E2B's SDK against
this API's own routes) in bench_e2b.py, and `archive` (Redis bounded over 200 training steps) in
bench_archive.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.bench_archive import add_parser as add_archive_parser
from tools.bench_client import run_client
from tools.bench_e2b import run_e2b
from tools.bench_environment import run_environment
from tools.bench_fork import run_fork
from tools.bench_grading import run_grading
from tools.bench_latency import run_latency
from tools.bench_runtime import run_runtime
from tools.burst import run_burst


def _stack_args(parser: argparse.ArgumentParser) -> None:
    """Where the stack under test answers, and how to authenticate to it."""
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", default="", help="default: $SANDBOX_API_TOKENS, else .run/api-token")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description="benchmarks against a running stack")
    kinds = parser.add_subparsers(dest="kind", required=True)
    lat = kinds.add_parser("latency", help="provisioning and single-call latency, with engine baselines")
    _stack_args(lat)
    lat.add_argument("--rollouts", type=int, default=10)
    lat.add_argument("--calls", type=int, default=300)
    lat.add_argument("--image", default="rollout-sandbox:bookworm")
    lat.add_argument("--json", type=Path, help="also write the figures to this file")
    lat.set_defaults(func=run_latency)
    envb = kinds.add_parser("environment", help="environment preparation, rollout start and grader latency")
    _stack_args(envb)
    envb.add_argument("--repo", type=Path, required=True, help="a git repository under SANDBOX_WORKSPACE_ROOTS")
    envb.add_argument("--commit", default="HEAD")
    envb.add_argument("--rollouts", type=int, default=10)
    envb.add_argument("--grades", type=int, default=100)
    envb.add_argument("--json", type=Path)
    envb.set_defaults(func=run_environment)
    bur = kinds.add_parser(
        "burst", help="N new rollouts at once (warm, cold), sustained and single-call load, with baselines"
    )
    _stack_args(bur)
    bur.add_argument("--rollouts", type=int, default=500, help="N: new rollouts in each burst")
    bur.add_argument("--calls", type=int, default=4, help="K: calls per rollout (echo, ls, read_file, grep; cycled)")
    bur.add_argument(
        "--scenarios",
        type=_scenarios,
        default=["warm", "cold"],
        help="warm,cold (default both); none: only the sustained and single-call phases",
    )
    bur.add_argument("--sustained-seconds", type=float, default=20.0, help="each sustained phase, and raw exec, s")
    bur.add_argument("--sustained-rollouts", type=int, default=32)
    bur.add_argument("--json", type=Path, default=Path("docs/benchmarks.json"))
    bur.add_argument("--markdown", type=Path, default=Path("docs/benchmarks.md"))
    bur.add_argument("--skip-baselines", action="store_true", help="no raw docker run / docker exec baselines")
    bur.add_argument("--image", default="rollout-sandbox:bookworm", help="image of the raw docker baselines")
    bur.add_argument("--run-dir", type=Path, default=Path(".run"), help="holds api.pid and worker.pid (memory)")
    bur.add_argument("--pool-timeout", type=float, default=900.0, help="longest wait for the warm pool to fill, s")
    bur.add_argument(
        "--live",
        type=int,
        default=500,
        help="idle rollouts live on the host during the loaded phases (httpx, CPU per call, idle cost); 0: none",
    )
    bur.add_argument("--idle-seconds", type=float, default=20.0, help="each idle-cost sample (0 and --live live), s")
    bur.add_argument(
        "--only",
        choices=["all", "loaded"],
        default="all",
        help="loaded: only the loaded phases (--live); the other figures already in --json are kept",
    )
    bur.set_defaults(func=run_burst)
    frk = kinds.add_parser("fork", help="fork of a changed rollout into N children, against N fresh rollouts")
    _stack_args(frk)
    frk.add_argument("--children", type=int, default=8, help="N: children per fork, fresh rollouts per baseline")
    frk.add_argument("--megabytes", type=int, default=100, help="files the parent writes first, as 1 MiB files")
    frk.add_argument("--rounds", type=int, default=5, help="rounds, each a baseline then a fork")
    frk.add_argument("--settle", type=float, default=1.0, help="pause after each release, s (cleanup not timed)")
    frk.add_argument(
        "--name-children",
        action="store_true",
        help='fork with {"rollout_ids": [...]} instead of {"count": N} (an interrupted fork can still be released)',
    )
    frk.add_argument("--json", type=Path, default=Path("docs/benchmarks-fork.json"))
    frk.set_defaults(func=run_fork)
    grd = kinds.add_parser("grading", help="the tests grader against the bare test run, and a burst of gradings")
    _stack_args(grd)
    grd.add_argument("--rounds", type=int, default=20, help="latency rounds (0: none)")
    grd.add_argument("--burst", type=int, default=500, help="grade requests sent at once (0: none)")
    grd.add_argument(
        "--workspace-root", type=Path, default=Path("workspaces").resolve(), help="one of SANDBOX_WORKSPACE_ROOTS"
    )
    grd.add_argument("--json", type=Path, default=Path("docs/benchmarks-grading.json"))
    grd.set_defaults(func=run_grading)
    rtm = kinds.add_parser("runtime", help="what gVisor (runsc) costs against runc, first calls and calls")
    _stack_args(rtm)
    rtm.add_argument("--rollouts", type=int, default=10, help="new rollouts per runtime, one after another")
    rtm.add_argument("--calls", type=int, default=100, help="calls on one rollout per runtime")
    rtm.add_argument("--json", type=Path, default=Path("docs/benchmarks-runtime.json"))
    rtm.set_defaults(func=run_runtime)
    cli = kinds.add_parser("client", help="the Python SDK's overhead per call, and file transfers against docker cp")
    _stack_args(cli)
    cli.add_argument("--calls", type=int, default=300, help="exec calls through each of the SDK and raw httpx")
    cli.add_argument("--warmup", type=int, default=20, help="calls of each not counted")
    cli.add_argument("--megabytes", type=int, default=50, help="size of the tree moved in and out")
    cli.add_argument("--files", type=int, default=200, help="files in the tree")
    cli.add_argument("--rounds", type=int, default=5, help="transfer rounds, each side once per round")
    cli.add_argument("--json", type=Path, default=Path("docs/benchmarks-client.json"))
    cli.set_defaults(func=run_client)
    e2b = kinds.add_parser("e2b", help="E2B's SDK (create + first command, a command) against this API's own routes")
    _stack_args(e2b)
    e2b.add_argument("--rounds", type=int, default=20, help="new sandboxes (and new rollouts) timed, one at a time")
    e2b.add_argument("--calls", type=int, default=200, help="commands on a live sandbox through each of the two")
    e2b.add_argument("--live", type=int, default=0, help="idle rollouts provisioned first, as during a training step")
    e2b.add_argument("--json", type=Path, default=Path("docs/benchmarks-e2b.json"))
    e2b.set_defaults(func=run_e2b)
    add_archive_parser(kinds, _stack_args)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


def _scenarios(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:  # e.g. to compare CPU per call between two builds in a few minutes
        return []
    if not names or set(names) - {"warm", "cold"}:
        raise argparse.ArgumentTypeError(f"scenarios are warm and/or cold, comma-separated, not {text!r}")
    return names


if __name__ == "__main__":
    main()
