"""POST /v1/grade: the endpoint grader's request and answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ...domain.calls import MAX_ROLLOUT_ID_LEN
from ...domain.tests import TestsSpec
from .common import _Open

# --- grading ------------------------------------------------------------------------------------------------


class GradeSample(BaseModel):
    """The model's final answer as the platform sends it."""

    output_text: str | None = Field(None, description="the final answer's text")
    output_json: Any = Field(None, description="the final answer as JSON, when structured output was used")
    output_tools: list[Any] | None = Field(None, description="ignored: the service grades from its own records")
    choices: list[Any] | None = None


class GraderListEntry(BaseModel):
    """One grader of a list: its score weighs `weight`; a `required` one below `threshold` zeroes the total."""

    name: str
    weight: float = Field(1.0, ge=0)
    required: bool = False
    threshold: float = Field(1.0, ge=0, le=1)


class TestsBlock(TestsSpec):
    """The tests grader's fields (PROTOCOL.md, "Grading by running tests"); each may come from the environment."""

    __test__ = False


class TestsResult(BaseModel):
    """What the hidden tests did, as the tests grader saw it."""

    __test__ = False
    passed: list[str] = Field(description="listed tests that passed (every passing test when none are listed)")
    failed: list[str] = Field(description="listed tests that failed, errored, were skipped or never reported")
    exit_code: int | None = Field(description="the test command's exit status (null: killed)")
    timed_out: bool
    duration_s: float
    output_tail: str = Field(description="the end of the test command's output")
    reason: str = Field(
        description="passed, tests_failed, fraction, command_failed, no_tests_ran, unfinished (the process "
        "ended before pytest finished), timed_out, reward_file, no_reward, tests_setup_failed, pids_exhausted"
    )
    reward: str | None = Field(None, description="reward_file: what the reward file held")


class GradeItem(BaseModel):
    """The dataset row; the fields below steer grading, any others are ignored."""

    grader: str | list[str | GraderListEntry] | None = Field(
        None,
        description="file_f1, numeric, tests, or an allowed 'module:function'; or a list of graders (weighted "
        "mean, required gates); default from configuration",
    )
    tests: TestsBlock | None = Field(None, description="tests: the hidden tests (the environment's `tests` under it)")
    reference_files: list[str] | None = Field(None, description="file_f1: the files a human edited")
    reference_answer: str | float | None = Field(None, description="numeric: the expected number")
    beta: float | None = Field(None, gt=0, description="file_f1: F-beta's beta (default from configuration)")
    tool_call_target: int | None = Field(None, ge=0, description="tool calls past this cost a penalty each")
    penalty_per_extra_call: float | None = Field(None, ge=0, description="score lost per call past the target")
    environment: str | None = Field(None, description="the rollout's environment (chosen by its first call)")


class GradeRequest(BaseModel):
    """The OpenAI endpoint grader request."""

    sample: GradeSample | None = None
    item: GradeItem | None = None
    trace_id: str = Field(max_length=MAX_ROLLOUT_ID_LEN, description="the rollout id whose recorded calls are graded")


class GradeResponse(_Open):
    """A score in [0, 1] plus the grader's own fields (which ones depends on the grader)."""

    score: float = Field(ge=0, le=1, description="the reward: raw_score less the extra-call penalty, in [0, 1]")
    grader: str | list[str] = Field(description="the grader that scored (a list: every grader of the list)")
    raw_score: float = Field(ge=0, le=1, description="the grader's score before the extra-call penalty")
    tool_calls: int = Field(ge=0, description="the rollout's tool calls, infra failures not counted")
    # file_f1
    precision: float | None = Field(None, description="file_f1: share of the selected files that are right")
    recall: float | None = Field(None, description="file_f1: share of the reference files selected")
    beta: float | None = Field(None, description="file_f1: the beta of the F-beta score")
    selected: list[str] | None = Field(None, description="file_f1: the selection, canonical and de-duplicated")
    matched: list[str] | None = Field(None, description="file_f1: selected files that are reference files")
    hallucinated: list[str] | None = Field(None, description="file_f1: selected paths that are not workspace files")
    missed: list[str] | None = Field(None, description="file_f1: reference files not selected")
    # numeric
    parsed: float | None = Field(None, description="numeric: the answer's number as written ('12%' -> 12.0)")
    expected: float | None = Field(None, description="numeric: the reference number")
    relative_error: float | None = Field(None, description="numeric: of the best reading; null for a 0 reference")
    reason: str | None = Field(None, description="numeric: match, rounding-level miss, mismatch, ...")
    # tests
    tests: TestsResult | None = Field(None, description="tests: what the hidden tests did")
    # several graders
    graders: dict[str, dict[str, Any]] | None = Field(
        None, description="a list of graders: each grader's score and its own fields, by name"
    )
    failed_required: str | None = Field(None, description="a list of graders: the required grader below its threshold")
