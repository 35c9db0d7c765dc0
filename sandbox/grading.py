"""Grading math: file-selection F-beta, FinQA-style numeric answers, efficiency shaping, custom graders.

Pure functions only (no I/O): the service feeds them the grader request and the recorded trajectory and
serialises what they return. Every score is finite, in [0, 1] and a deterministic function of its input,
because the trainer compares scores across rollouts of the same item.
"""

from __future__ import annotations

import importlib
import json
import math
import posixpath
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_UP, Decimal
from numbers import Real
from typing import Any

WORKDIR = "/workspace"

_QUOTES = "\"'`"
_WRAPPING = " \t\r\n" + _QUOTES


def _clamp01(value: float) -> float:
    """NaN becomes 0 so a broken computation can never look like success."""
    return 0.0 if math.isnan(value) else min(1.0, max(0.0, value))


def canonical_path(path: str, workdir: str = WORKDIR) -> str | None:
    """Normalise a path an agent wrote to the workspace-relative form the reference uses.

    Strips whitespace, quotes and backticks, './', the workspace prefix (absolute or relative), trailing
    slashes, empty and '.' segments, and resolves '..' lexically (no file system). None for an empty path or
    one that escapes the workspace (absolute outside `workdir`, or '..' above its root): it can never match.
    """
    text = path.strip(_WRAPPING) if isinstance(path, str) else ""
    if not text or "\x00" in text:
        return None
    root = workdir.strip("/")
    norm = posixpath.normpath(text.lstrip("/"))  # relative, so '..' above the root survives and is caught
    if norm == ".." or norm.startswith("../"):
        return None
    if root and (norm == root or norm.startswith(root + "/")):
        norm = norm[len(root) + 1 :]
    elif root and text.startswith("/"):
        return None
    return norm if norm not in ("", ".") else None


_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
_BULLET = re.compile(r"^(?:[-*+\u2022]|\d+[.)])\s+")
_TRAILING_COMMA = re.compile(r",\s*([\]}])")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]+$")
_SEPARATORS = "-\u2013\u2014:(#"


def _paths_from_json(obj: Any) -> list[str] | None:
    """A list of paths, or {"files"/"paths": [...]}; items may be {"path": ...}. None when the shape is wrong."""
    if isinstance(obj, dict):
        obj = next((obj[k] for k in ("files", "paths") if isinstance(obj.get(k), list)), None)
    if not isinstance(obj, list):
        return None
    out: list[str] = []
    for item in obj:
        if isinstance(item, dict):
            item = item.get("path", item.get("file"))
        if isinstance(item, str):
            out.append(item)
    return out


def _loads(text: str) -> Any:
    """json.loads that forgives trailing commas (models write them) and answers None instead of raising."""
    try:
        return json.loads(_TRAILING_COMMA.sub(r"\1", text))
    except (ValueError, RecursionError):
        return None


def _looks_like_path(token: str) -> bool:
    return bool(token) and not any(c.isspace() for c in token) and ("/" in token or bool(_EXTENSION.search(token)))


def _line_paths(line: str) -> list[str]:
    """The path(s) on one line of a plain-text answer; prose lines yield nothing."""
    text = _BULLET.sub("", line.strip()).strip().strip("*").strip().rstrip(",;").strip()
    if not text or text.startswith("```") or not re.search(r"\w", text):
        return []
    if text[0] in _QUOTES and (end := text.find(text[0], 1)) > 1:
        return [text[1:end]]  # an explicitly quoted path may contain spaces; what follows is a description
    if not any(c.isspace() for c in text):
        return [] if text.endswith(":") else [text]  # 'Files:' is a header, not a file
    items = [t.strip().strip(_WRAPPING) for t in text.split(",")]
    if len(items) > 1 and all(_looks_like_path(t) for t in items):
        return items
    head, rest = text.split(None, 1)
    head = head.strip(_QUOTES)
    if _looks_like_path(head.rstrip(":")) and (head.endswith(":") or rest[0] in _SEPARATORS):
        return [head.rstrip(":")]  # 'src/a.py - why it matters'
    return []


