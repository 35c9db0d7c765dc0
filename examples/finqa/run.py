"""The FinQA example end to end, against a running service (`make up`):

    .venv/bin/python -m examples.finqa.run [--url URL] [--token TOKEN] [--corpus DIR]

generates the corpus (examples/finqa/generate.py) under the service's workspace roots,
registers it as the `finqa` environment (a `dir` workspace, `max_tool_calls: 10`), plays
three scripted agents through the real tool endpoints, grades each with the `numeric`
grader, prints what it got, and releases the rollouts. Exits 1 if a rollout did not end
as expected, 2 if the service failed us (an infra error is never a score).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from . import generate
from .agents import AGENTS, Task
from .client import InfraFailure, Rollout, register_environment
from .questions import question_of

ROOT = Path(__file__).resolve().parents[2]  # the checkout: make up allows workspaces/ under it
ENVIRONMENT = "finqa"
BUDGET = 10
EXHAUSTED = "budget_exhausted"  # X-Sandbox-Reason of a call past the budget


@dataclass(frozen=True)
class Scenario:
    agent: str
    metric: str  # the kind of question it gets
    by_symbol: bool  # the question names the company by its trading symbol
    expected_score: float
    expected_last_reason: str = "none"


SCENARIOS = (
    Scenario("careful", "operating_margin", by_symbol=True, expected_score=1.0),
    Scenario("sloppy", "operating_margin", by_symbol=False, expected_score=0.0),
    Scenario("wanderer", "revenue_growth", by_symbol=False, expected_score=0.0, expected_last_reason=EXHAUSTED),
)


@dataclass(frozen=True)
class Played:
    scenario: Scenario
    rollout_id: str
    question: str
    answer: str
    reference: str
    score: float
    tool_calls: int
    last_reason: str
    last_output: str
    problems: tuple[str, ...]


def environment_spec(corpus: Path) -> dict[str, Any]:
    return {"workspace": {"type": "dir", "path": str(corpus)}, "max_tool_calls": BUDGET}


def pick(rows: list[dict[str, Any]], scenario: Scenario, taken: set[str]) -> dict[str, Any]:
    """The first question of the scenario's kind about a company not used yet (row 0: the seed talk's ACME)."""
    for row in rows:
        meta = row["meta"]
        if (
            meta["metric"] == scenario.metric
            and meta["cik"] not in taken
            and ((meta["asked_as"] == meta["ticker"]) == scenario.by_symbol)
        ):
            taken.add(meta["cik"])
            return row
    raise LookupError(f"no {scenario.metric} question for {scenario.agent}")


def play(http: httpx.Client, row: dict[str, Any], scenario: Scenario, tag: str) -> Played:
    """One rollout: the agent's calls, its final answer graded, its container released."""
    meta = row["meta"]
    rollout = Rollout(http, f"{ENVIRONMENT}-{scenario.agent}-{tag}", row)
    try:
        task = Task(meta["asked_as"], meta["fiscal_year"], scenario.by_symbol)
        answer = AGENTS[scenario.agent](rollout, task)
        grade = rollout.grade(answer)
        recorded = rollout.trajectory()
    finally:
        rollout.release()  # idempotent: grading already released it unless it failed first
    last, last_output = (recorded[-1]["reason"], recorded[-1]["output"]) if recorded else ("", "")
    problems = []
    if grade["score"] != scenario.expected_score:
        problems.append(f"score {grade['score']}, expected {scenario.expected_score}")
    if last != scenario.expected_last_reason:
        problems.append(f"last call's reason {last!r}, expected {scenario.expected_last_reason!r}")
    if grade["tool_calls"] != len(rollout.calls) or len(recorded) != len(rollout.calls):
        problems.append(f"{len(rollout.calls)} calls made, {len(recorded)} recorded, {grade['tool_calls']} graded")
    if scenario.expected_last_reason == EXHAUSTED and len(rollout.calls) != BUDGET + 1:
        problems.append(f"{len(rollout.calls)} calls, expected the budget of {BUDGET} and one refused")
    return Played(scenario, rollout.rollout_id, question_of(row), answer, row["reference_answer"],
                  grade["score"], grade["tool_calls"], last, last_output, tuple(problems))  # fmt: skip


