"""POST /v1/grade: score a rollout from its recorded trajectory (OpenAI endpoint grader format).

The trajectory comes from our own records by `trace_id`, never from `sample.output_tools`.
A rollout tainted by an infra failure is refused with 503, so the platform discards it
instead of training on a false zero.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from .. import grading, metrics
from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..domain.calls import check_item, check_rollout_id, scrub_text
from ..domain.errors import (
    BadRequest,
    CallInProgress,
    InfraError,
    InvalidGradeRequest,
    RolloutInfraTainted,
    RolloutNotFound,
    RolloutReleased,
    UnknownEnvironment,
)
from ..domain.outcomes import Outcome
from ..domain.rollout import ENDED_STATES, LOST, RolloutRecord
from ..domain.tests import TestPlan
from ..endings import taint
from ..environments import EnvironmentRegistry
from ..grading.multi import GraderEntry, combine, parse_graders
from ..store import Store
from .rollout_service import RolloutService
from .test_runs import TestRunner

log = logging.getLogger(__name__)
BUILTIN = ("file_f1", "numeric", "tests")
TESTS = "tests"
DUPLICATE_LOOK_S = 0.2  # how often a duplicate grading looks for the first one's answer


@dataclass
class GradingService:
    store: Store
    registry: EnvironmentRegistry
    rollouts: RolloutService
    settings: Settings
    tests: TestRunner | None = None  # built from the rollout service's dispatcher when not given
    clock: Clock = SYSTEM_CLOCK

    def __post_init__(self) -> None:
        if self.tests is None:
            self.tests = TestRunner(self.store, self.rollouts.dispatcher, self.settings, self.clock)

    def grade(self, body: Any) -> dict[str, Any]:
        """Score one rollout. Raises BadRequest (400), RolloutNotFound (404), RolloutReleased (409),
        RolloutInfraTainted (503), or the InfraError a test run met (5xx; the rollout is then tainted)."""
        if not isinstance(body, dict):
            raise InvalidGradeRequest("the grade request must be a JSON object")
        item = body.get("item") or {}
        sample = body.get("sample") or {}
        if not isinstance(item, dict) or not isinstance(sample, dict):
            raise InvalidGradeRequest("'item' and 'sample' must be JSON objects")
        try:  # the same row the tool calls got: refused the same way
            check_item(item)
        except BadRequest as exc:
            raise InvalidGradeRequest(exc.message) from exc
        sample = scrub_text(sample)  # the model's answer, graded as written; its echo must encode
        spec = item.get("grader") or self.settings.grading.default_grader
        label = "multi" if isinstance(spec, list) else _label(spec)
        try:
            entries = parse_graders(spec)
            result = self._grade(check_rollout_id(body.get("trace_id")), entries, isinstance(spec, list), sample, item)
        except (BadRequest, RolloutNotFound, UnknownEnvironment, RolloutReleased):
            metrics.GRADES.labels(label, "invalid").inc()
            raise
        except RolloutInfraTainted:
            metrics.GRADES.labels(label, "discarded_infra").inc()
            metrics.ZERO_REWARDS.labels("infra").inc()
            raise
        except InfraError:
            metrics.GRADES.labels(label, "infra_error").inc()
            metrics.ZERO_REWARDS.labels("infra").inc()
            raise
        if result.pop("replayed", False):
            metrics.GRADES.labels(label, "replayed").inc()
            return result
        score = result["score"]
        metrics.GRADES.labels(label, "scored").inc()
        metrics.REWARD.labels(label).observe(score)
        metrics.GRADED_TOOL_CALLS.labels(label).observe(result["tool_calls"])
        if isinstance(spec, list):  # each grader of the list counted under its own name too
            for name, sub in result["graders"].items():
                metrics.GRADES.labels(_label(name), "scored").inc()
                metrics.REWARD.labels(_label(name)).observe(sub["score"])
        if score == 0:
            metrics.ZERO_REWARDS.labels("model").inc()
        return result

    def step(self, rid: str) -> dict[str, Any] | None:
        """The rollout's grading step (the stored answer of a grading that ran tests), or None."""
        return self.store.grades.stored(rid)

    def _grade(
        self, rid: str, entries: list[GraderEntry], is_list: bool, sample: dict[str, Any], item: dict[str, Any]
    ) -> dict[str, Any]:
        rec = self.store.rollouts.get(rid) or self.store.archive.record(rid)  # graded after Redis let it go
        if rec is None:
            raise RolloutNotFound(f"no rollout {rid!r}: nothing was recorded under this trace_id")
        if any(e.name == TESTS for e in entries):
            return self._grade_once(rec, entries, is_list, sample, item)
        self._refuse_tainted(rec)
        result = self._compute(rec, entries, is_list, sample, item)
        self._release(rec)
        return result

    def _refuse_tainted(self, rec: RolloutRecord) -> None:
        if rec.tainted:
            raise RolloutInfraTainted(
                f"rollout {rec.rollout_id!r} met an infrastructure failure ({rec.taint_reason}); "
                "discard it rather than score it"
            )

    def _grade_once(
        self,
        rec: RolloutRecord,
        entries: list[GraderEntry],
        is_list: bool,
        sample: dict[str, Any],
        item: dict[str, Any],
    ) -> dict[str, Any]:
        """A grading that runs tests: the first request runs them, every later or concurrent one
        gets the stored answer (the tests changed the sandbox, and take long)."""
        rid = rec.rollout_id
        stored = self.store.grades.stored(rid)
        if stored is not None:
            return {**stored, "replayed": True}
        self._refuse_tainted(rec)
        assert self.tests is not None
        env = self.registry.of_rollout(rec.environment or "default")
        plan = self.tests.plan(env, item)
        token = uuid.uuid4().hex
        if not self.store.grades.claim(rid, token, self.tests.budget_s(plan)):
            return self._wait_for_first(rid, self.tests.budget_s(plan))
        try:
            result = self._compute(rec, entries, is_list, sample, item, plan)
        except InfraError as exc:
            self.store.grades.abandon(rid, token)
            with contextlib.suppress(InfraError):
                taint(self.store, rid, exc.reason.value)
            raise
        except BaseException:
            self.store.grades.abandon(rid, token)
            raise
        self.store.grades.save(rid, result, token)
        self._release(rec)
        return result

    def _wait_for_first(self, rid: str, budget_s: float) -> dict[str, Any]:
        deadline = self.clock.monotonic() + budget_s
        while self.clock.monotonic() < deadline:
            stored = self.store.grades.stored(rid)
            if stored is not None:
                return {**stored, "replayed": True}
            rec = self.store.rollouts.get(rid)
            if rec is not None and rec.tainted:
                self._refuse_tainted(rec)
            self.clock.sleep(DUPLICATE_LOOK_S)
        raise CallInProgress(f"rollout {rid!r} is still being graded; retry later for its result")

    def _compute(
        self,
        rec: RolloutRecord,
        entries: list[GraderEntry],
        is_list: bool,
        sample: dict[str, Any],
        item: dict[str, Any],
        plan: TestPlan | None = None,
    ) -> dict[str, Any]:
        rid = rec.rollout_id
        # The agent's calls only: a trainer's exec and file calls (setup, evaluation) are recorded
        # in the same trajectory but are neither the agent's moves nor its answer.
        trajectory = [c for c in self.store.calls.trajectory(rid) if c.get("source", "agent") == "agent"]
        tool_calls = sum(1 for c in trajectory if c.get("outcome") != Outcome.INFRA_ERROR)
        g = self.settings.grading
        graders: dict[str, dict[str, Any]] = {}
        try:  # ValueError: the dataset row is broken (e.g. a reference path outside the workspace)
            for entry in entries:
                if entry.name == TESTS:
                    assert plan is not None
                    graders[TESTS] = self._run_tests(rec, plan, item)
                else:
                    graders[entry.name] = self._score(entry.name, rid, rec.environment, trajectory, sample, item)
            raw, gate = combine(entries, {name: d["score"] for name, d in graders.items()})
            target = _int_or(item.get("tool_call_target"), g.tool_call_target)
            penalty = _float_or(item.get("penalty_per_extra_call"), g.penalty_per_extra_call)
            score = grading.shaped_score(raw, tool_calls, target, penalty)
        except ValueError as exc:
            raise InvalidGradeRequest(f"cannot grade this item: {exc}") from exc
        if is_list:
            details: dict[str, Any] = {"graders": graders}
            if gate is not None:
                details["failed_required"] = gate
            if TESTS in graders:
                details["tests"] = graders[TESTS]["tests"]
            name: Any = [e.name for e in entries]
        else:
            details = {k: v for k, v in graders[entries[0].name].items() if k != "score"}
            name = entries[0].name
        return {"score": score, "grader": name, "raw_score": raw, "tool_calls": tool_calls, **details}

    def _run_tests(self, rec: RolloutRecord, plan: TestPlan, item: dict[str, Any]) -> dict[str, Any]:
        """The hidden tests, in the rollout's container as the agent left it."""
        assert self.tests is not None
        if rec.state in ENDED_STATES and rec.state != LOST:
            raise RolloutReleased(
                f"rollout {rec.rollout_id!r} ended ({rec.state}) and its sandbox is gone: the tests grader "
                "runs in the sandbox, so grade before releasing it"
            )
        ready = self.rollouts.ensure_ready(rec.rollout_id, item, known=rec)  # SandboxLost when it was lost
        return self.tests.run(rec.rollout_id, ready.host, plan)

    def _release(self, rec: RolloutRecord) -> None:
        if self.settings.grading.release_after_grade and rec.state not in ENDED_STATES:
            self.rollouts.release(rec.rollout_id, "graded", how="graded")

    def _score(
        self, grader: str, rid: str, environment: str, trajectory: list[dict[str, Any]],
        sample: dict[str, Any], item: dict[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        if grader == "file_f1":
            reference = item.get("reference_files")
            if not isinstance(reference, list) or not all(isinstance(p, str) for p in reference):
                raise InvalidGradeRequest("file_f1 needs item['reference_files'], a list of paths")
            env = self.registry.of_rollout(environment or "default")
            beta = _float_or(item.get("beta"), self.settings.grading.beta)
            if beta <= 0:
                raise InvalidGradeRequest("beta must be positive")
            result = grading.file_f1(
                grading.selected_files(sample), reference, self.registry.files(env), beta=beta, workdir=env.spec.workdir
            )
            return result.to_dict()
        if grader == "numeric":
            if "reference_answer" not in item:
                raise InvalidGradeRequest("numeric needs item['reference_answer']")
            text = sample.get("output_text")
            if not isinstance(text, str):
                text = "" if sample.get("output_json") is None else str(sample.get("output_json"))
            g = self.settings.grading
            try:
                numeric = grading.numeric_score(
                    text, item["reference_answer"], rel_tol=g.numeric_rel_tol, partial_rel_tol=g.numeric_partial_rel_tol
                )
            except (ValueError, OverflowError) as exc:  # OverflowError: an integer no float holds
                raise InvalidGradeRequest(f"item['reference_answer'] is not a number: {exc}") from exc
            return numeric.to_dict()
        allowed = [s.strip() for s in self.settings.grading.custom_graders.split(",") if s.strip()]
        try:
            fn = grading.load_custom_grader(grader, allowed)
        except grading.CustomGraderError as exc:
            raise InvalidGradeRequest(str(exc)) from exc
        try:
            value = fn(trajectory=trajectory, sample=sample, item=item)
        except Exception as exc:  # the grader's own bug: say so instead of a silent zero
            log.exception("custom grader %s failed on rollout %s", grader, rid)
            raise InvalidGradeRequest(f"custom grader {grader} failed: {type(exc).__name__}: {exc}") from exc
        try:
            return {"score": grading.coerce_score(value)}
        except grading.CustomGraderError as exc:
            raise InvalidGradeRequest(str(exc)) from exc


def _int_or(value: Any, default: int | None) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidGradeRequest("tool_call_target must be a non-negative integer")
    return value


def _float_or(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidGradeRequest("beta and penalty_per_extra_call must be numbers")
    try:
        return float(value)
    except OverflowError as exc:  # an integer of hundreds of digits
        raise InvalidGradeRequest("beta and penalty_per_extra_call must be numbers a 64-bit float can hold") from exc


def _label(grader: Any) -> str:
    """The metrics label of one grader name: builtins by name, anything else `custom`."""
    return grader if grader in BUILTIN else "custom"