def _paths_from_text(text: str) -> list[str]:
    blocks = _FENCE.findall(text)
    body = "\n".join(blocks) if blocks else text
    whole = _paths_from_json(_loads(body.strip()))
    if whole is not None:
        return whole
    for opening, closing in ("[]", "{}"):
        embedded = _paths_from_json(_loads(body[body.find(opening) : body.rfind(closing) + 1]))
        if embedded:  # an empty embedded list is more likely prose than an answer
            return embedded
    return [path for line in body.splitlines() for path in _line_paths(line)]


def selected_files(sample: Mapping[str, Any]) -> list[str]:
    """The files the agent selected, raw (not canonicalised), in the order it wrote them.

    A structured `output_json` wins (list, or {"files"/"paths": [...]}), even when empty: it is the answer the
    agent chose to give. Otherwise `output_text` is read as JSON (whole, inside code fences, or embedded in
    prose), and failing that one path per line, dropping bullets, quotes, trailing commas and prose lines.
    """
    structured = _paths_from_json(sample.get("output_json"))
    if structured is not None:
        return structured
    text = sample.get("output_text")
    return _paths_from_text(text) if isinstance(text, str) else []


@dataclass(frozen=True)
class FileF1Result:
    score: float
    precision: float
    recall: float
    beta: float
    selected: list[str]  # canonical, de-duplicated, order of first appearance
    matched: list[str]  # selected ∩ reference
    hallucinated: list[str]  # selections that are not workspace files (escaping paths kept as written)
    missed: list[str]  # reference paths not selected

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _canonical_reference(reference: Iterable[str], workdir: str) -> list[str]:
    """A reference path that is not a workspace path means the dataset row is broken, not the model."""
    canon = [(raw, canonical_path(raw, workdir)) for raw in reference]
    broken = [raw for raw, path in canon if path is None]
    if broken:
        raise ValueError(f"reference path {broken[0]!r} is not a path inside the workspace")
    return _dedupe(path for _, path in canon if path)


def _canonical_selection(selected: Iterable[str], workdir: str) -> tuple[list[str], list[str]]:
    """(valid canonical paths, escaping paths as written), both de-duplicated; blank entries are ignored."""
    entries = [raw.strip() for raw in selected if isinstance(raw, str) and raw.strip(_WRAPPING)]
    canon = [(raw, canonical_path(raw, workdir)) for raw in entries]
    return _dedupe(path for _, path in canon if path), _dedupe(raw for raw, path in canon if path is None)


def _f_beta(precision: float, recall: float, beta: float) -> float:
    b2 = beta * beta
    denominator = b2 * precision + recall
    return _clamp01((1 + b2) * precision * recall / denominator) if denominator > 0 else 0.0


def file_f1(
    selected: list[str],
    reference: list[str],
    existing: set[str] | frozenset[str] | None = None,
    beta: float = 1.0,
    workdir: str = WORKDIR,
) -> FileF1Result:
    """F-beta of the selection against the reference files, both canonicalised, duplicates counted once.

    Every distinct selection is in the precision denominator, so listing the whole repository does not pay.
    Wrong selections: a path outside `existing` (the workspace's files at the base commit; None skips the check)
    or escaping the workspace is hallucinated and never matches; a directory does not select its files.
    Both empty scores 1 (nothing to find, nothing claimed). An empty selection scores 0 with precision 0;
    a non-empty selection against an empty reference scores 0 with precision 0 and (vacuous) recall 1.
    A reference path outside the workspace raises ValueError (a broken row).
    """
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    ref = _canonical_reference(reference, workdir)
    picked, escaping = _canonical_selection(selected, workdir)
    known = None if existing is None else {c for c in (canonical_path(p, workdir) for p in existing) if c}
    missing = escaping + [p for p in picked if known is not None and p not in known]
    ref_set, missing_set = set(ref), set(missing)
    matched = [p for p in picked if p in ref_set and p not in missing_set]
    n_selected, n_matched = len(picked) + len(escaping), len(matched)
    if n_selected == 0:
        precision, recall = (1.0, 1.0) if not ref else (0.0, 0.0)
    elif not ref:
        precision, recall = 0.0, 1.0
    else:
        precision, recall = n_matched / n_selected, n_matched / len(ref)
    score = 1.0 if n_selected == 0 and not ref else _f_beta(precision, recall, beta)
    matched_set = set(matched)
    missed = [p for p in ref if p not in matched_set]
    return FileF1Result(score, precision, recall, beta, picked, matched, missing, missed)