def play_all(http: httpx.Client, rows: list[dict[str, Any]]) -> list[Played]:
    tag = uuid.uuid4().hex[:6]  # a rollout id is used once: a released one answers 409
    taken: set[str] = set()
    return [play(http, pick(rows, s, taken), s, tag) for s in SCENARIOS]


def short_answer(answer: str) -> str:
    head, marker, tail = answer.rpartition("Answer:")
    return tail.strip() if marker else "(no number)" if not any(ch.isdigit() for ch in answer) else answer[:24]


def table(results: list[Played]) -> str:
    lines = [f"{'rollout':<24} {'calls':>5}  {'answer':<12} {'reference':<10} {'score':>5}  last call"]
    for p in results:
        lines.append(
            f"{p.rollout_id:<24} {p.tool_calls:>5}  {short_answer(p.answer):<12} {p.reference:<10} "
            f"{p.score:>5.1f}  {p.last_reason}"
        )
    return "\n".join(lines)


def api_token(given: str) -> str:
    """--token, else the first of $SANDBOX_API_TOKENS, else the token `make up` keeps in .run/api-token."""
    token = given or os.environ.get("SANDBOX_API_TOKENS", "").split(",")[0]
    saved = ROOT / ".run" / "api-token"
    if not token and saved.exists():
        token = saved.read_text().strip()
    if not token:
        raise SystemExit("no API token: pass --token, set SANDBOX_API_TOKENS, or run make up")
    return token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("SANDBOX_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default="", help="default: $SANDBOX_API_TOKENS, else .run/api-token")
    parser.add_argument("--corpus", type=Path, default=ROOT / "workspaces" / "finqa-corpus",
                        help="output directory, under the service's SANDBOX_WORKSPACE_ROOTS")  # fmt: skip
    args = parser.parse_args(argv)

    started = time.monotonic()
    g = generate.write(args.corpus)
    print(f"corpus: {g.documents:,} filings ({g.bytes / 1e6:.1f} MB), {g.questions:,} questions, "
          f"in {g.corpus.parent} ({time.monotonic() - started:.1f} s)")  # fmt: skip
    rows = generate.load_dataset(g.dataset)
    headers = {"Authorization": f"Bearer {api_token(args.token)}"}
    # The first call of the first rollout prepares the environment's image: allow for it.
    with httpx.Client(base_url=args.url, headers=headers, timeout=600) as http:
        try:
            env = register_environment(http, ENVIRONMENT, environment_spec(g.corpus))
            print(f"environment {ENVIRONMENT}: dir workspace of {env['file_count']:,} files, "
                  f"max_tool_calls {env['max_tool_calls']}, digest {env['definition_digest'][:12]}")  # fmt: skip
            started = time.monotonic()
            results = play_all(http, rows)
            played_s = time.monotonic() - started
            prepared = http.get(f"/v1/environments/{ENVIRONMENT}").json()["preparation"]
        except InfraFailure as exc:
            print(f"the service failed (not a score): {exc}", file=sys.stderr)
            return 2
    # The same corpus (same seed, fixed mtimes) keeps its digest, so a second run reuses the image.
    images = ", ".join(f"{host} {p['duration_s']:.1f} s" for host, p in prepared.items() if p.get("duration_s"))
    print(f"{len(results)} rollouts played and graded in {played_s:.1f} s (image prepared once per host: {images})\n")
    for p in results:
        print(f"{p.rollout_id}: {p.question}")
        if p.last_reason != "none":
            print(f"  call {p.tool_calls} ({p.last_reason}): {p.last_output.strip()}")
        print(f"  final answer: {p.answer}")
    print()
    print(table(results))
    failed = [(p.rollout_id, problem) for p in results for problem in p.problems]
    for rid, problem in failed:
        print(f"FAILED {rid}: {problem}", file=sys.stderr)
    if not failed:
        print(f"\nall {len(results)} rollouts ended as expected")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
