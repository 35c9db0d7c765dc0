"""POST /v1/grade: score a rollout from its recorded trajectory (OpenAI endpoint grader format).

The trajectory comes from our own records by `trace_id`, never from `sample.output_tools`.
A rollout tainted by an infra failure is refused with 503, so the platform discards it
instead of training on a false zero.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .. import grading, metrics
from ..config import Settings
from ..domain.calls import check_item, check_rollout_id, scrub_text
from ..domain.errors import BadRequest, InvalidGradeRequest, RolloutInfraTainted, RolloutNotFound, UnknownEnvironment
from ..domain.outcomes import Outcome
from ..domain.rollout import ENDED_STATES
from ..environments import EnvironmentRegistry
from ..store import Store
from .rollout_service import RolloutService

log = logging.getLogger(__name__)
BUILTIN = ("file_f1", "numeric")


@dataclass
class GradingService:
    store: Store
    registry: EnvironmentRegistry
    rollouts: RolloutService
    settings: Settings

    def grade(self, body: Any) -> dict[str, Any]:
        """Score one rollout. Raises BadRequest (400), RolloutNotFound (404), RolloutInfraTainted (503)."""
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
        grader = item.get("grader") or self.settings.grading.default_grader
        label = grader if grader in BUILTIN else "custom"
        try:
            result = self._grade(check_rollout_id(body.get("trace_id")), grader, sample, item)
        except (BadRequest, RolloutNotFound, UnknownEnvironment):
            metrics.GRADES.labels(label, "invalid").inc()
            raise
        except RolloutInfraTainted:
            metrics.GRADES.labels(label, "discarded_infra").inc()
            metrics.ZERO_REWARDS.labels("infra").inc()
            raise
        score = result["score"]
        metrics.GRADES.labels(label, "scored").inc()
        metrics.REWARD.labels(label).observe(score)
        metrics.GRADED_TOOL_CALLS.labels(label).observe(result["tool_calls"])
        if score == 0:
            metrics.ZERO_REWARDS.labels("model").inc()
        return result

    def _grade(self, rid: str, grader: str, sample: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        rec = self.store.rollouts.get(rid)
        if rec is None:
            raise RolloutNotFound(f"no rollout {rid!r}: nothing was recorded under this trace_id")
        if rec.tainted:
            raise RolloutInfraTainted(
                f"rollout {rid!r} met an infrastructure failure ({rec.taint_reason}); discard it rather than score it"
            )
        trajectory = self.store.calls.trajectory(rid)
        tool_calls = sum(1 for c in trajectory if c.get("outcome") != Outcome.INFRA_ERROR)
        g = self.settings.grading
        try:  # ValueError: the dataset row is broken (e.g. a reference path outside the workspace)
            details = self._score(grader, rid, rec.environment, trajectory, sample, item)
            target = _int_or(item.get("tool_call_target"), g.tool_call_target)
            penalty = _float_or(item.get("penalty_per_extra_call"), g.penalty_per_extra_call)
            raw = details.pop("score")
            score = grading.shaped_score(raw, tool_calls, target, penalty)
        except ValueError as exc:
            raise InvalidGradeRequest(f"cannot grade this item: {exc}") from exc
        if g.release_after_grade and rec.state not in ENDED_STATES:
            self.rollouts.release(rid, "graded", how="graded")
        return {"score": score, "grader": grader, "raw_score": raw, "tool_calls": tool_calls, **details}

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