_SCALES = dict.fromkeys(("thousand", "k"), 3) | dict.fromkeys(("million", "mn", "mm", "m"), 6)
_SCALES |= dict.fromkeys(("billion", "bn", "b"), 9) | dict.fromkeys(("trillion", "tn", "t"), 12)
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+\u2212])?(?:(?P<open>\()\s?)?(?:(?:US\$|[$\u20ac\u00a3\u00a5])\s?)?(?P<sign2>[-\u2212])?"
    r"(?P<digits>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?P<exp>[eE][-+]?\d+)?"
    r"(?:\s?(?P<word>thousand|million|billion|trillion|bn|mn)\b|(?P<letter>mm|tn|[kmbt])\b)?"
    r"(?:\s?(?P<pct>%|percent\b|per\s?cent\b|pct\b))?(?P<close>\))?",
    re.IGNORECASE,
)
_MARKER = re.compile(r"\banswer\b\s*(?:is\b|:|=)|=|\u2248|\\boxed\{", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedNumber:
    value: float  # as written: '12%' is 12.0 with is_percent
    is_percent: bool
    text: str


@dataclass(frozen=True)
class _Token:
    """A number with how precisely it was written, which the rounding rule of numeric_score needs."""

    number: ParsedNumber
    place: int  # power of ten of the last written digit: '12.3' -> -1, '1.2 million' -> 5
    significant: int  # significant digits written: '0.012' -> 2


def _token(match: re.Match[str]) -> _Token | None:
    digits = match["digits"].replace(",", "")
    mantissa, _, decimals = digits.partition(".")
    unit = match["word"] or match["letter"]
    scale = _SCALES[unit.lower()] if unit else 0
    exponent = int(match["exp"][1:]) if match["exp"] else 0
    try:
        value = float(Decimal(digits).scaleb(exponent + scale))
    except ArithmeticError:
        return None
    if not math.isfinite(value):
        return None
    negative = bool(match["sign"] in ("-", "\u2212") or match["sign2"] or (match["open"] and match["close"]))
    number = ParsedNumber(-value if negative else value, match["pct"] is not None, match[0].strip())
    significant = len((mantissa + decimals).lstrip("0"))
    return _Token(number, exponent + scale - len(decimals), significant)


def _pick(text: str) -> _Token | None:
    """The first number after the last answer marker, else the last number in the text."""
    found = ((m.start(), _token(m)) for m in _NUMBER.finditer(text))
    tokens = [(start, tok) for start, tok in found if tok is not None]
    markers = list(_MARKER.finditer(text))
    if markers:
        after = [tok for start, tok in tokens if start >= markers[-1].end()]
        if after:
            return after[0]
    return tokens[-1][1] if tokens else None


def parse_number(text: str) -> ParsedNumber | None:
    """The answer's number from FinQA-style text ('$1,234.5', '(1,234)', '-12.5%', '1.2 million', '5k', '1e6').

    Rule for several numbers: after the last marker ('answer:', 'answer is', '=', '≈', '\\boxed{') take the
    first number, so 'Answer: 42 (up from 30)' is 42 and 'a = 3 + 4 = 7' is 7; with no marker, or no number
    after it, take the last number in the text (models usually end with the answer). Single-letter scales
    (k, m, b, t, mm, tn) count only when attached ('5k', '$3m'), since '5 m' may be metres. None if no number.
    """
    token = _pick(text) if isinstance(text, str) else None
    return token.number if token else None


@dataclass(frozen=True)
class NumericResult:
    score: float
    parsed: float | None  # the answer's number as written ('12%' -> 12.0)
    expected: float | None
    relative_error: float | None  # of the best reading of the answer; None when the reference is 0
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reference_token(reference: str | float | int) -> _Token:
    """The dataset's answer; anything unusable raises ValueError because the row is broken, not the model."""
    if isinstance(reference, bool):
        raise ValueError(f"reference {reference!r} is not a number")
    if isinstance(reference, str):
        token = _pick(reference)
        if token is None:
            raise ValueError(f"reference {reference!r} has no number")
        return token
    if isinstance(reference, Real) and math.isfinite(float(reference)):
        return _Token(ParsedNumber(float(reference), False, repr(reference)), 0, 0)
    raise ValueError(f"reference {reference!r} is not a finite number")


def _readings(answer: _Token, reference_is_percent: bool) -> list[tuple[float, int, str]]:
    """(value, place, note) readings of the answer; percent scaling only when exactly one side says percent."""
    value, place = answer.number.value, answer.place
    readings = [(value, place, "")]
    if answer.number.is_percent and not reference_is_percent:
        readings.append((value / 100, place - 2, " (answer percent read as a fraction)"))
    elif reference_is_percent and not answer.number.is_percent:
        readings.append((value * 100, place + 2, " (answer fraction read as a percent)"))
    return readings


_Grade = tuple[float, float | None, str]


def _rounds_to(reference: float, place: int, value: float) -> bool:
    """Whether the reference, rounded half-up to the answer's last written digit, is the answer."""
    try:
        rounded = Decimal(repr(reference)).quantize(Decimal(1).scaleb(place), rounding=ROUND_HALF_UP)
    except ArithmeticError:
        return False
    return math.isclose(float(rounded), value, rel_tol=1e-9, abs_tol=1e-12)


def _grade(value: float, place: int, significant: int, expected: float, tols: tuple[float, float]) -> _Grade:
    """(score, relative error, reason) of one reading of the answer."""
    rel_tol, partial_rel_tol = tols
    error = abs(value - expected)
    rel = error / abs(expected) if expected != 0 else None
    if (error <= 1e-9) if rel is None else (rel <= rel_tol):
        return 1.0, rel, "match"
    if rel is not None and rel <= partial_rel_tol:
        return 0.5, rel, "rounding-level miss (within the partial tolerance)"
    # Two significant digits at least, or '0 billion' would collect partial credit for any small reference.
    if significant >= 2 and _rounds_to(expected, place, value):
        return 0.5, rel, "rounding-level miss (the reference rounds to the answer)"
    return 0.0, rel, "mismatch"


def numeric_score(
    answer_text: str, reference: str | float | int, rel_tol: float = 1e-3, partial_rel_tol: float = 1e-2
) -> NumericResult:
    """1 within rel_tol of the reference (absolute 1e-9 for a zero reference), 0.5 for a rounding-level miss,
    else 0.

    A rounding-level miss is within partial_rel_tol, or equal to the reference rounded half-up to the answer's
    last written digit when the answer has at least two significant digits ('12.3' vs 12.34). Percent readings
    ('12%' vs 0.12, '0.12' vs '12%') are tried only when exactly one side has a percent sign; a plain '12' vs 0.12
    is 0. The best reading wins. An unusable reference raises ValueError.
    """
    for tol in (rel_tol, partial_rel_tol):
        if not (math.isfinite(tol) and tol >= 0):
            raise ValueError(f"tolerances must be finite and non-negative, got {tol!r}")
    expected = _reference_token(reference).number
    answer = _pick(answer_text) if isinstance(answer_text, str) else None
    if answer is None:
        return NumericResult(0.0, None, expected.value, None, "no number in the answer")
    graded = [
        (*_grade(value, place, answer.significant, expected.value, (rel_tol, partial_rel_tol)), note)
        for value, place, note in _readings(answer, expected.is_percent)
    ]
    score, rel, reason, note = max(graded, key=lambda g: (g[0], -g[1] if g[1] is not None else -math.inf))
    rel = rel if rel is not None and math.isfinite(rel) else None
    return NumericResult(_clamp01(score), answer.number.value, expected.value, rel, reason + note)


def shaped_score(score: float, tool_calls: int, target: int | None, penalty_per_call: float) -> float:
    """Subtract penalty_per_call per tool call beyond target, clamped to [0, 1]; off when target is None or the
    penalty is 0. A negative penalty would reward extra calls, so it is a configuration error (ValueError)."""
    if not math.isfinite(penalty_per_call) or penalty_per_call < 0:
        raise ValueError(f"penalty_per_call must be finite and non-negative, got {penalty_per_call!r}")
    base = _clamp01(float(score))
    if target is None or penalty_per_call == 0:
        return base
    excess = max(0, tool_calls - max(0, target))
    return _clamp01(base - excess * penalty_per_call)


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
    return _clamp01(number)
