"""The `numeric` grader: FinQA-style answers, tolerant of formatting, with partial credit."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_UP, Decimal
from numbers import Real
from typing import Any

from .scores import clamp01 as _clamp01

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
