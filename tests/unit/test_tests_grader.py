"""The tests grader's pure parts: the plan from item and environment, reading a run's reports,
the score, and several graders at once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sandbox.domain.errors import InvalidGradeRequest
from sandbox.domain.tests import DEFAULT_REWARD_FILE, HARBOR_COMMAND, TestsSpec, parse_tests_spec, resolve_plan
from sandbox.grading.multi import GraderEntry, combine, parse_graders
from sandbox.grading.tests import read_run, score_tests

A, B, C = "t.py::a", "t.py::b", "t.py::c"


def events(*records: dict[str, Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def phases(nodeid: str, call: str = "passed", setup: str = "passed") -> list[dict[str, Any]]:
    out = [{"event": "test", "nodeid": nodeid, "when": "setup", "outcome": setup}]
    if setup == "passed":
        out.append({"event": "test", "nodeid": nodeid, "when": "call", "outcome": call})
    out.append({"event": "test", "nodeid": nodeid, "when": "teardown", "outcome": "passed"})
    return out


def session(*tests: list[dict[str, Any]], finished: bool = True, after: list[dict[str, Any]] | None = None) -> str:
    flat = [r for t in tests for r in t]
    finish = [{"event": "finish", "exitstatus": 0}] if finished else []
    return events({"event": "start"}, *flat, *finish, *(after or []))


def run(reports: str = "", junit: list[str] | None = None, exit_code: int = 0, **extra: Any) -> dict[str, Any]:
    return {"reports": reports, "junit": junit or [], "exit_code": exit_code, "timed_out": False, **extra}


def plan(**tests: Any) -> Any:
    return resolve_plan(None, TestsSpec.model_validate({"command": "pytest", **tests}))


def score(p: Any, r: dict[str, Any], outcome: str = "ok", reason: str = "none") -> tuple[float, str]:
    answer = score_tests(p, outcome, reason, "output", r)
    return answer["score"], answer["tests"]["reason"]


def test_listed_tests_must_all_pass() -> None:
    p = plan(fail_to_pass=[A], pass_to_pass=[B])
    assert score(p, run(session(phases(A), phases(B)))) == (1.0, "passed")
    assert score(p, run(session(phases(A, "failed"), phases(B)), exit_code=1)) == (0.0, "tests_failed")
    assert score(p, run(session(phases(A)))) == (0.0, "tests_failed")  # B never reported
    assert score(p, run(session(phases(A), phases(B, setup="failed")))) == (0.0, "tests_failed")
    assert score(p, run(session(phases(A), phases(B, "skipped")))) == (0.0, "tests_failed")


def test_fraction_counts_the_listed_tests_that_pass() -> None:
    p = plan(fail_to_pass=[A, B], pass_to_pass=[C], score="fraction")
    assert score(p, run(session(phases(A), phases(B, "failed"), phases(C))))[0] == pytest.approx(2 / 3)


def test_a_session_that_never_finished_scores_zero() -> None:
    """The agent's code exited the process (os._exit(0)) before pytest's session ended."""
    p = plan(fail_to_pass=[A])
    assert score(p, run(session(phases(A), finished=False))) == (0.0, "unfinished")
    assert score(plan(), run(session(finished=False))) == (0.0, "unfinished")


def test_what_follows_the_finish_line_is_ignored() -> None:
    """An atexit handler appending 'passed' reports after the session ended changes nothing."""
    lie = phases(A)
    p = plan(fail_to_pass=[A])
    assert score(p, run(session(phases(B), after=lie))) == (0.0, "tests_failed")


def test_failure_wins_across_sources() -> None:
    """A forged 'passed' (another report line, or a JUnit file) never overrides a real failure."""
    forged_junit = '<testsuite><testcase classname="t" name="a"/></testsuite>'
    reports = session(phases(A, "failed"), phases(A))
    report = read_run(reports, [forged_junit])
    assert report.status_of(A) == "failed"
    junit_fail = '<testsuite><testcase classname="t" name="a"><failure message="x"/></testcase></testsuite>'
    assert read_run(session(), [junit_fail, forged_junit]).status_of("t::a") == "failed"


def test_junit_ids_and_statuses() -> None:
    xml = (
        "<testsuites><testsuite>"
        '<testcase classname="pkg.Mod" name="ok"/>'
        '<testcase classname="pkg.Mod" name="bad"><error message="e"/></testcase>'
        '<testcase classname="pkg.Mod" name="skip"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    report = read_run("", [xml, "<not xml", ""])
    assert report.statuses == {"pkg.Mod::ok": "passed", "pkg.Mod::bad": "error", "pkg.Mod::skip": "skipped"}
    p = plan(fail_to_pass=["pkg.Mod::ok"])
    assert score(p, run("", [xml]))[0] == 1.0


def test_collection_errors_fail_the_tests_of_that_module() -> None:
    reports = events({"event": "start"}, {"event": "collect_error", "nodeid": "t.py"}, {"event": "finish"})
    assert score(plan(fail_to_pass=[A]), run(reports, exit_code=2)) == (0.0, "tests_failed")
    assert score(plan(), run(reports, exit_code=2)) == (0.0, "command_failed")


def test_without_lists_all_pass_needs_exit_zero_a_pass_and_no_skip() -> None:
    assert score(plan(), run(session(phases(A), phases(B)))) == (1.0, "passed")
    assert score(plan(), run(session(phases(A), phases(B, "skipped")))) == (0.0, "tests_failed")
    assert score(plan(), run(session(phases(A, "skipped")))) == (0.0, "no_tests_ran")
    assert score(plan(), run(session())) == (0.0, "no_tests_ran")  # everything deselected
    assert score(plan(), run(session(phases(A)), exit_code=1)) == (0.0, "command_failed")
    assert score(plan(), run("", exit_code=0)) == (1.0, "passed")  # not pytest: the exit status decides
    assert score(plan(), run("", exit_code=3)) == (0.0, "command_failed")


def test_a_run_that_timed_out_or_never_ran_scores_zero() -> None:
    p = plan(fail_to_pass=[A])
    assert score(p, run(session(phases(A)), timed_out=True)) == (0.0, "timed_out")
    assert score(p, run(), outcome="model_error", reason="tests_setup_failed") == (0.0, "tests_setup_failed")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", 1.0), ("0.25\n", 0.25), ("7", 1.0), ("-1", 0.0), ("nan", 0.0), ("inf", 0.0), ("", 0.0), (None, 0.0)],
)
def test_reward_files_are_read_clamped_and_never_nan(text: str | None, expected: float) -> None:
    p = resolve_plan(None, TestsSpec(score="reward_file"))
    assert score(p, run(reward=text))[0] == expected


def test_the_plan_merges_item_over_environment_field_by_field() -> None:
    env = TestsSpec(command="make test", dir="/srv/hidden", restore=["tests/"], timeout_s=60)
    p = resolve_plan(env, TestsSpec(fail_to_pass=[A], timeout_s=5))
    assert (p.command, p.dir, p.restore, p.timeout_s, p.fail_to_pass) == (
        "make test",
        "/srv/hidden",
        ("tests",),
        5,
        (A,),
    )
    harbor = resolve_plan(TestsSpec(score="reward_file", dir="/srv/task/tests"), TestsSpec())
    assert (harbor.command, harbor.reward_file, harbor.dir_target) == (HARBOR_COMMAND, DEFAULT_REWARD_FILE, "/tests")


@pytest.mark.parametrize(
    "bad",
    [
        {"restore": ["../etc"]},
        {"restore": ["/abs"]},
        {"files": {"../x.py": ""}},
        {"timeout_s": 0},
        {"timeout_s": 99999},
        {"score": "best"},
        {"reward_file": "relative.txt"},
        {"unknown": 1},
        "not an object",
    ],
)
def test_bad_tests_blocks_are_clear_400s(bad: Any) -> None:
    with pytest.raises(InvalidGradeRequest):
        resolve_plan(
            None, parse_tests_spec({"command": "pytest", **bad} if isinstance(bad, dict) else bad, "item.tests")
        )


def test_no_command_anywhere_is_a_400() -> None:
    with pytest.raises(InvalidGradeRequest, match="tests.command"):
        resolve_plan(None, TestsSpec(fail_to_pass=[A]))


def test_several_graders() -> None:
    entries = parse_graders([{"name": "tests", "weight": 0.8, "required": True}, {"name": "file_f1", "weight": 0.2}])
    assert combine(entries, {"tests": 1.0, "file_f1": 0.5}) == (pytest.approx(0.9), None)
    assert combine(entries, {"tests": 0.5, "file_f1": 1.0}) == (0.0, "tests")
    gate = parse_graders([{"name": "tests", "required": True, "threshold": 0.5}, "numeric"])
    assert gate[1] == GraderEntry("numeric")
    assert combine(gate, {"tests": 0.5, "numeric": 0.0}) == (0.25, None)
    assert parse_graders("file_f1") == [GraderEntry("file_f1")]


@pytest.mark.parametrize(
    "bad",
    [
        [],
        ["tests", "tests"],
        [{"name": "tests", "weight": -1}],
        [{"name": "tests", "weight": float("nan")}],
        [{"name": "tests", "threshold": 2}],
        [{"name": "tests", "required": "yes"}],
        [{"name": "tests", "extra": 1}],
        [{"weight": 1}],
        [{"name": "a", "weight": 0}],
        7,
    ],
)
def test_bad_grader_lists_are_clear_400s(bad: Any) -> None:
    with pytest.raises(InvalidGradeRequest):
        parse_graders(bad)


def test_without_lists_a_pytest_run_lists_each_test_once_by_node_id() -> None:
    junit = '<testsuite><testcase classname="t" name="a"/></testsuite>'
    answer = score_tests(plan(), "ok", "none", "", run(session(phases(A)), [junit]))
    assert answer["tests"]["passed"] == [A] and answer["tests"]["failed"] == []
