"""Several graders at once: `item["grader"]` as a list with weights, `required` and `threshold`.

The score is the weighted mean of the graders' scores; a required grader scoring below its
threshold (default 1.0) makes the whole score 0, the correctness gate the seed talks put in
front of softer graders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..domain.errors import InvalidGradeRequest


@dataclass(frozen=True)
class GraderEntry:
    name: str
    weight: float = 1.0
    required: bool = False
    threshold: float = 1.0


def parse_graders(value: Any) -> list[GraderEntry]:
    """One grader name, or a list of names and {"name", "weight", "required", "threshold"} objects."""
    if isinstance(value, str):
        return [GraderEntry(value)]
    if not isinstance(value, list) or not value:
        raise InvalidGradeRequest("item['grader'] must be a grader name or a non-empty list of graders")
    entries = [_entry(v, i) for i, v in enumerate(value)]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise InvalidGradeRequest("item['grader'] names a grader twice; each grader's result is keyed by its name")
    if sum(e.weight for e in entries) <= 0:
        raise InvalidGradeRequest("the graders' weights must add up to more than 0")
    return entries


def _entry(value: Any, index: int) -> GraderEntry:
    if isinstance(value, str):
        return GraderEntry(value)
    where = f"item['grader'][{index}]"
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        raise InvalidGradeRequest(f"{where} must be a grader name or an object with a 'name'")
    unknown = set(value) - {"name", "weight", "required", "threshold"}
    if unknown:
        raise InvalidGradeRequest(f"{where} has unknown fields: {sorted(unknown)}")
    weight, threshold, required = value.get("weight", 1.0), value.get("threshold", 1.0), value.get("required", False)
    if not _finite_number(weight) or weight < 0:
        raise InvalidGradeRequest(f"{where}.weight must be a finite number >= 0")
    if not _finite_number(threshold) or not 0 <= threshold <= 1:
        raise InvalidGradeRequest(f"{where}.threshold must be a number in [0, 1]")
    if not isinstance(required, bool):
        raise InvalidGradeRequest(f"{where}.required must be true or false")
    return GraderEntry(value["name"], float(weight), required, float(threshold))


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def combine(entries: list[GraderEntry], scores: Mapping[str, float]) -> tuple[float, str | None]:
    """(weighted mean, the first required grader below its threshold or None)."""
    for e in entries:
        if e.required and scores[e.name] < e.threshold:
            return 0.0, e.name
    total = sum(e.weight for e in entries)
    return sum(e.weight * scores[e.name] for e in entries) / total, None
