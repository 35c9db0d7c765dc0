"""A custom grader for the tests: full marks for at most two successful tool calls."""

from __future__ import annotations

from typing import Any


def grade_by_calls(trajectory: list[dict[str, Any]], sample: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    ok = sum(1 for c in trajectory if c["outcome"] == "ok")
    return {"score": 1.0 if 0 < ok <= 2 else 0.25}
