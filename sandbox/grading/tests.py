"""The `tests` grader's score, from what a test run reported (pure; the run is the guest's run_tests).

Conservative everywhere, because the agent's code ran inside the test run: a test counts as
passed only when every source that mentions it says so (the guest's pytest plugin and any
JUnit XML), a listed test nobody reported is failed, and a pytest session that did not reach
its end (the agent's code exited the process early) scores 0.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Any

from ..domain.tests import TestPlan
from .scores import clamp01

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"
OUTPUT_TAIL_CHARS = 2000
MAX_LISTED_IN_RESPONSE = 1000


@dataclass
class RunReport:
    """What the runner said, per test id: one of PASSED, FAILED, ERROR, SKIPPED."""

    statuses: dict[str, str] = field(default_factory=dict)
    plugin_ids: set[str] = field(default_factory=set)  # the ids the pytest plugin reported (node ids)
    collect_errors: list[str] = field(default_factory=list)  # pytest node ids of modules that did not import
    pytest_started: bool = False
    pytest_finished: bool = False

    def status_of(self, test_id: str) -> str | None:
        if test_id in self.statuses:
            return self.statuses[test_id]
        if any(test_id.startswith(module + "::") or test_id == module for module in self.collect_errors):
            return ERROR
        return None

    def note(self, test_id: str, status: str) -> None:
        """Failure wins: once any source says a test did not pass, it did not."""
        if self.statuses.get(test_id, PASSED) == PASSED:
            self.statuses[test_id] = status


def read_run(reports: str, junit: list[str]) -> RunReport:
    run = RunReport()
    phases: dict[str, dict[str, str]] = {}
    for line in reports.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("event")
        if kind == "start":
            run.pytest_started = True
        elif kind == "finish":
            run.pytest_finished = True
            break  # what follows came after the session ended (an atexit handler): never counted
        elif kind == "collect_error" and isinstance(event.get("nodeid"), str):
            run.collect_errors.append(event["nodeid"])
        elif kind == "test" and isinstance(event.get("nodeid"), str):
            seen = phases.setdefault(event["nodeid"], {})
            when, outcome = str(event.get("when")), str(event.get("outcome"))
            # Failure wins here too: a second report of a phase (a forged line the agent's code
            # wrote into the channel during the session) never turns a failure into a pass.
            if _RANK.get(outcome, 0) >= _RANK.get(seen.get(when, ""), -1):
                seen[when] = outcome
    for nodeid, seen in phases.items():
        run.note(nodeid, _pytest_status(seen))
        run.plugin_ids.add(nodeid)
    for text in junit:
        for test_id, status in _junit_statuses(text):
            run.note(test_id, status)
    return run


# How bad a phase's outcome is. An unknown one ranks with a pass, so it replaces a pass, and is never read as one.
_RANK = {"passed": 0, "xpassed": 0, "skipped": 1, "xfailed": 1, "failed": 2}


def _pytest_status(phases: dict[str, str]) -> str:
    if phases.get("setup") == "failed" or phases.get("teardown") == "failed":
        return ERROR
    call = phases.get("call")
    if call in ("passed", "xpassed"):
        return PASSED
    if call == "failed":
        return FAILED
    return SKIPPED  # skipped in setup, xfailed, or never called


def _junit_statuses(text: str) -> list[tuple[str, str]]:
    """(classname::name, status) of each testcase; an unparsable report says nothing."""
    try:
        root = ElementTree.fromstring(text)
    except (ElementTree.ParseError, ValueError):
        return []
    found = []
    for case in root.iter("testcase"):
        name = case.get("name") or ""
        classname = case.get("classname") or ""
        test_id = f"{classname}::{name}" if classname else name
        tags = {child.tag for child in case}
        status = ERROR if "error" in tags else FAILED if "failure" in tags else SKIPPED if "skipped" in tags else PASSED
        found.append((test_id, status))
    return found


def score_tests(plan: TestPlan, outcome: str, reason: str, output: str, run: dict[str, Any]) -> dict[str, Any]:
    """{"score", "tests": {...}} for one run; `outcome`/`reason` say whether the run itself went (executor)."""
    report = read_run(str(run.get("reports") or ""), [str(t) for t in run.get("junit") or []])
    timed_out = bool(run.get("timed_out"))
    exit_code = run.get("exit_code")
    passed: list[str] = []
    failed: list[str] = []
    if plan.listed:
        for test_id in dict.fromkeys(plan.listed):
            (passed if report.status_of(test_id) == PASSED else failed).append(test_id)
    else:  # every test the run reported; under pytest by node id only (its JUnit file names the same tests)
        ids = report.plugin_ids if report.pytest_started else set(report.statuses)
        passed = [t for t, s in report.statuses.items() if t in ids and s == PASSED]
        failed = [t for t, s in report.statuses.items() if t in ids and s != PASSED] + report.collect_errors
    score, why = _score(plan, reason if outcome != "ok" else "", timed_out, exit_code, report, passed, failed, run)
    tests = {
        "passed": passed[:MAX_LISTED_IN_RESPONSE],
        "failed": failed[:MAX_LISTED_IN_RESPONSE],
        "exit_code": exit_code,
        "timed_out": timed_out,
        "duration_s": round(float(run.get("duration_ms") or 0.0) / 1000, 3),
        "output_tail": output[-OUTPUT_TAIL_CHARS:],
        "reason": why,
    }
    if plan.score == "reward_file":
        tests["reward"] = run.get("reward")
    return {"score": score, "tests": tests}


def _score(
    plan: TestPlan,
    not_run: str,
    timed_out: bool,
    exit_code: Any,
    report: RunReport,
    passed: list[str],
    failed: list[str],
    run: dict[str, Any],
) -> tuple[float, str]:
    """(score, reason): the reason says why a score is what it is, for people reading the response."""
    if not_run:
        return 0.0, not_run  # e.g. tests_setup_failed, pids_exhausted
    if timed_out:
        return 0.0, "timed_out"
    if report.pytest_started and not report.pytest_finished:
        return 0.0, "unfinished"  # the session never reached its end: something exited the process
    if plan.score == "reward_file":
        return _reward(run.get("reward"))
    if plan.listed:
        if plan.score == "fraction":
            return len(passed) / len(plan.listed), "fraction"
        return (1.0, "passed") if not failed else (0.0, "tests_failed")
    # No list: the command's exit status, and every test the run reported, decide.
    reported = passed or failed
    if plan.score == "fraction" and reported:
        return len(passed) / (len(passed) + len(failed)), "fraction"
    if exit_code != 0:
        return 0.0, "command_failed"
    if report.pytest_started and not passed:
        return 0.0, "no_tests_ran"  # everything skipped or deselected
    return (1.0, "passed") if not failed else (0.0, "tests_failed")


def _reward(text: Any) -> tuple[float, str]:
    if not isinstance(text, str) or not text.strip():
        return 0.0, "no_reward"
    try:
        value = float(text.strip().split()[0])
    except ValueError:
        return 0.0, "no_reward"
    if not math.isfinite(value):
        return 0.0, "no_reward"
    return clamp01(value), "reward_file"
