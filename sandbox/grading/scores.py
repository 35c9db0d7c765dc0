"""Score arithmetic shared by the graders: clamping, efficiency shaping, custom graders.

Every score is finite, in [0, 1] and a deterministic function of its input, because the
trainer compares scores across rollouts of the same item.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Collection, Mapping
from decimal import Decimal
from numbers import Real
from typing import Any


def clamp01(value: float) -> float:
    """NaN becomes 0 so a broken computation can never look like success."""
    return 0.0 if math.isnan(value) else min(1.0, max(0.0, value))


def shaped_score(score: float, tool_calls: int, target: int | None, penalty_per_call: float) -> float:
    """Subtract penalty_per_call per tool call beyond target, clamped to [0, 1]; off when target is None or the
    penalty is 0. A negative penalty would reward extra calls, so it is a configuration error (ValueError)."""
    if not math.isfinite(penalty_per_call) or penalty_per_call < 0:
        raise ValueError(f"penalty_per_call must be finite and non-negative, got {penalty_per_call!r}")
    base = clamp01(float(score))
    if target is None or penalty_per_call == 0:
        return base
    excess = max(0, tool_calls - max(0, target))
    return clamp01(base - excess * penalty_per_call)


class CustomGraderError(Exception):
    """A custom grader could not be loaded or returned something that is not a score."""


_SPEC = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


def load_custom_grader(spec: str, allowed: Collection[str]) -> Callable[..., Any]:
    """Resolve 'package.module:function' (the attribute may be dotted, 'module:Class.method').

    Only specs listed verbatim in `allowed` (configuration) load: a dataset row must not be able to name
    arbitrary code such as 'os:system'. Every failure is a CustomGraderError with a plain message.
    """
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise CustomGraderError(f"malformed grader spec {spec!r}: expected 'package.module:function'")
    if spec not in set(allowed):
        raise CustomGraderError(f"grader {spec!r} is not in the allowed list")
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # the module's own import-time errors are as fatal as a missing module
        raise CustomGraderError(f"cannot import {module_name!r}: {exc}") from exc
    for name in attribute.split("."):
        if not hasattr(target, name):
            raise CustomGraderError(f"{module_name!r} has no attribute {attribute!r}")
        target = getattr(target, name)
    if not callable(target):
        raise CustomGraderError(f"grader {spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def coerce_score(value: Any) -> float:
    """A custom grader's return value as a score: a number (bools count as 1/0), or a dict with 'score'.
    NaN, infinities and non-numbers raise CustomGraderError; finite numbers are clamped to [0, 1]."""
    if isinstance(value, Mapping):
        if "score" not in value:
            raise CustomGraderError("grader returned a dict without 'score'")
        value = value["score"]
    if not isinstance(value, Real | Decimal):
        raise CustomGraderError(f"grader returned {type(value).__name__}, not a number")
    try:
        number = float(value)
    except (OverflowError, ValueError) as exc:
        raise CustomGraderError(f"grader returned an unusable number {value!r}") from exc
    if not math.isfinite(number):
        raise CustomGraderError(f"grader returned a non-finite score {value!r}")
    return clamp01(number)
