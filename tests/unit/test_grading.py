"""Grading math: paths, answer parsing, file F-beta, numeric answers, shaping and custom graders."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import pytest

from sandbox.grading import (
    WORKDIR,
    CustomGraderError,
    FileF1Result,
    NumericResult,
    canonical_path,
    coerce_score,
    file_f1,
    load_custom_grader,
    numeric_score,
    parse_number,
    selected_files,
    shaped_score,
)


class TestCanonicalPath:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("./a.py", "a.py"),
            ("/workspace/a.py", "a.py"),
            ("workspace/a.py", "a.py"),
            ("./workspace/src/a.py", "src/a.py"),
            ("a//b/./c.py", "a/b/c.py"),
            ("src/", "src"),
            ("`src/x.py`", "src/x.py"),
            ("  'src/x.py'  ", "src/x.py"),
            ('"./a.py"', "a.py"),
            ("src/../lib/a.py", "lib/a.py"),
            ("/workspace//src///a.py", "src/a.py"),
        ],
    )
    def test_normalises(self, raw: str, expected: str) -> None:
        assert canonical_path(raw) == expected

    @pytest.mark.parametrize(
        "raw",
        ["../etc/passwd", "/etc/passwd", "", "   ", "``", ".", "/workspace", "/workspace/../etc/passwd", "a/../../b"],
    )
    def test_rejects_empty_and_escaping(self, raw: str) -> None:
        assert canonical_path(raw) is None

    def test_other_workdir(self) -> None:
        assert canonical_path("/repo/src/a.py", workdir="/repo") == "src/a.py"
        assert canonical_path("/workspace/src/a.py", workdir="/repo") is None
        assert WORKDIR == "/workspace"


class TestSelectedFiles:
    def test_output_json_list(self) -> None:
        assert selected_files({"output_json": ["b.py", "a.py"], "output_text": ""}) == ["b.py", "a.py"]

    def test_output_json_files_and_paths(self) -> None:
        assert selected_files({"output_json": {"files": ["a.py", "src/b.py"]}}) == ["a.py", "src/b.py"]
        assert selected_files({"output_json": {"paths": ["c.py"]}}) == ["c.py"]

    def test_output_json_takes_precedence_over_text(self) -> None:
        sample = {"output_json": ["from_json.py"], "output_text": '["from_text.py"]'}
        assert selected_files(sample) == ["from_json.py"]
        assert selected_files({"output_json": [], "output_text": "a.py"}) == []

    def test_unusable_output_json_falls_back_to_text(self) -> None:
        assert selected_files({"output_json": {"other": 1}, "output_text": "a.py"}) == ["a.py"]

    def test_json_text(self) -> None:
        assert selected_files({"output_json": None, "output_text": '["a.py", "src/b.py"]'}) == ["a.py", "src/b.py"]
        assert selected_files({"output_text": '{"files": ["x.py"]}'}) == ["x.py"]

    def test_json_text_with_trailing_comma_and_fence(self) -> None:
        text = 'Here you go:\n```json\n[\n  "a.py",\n  "b.py",\n]\n```'
        assert selected_files({"output_text": text}) == ["a.py", "b.py"]

    def test_json_embedded_in_prose(self) -> None:
        assert selected_files({"output_text": 'I selected ["a.py", "b.py"] after reading.'}) == ["a.py", "b.py"]

    def test_fenced_block_with_bullets(self) -> None:
        text = 'Files:\n```\n- `src/a.py`\n* ./src/b.py,\n1. src/c.py\n2) "docs/My File.md"\n```\nDone.'
        assert selected_files({"output_text": text}) == ["src/a.py", "./src/b.py", "src/c.py", "docs/My File.md"]

    def test_plain_lines_with_prose_header(self) -> None:
        text = "Relevant files:\nsrc/a.py\n- src/b.py - the parser\nI think this is all of them.\n**src/d.py**\n"
        assert selected_files({"output_text": text}) == ["src/a.py", "src/b.py", "src/d.py"]

    def test_comma_separated_line(self) -> None:
        assert selected_files({"output_text": "src/a.py, src/b.py"}) == ["src/a.py", "src/b.py"]

    def test_brackets_in_paths_are_not_json(self) -> None:
        assert selected_files({"output_text": "src/[id].tsx\nsrc/[slug].tsx"}) == ["src/[id].tsx", "src/[slug].tsx"]

    def test_nothing(self) -> None:
        assert selected_files({}) == []
        assert selected_files({"output_text": ""}) == []
        assert selected_files({"output_text": "I could not find anything relevant."}) == []


class TestFileF1:
    def test_exact_selection(self) -> None:
        r = file_f1(["a.py", "b.py"], ["a.py", "b.py"])
        assert (r.score, r.precision, r.recall) == (1.0, 1.0, 1.0)
        assert r.matched == ["a.py", "b.py"] and r.missed == [] and r.hallucinated == []

    def test_empty_answer(self) -> None:
        r = file_f1([], ["a.py"])
        assert (r.score, r.precision, r.recall) == (0.0, 0.0, 0.0)
        assert r.missed == ["a.py"]

    def test_blank_entries_are_not_selections(self) -> None:
        assert file_f1(["", "  ", "``"], ["a.py"]).selected == []

    def test_both_empty(self) -> None:
        r = file_f1([], [])
        assert (r.score, r.precision, r.recall) == (1.0, 1.0, 1.0)

    def test_selection_against_empty_reference(self) -> None:
        r = file_f1(["a.py"], [])
        assert (r.score, r.precision, r.recall) == (0.0, 0.0, 1.0)

    def test_listing_every_file_does_not_pay(self) -> None:
        repo = [f"pkg/mod_{i}.py" for i in range(2000)]
        reference = [repo[5], repo[500], repo[1999]]
        r = file_f1(repo, reference, existing=set(repo))
        assert r.recall == 1.0
        assert r.score < 0.01
        assert file_f1(repo, reference, existing=set(repo), beta=2.0).score < 0.01

    def test_hallucinated_paths_lower_precision(self) -> None:
        existing = {"a.py", "b.py", "c.py"}
        honest = file_f1(["a.py"], ["a.py", "b.py"], existing=existing)
        padded = file_f1(["a.py", "ghost.py", "src/nope.py"], ["a.py", "b.py"], existing=existing)
        assert padded.hallucinated == ["ghost.py", "src/nope.py"]
        assert padded.precision == pytest.approx(1 / 3)
        assert padded.score < honest.score

    def test_nonexistent_reference_match_does_not_count(self) -> None:
        r = file_f1(["a.py"], ["a.py"], existing={"b.py"})
        assert r.matched == [] and r.hallucinated == ["a.py"] and r.score == 0.0

    def test_unknown_workspace_skips_existence_check(self) -> None:
        r = file_f1(["ghost.py", "a.py"], ["a.py"], existing=None)
        assert r.hallucinated == [] and r.precision == 0.5

    def test_escaping_paths_are_wrong_selections(self) -> None:
        r = file_f1(["a.py", "/etc/passwd", "../x.py"], ["a.py"])
        assert r.selected == ["a.py"]
        assert r.hallucinated == ["/etc/passwd", "../x.py"]
        assert r.precision == pytest.approx(1 / 3)

    def test_duplicates_and_prefixes_count_once(self) -> None:
        r = file_f1(["a.py", "./a.py", "/workspace/a.py", "`a.py`", "b.py"], ["a.py", "./a.py"])
        assert r.selected == ["a.py", "b.py"]
        assert r.precision == 0.5 and r.recall == 1.0
        assert r.score == pytest.approx(2 * 0.5 / 1.5)

    def test_missed_reference_files_lower_recall(self) -> None:
        r = file_f1(["a.py"], ["a.py", "b.py", "c.py", "d.py"])
        assert r.precision == 1.0 and r.recall == 0.25
        assert r.missed == ["b.py", "c.py", "d.py"]
        assert r.score == pytest.approx(2 * 0.25 / 1.25)

    def test_directory_does_not_select_its_files(self) -> None:
        r = file_f1(["src/"], ["src/a.py"], existing={"src/a.py"})
        assert r.score == 0.0 and r.hallucinated == ["src"]

    def test_beta_two_weights_recall(self) -> None:
        high_recall = (["a.py", "b.py", "x.py", "y.py"], ["a.py", "b.py"])  # P 0.5, R 1
        high_precision = (["a.py"], ["a.py", "b.py"])  # P 1, R 0.5
        assert file_f1(*high_recall, beta=2.0).score > file_f1(*high_precision, beta=2.0).score
        assert file_f1(*high_recall).score == pytest.approx(file_f1(*high_precision).score)
        assert file_f1(*high_recall, beta=2.0).score == pytest.approx(5 * 0.5 / (4 * 0.5 + 1))

    def test_invalid_inputs(self) -> None:
        with pytest.raises(ValueError):
            file_f1(["a.py"], ["../outside.py"])
        with pytest.raises(ValueError):
            file_f1(["a.py"], ["a.py"], beta=0.0)

    def test_to_dict_is_json(self) -> None:
        r = file_f1(["a.py", "z.py"], ["a.py", "b.py"], existing={"a.py", "b.py"})
        d = r.to_dict()
        assert json.loads(json.dumps(d)) == d
        assert d["matched"] == ["a.py"] and d["hallucinated"] == ["z.py"] and d["missed"] == ["b.py"]
        assert isinstance(r, FileF1Result) and d["beta"] == 1.0


class TestParseNumber:
    @pytest.mark.parametrize(
        ("text", "value", "is_percent"),
        [
            ("$1,234.5", 1234.5, False),
            ("-12.5%", -12.5, True),
            ("(1,234)", -1234.0, False),
            ("($1,234)", -1234.0, False),
            ("1.2 million", 1.2e6, False),
            ("3.4 billion", 3.4e9, False),
            ("5k", 5e3, False),
            ("2.5 bn", 2.5e9, False),
            ("7 thousand", 7e3, False),
            ("$3m", 3e6, False),
            ("0.12", 0.12, False),
            (".5", 0.5, False),
            ("12 percent", 12.0, True),
            ("1e6", 1e6, False),
            ("\u22127.5", -7.5, False),
            ("12.5 USD", 12.5, False),
            ("42 shares", 42.0, False),
            ("approximately 7.1%", 7.1, True),
        ],
    )
    def test_forms(self, text: str, value: float, is_percent: bool) -> None:
        parsed = parse_number(text)
        assert parsed is not None
        assert parsed.value == pytest.approx(value) and parsed.is_percent is is_percent

    def test_marker_then_first_number(self) -> None:
        assert _value("Answer: 42 (up from 30 last year)") == 42
        assert _value("x = 3 + 4 = 7") == 7
        assert _value("The answer is 12.5% in 2019.") == 12.5
        assert _value("Computed 120 - 100 = 20. Answer: see above") == 20  # marker without number: last number

    def test_last_number_without_marker(self) -> None:
        assert _value("Revenue went from 100 to 120, a change of 20") == 20
        assert _value("between 2019-2020 it was 5") == 5

    def test_detached_single_letter_is_not_a_scale(self) -> None:
        assert _value("5 m") == 5

    def test_no_number(self) -> None:
        assert parse_number("no idea") is None
        assert parse_number("") is None
        assert parse_number("1e999") is None  # not finite


def _value(text: str) -> float:
    parsed = parse_number(text)
    assert parsed is not None
    return parsed.value


class TestNumericScore:
    @pytest.mark.parametrize(
        ("answer", "reference", "score"),
        [
            ("$1,234.5", 1234.5, 1.0),
            ("12%", 0.12, 1.0),
            ("12%", 12, 1.0),
            ("0.12", "12%", 1.0),
            ("12", "12%", 1.0),
            ("12", 0.12, 0.0),
            ("0.12", 12, 0.0),
            ("1.2 million", 1200000, 1.0),
            ("The answer is 42 shares.", 42, 1.0),
            ("(1,234)", -1234, 1.0),
            ("12.3", 12.34, 0.5),
            ("12", 12.4, 0.5),  # beyond 1% but the reference rounds to the answer
            ("13", 12.34, 0.0),
            ("0 billion", 0.3, 0.0),  # too coarse to earn rounding credit
            ("0.0", 0, 1.0),
            ("0.001", 0, 0.0),
            ("1234.6", "$1,234.5", 1.0),
        ],
    )
    def test_scores(self, answer: str, reference: str | float, score: float) -> None:
        assert numeric_score(answer, reference).score == score

    def test_no_number(self) -> None:
        r = numeric_score("no idea", 1.0)
        assert r.score == 0.0 and r.parsed is None and r.reason == "no number in the answer"

    @pytest.mark.parametrize("reference", ["abc", "", float("nan"), float("inf"), True])
    def test_broken_reference_raises(self, reference: Any) -> None:
        with pytest.raises(ValueError):
            numeric_score("42", reference)

    def test_result_fields(self) -> None:
        r = numeric_score("12%", 0.12)
        assert isinstance(r, NumericResult)
        assert (r.parsed, r.expected, r.relative_error) == (12.0, 0.12, 0.0)
        assert "percent" in r.reason
        assert json.loads(json.dumps(r.to_dict())) == r.to_dict()

    def test_deterministic(self) -> None:
        for answer, reference in [("12.3", 12.34), ("12%", 0.12), ("nothing", 3)]:
            assert numeric_score(answer, reference) == numeric_score(answer, reference)
        assert file_f1(["b.py", "a.py", "x"], ["a.py"]) == file_f1(["b.py", "a.py", "x"], ["a.py"])

    def test_scores_stay_in_range(self) -> None:
        answers = ["", "nan", "inf", "-inf", "1e999", "-1e308", "9" * 400, "((((", "%%%", "-", "$", "1,2,3", "\u2212"]
        answers += ["1e-400", "0", "(0)", "12%%", "= = =", "answer: answer:", "\x00", "1.7976931348623157e308"]
        for answer in answers:
            references: list[str | float] = [0, 1e-300, -1e308, 1e308, 0.12, "12%", "-3", 5]
            for reference in references:
                r = numeric_score(answer, reference)
                assert 0.0 <= r.score <= 1.0 and math.isfinite(r.score)
                assert r.relative_error is None or math.isfinite(r.relative_error)
                assert json.dumps(r.to_dict(), allow_nan=False)

    def test_file_scores_stay_in_range(self) -> None:
        selections = [[], [""], ["/"], [".."], ["a.py"] * 50, ["a.py", "b.py"], ["\x00"], ["/workspace/"], ["x"] * 3]
        for selection in selections:
            for reference in [[], ["a.py"], ["a.py", "b.py", "c.py"]]:
                for beta in (0.5, 1.0, 3.0):
                    r = file_f1(selection, reference, existing={"a.py", "b.py"}, beta=beta)
                    assert 0.0 <= r.score <= 1.0 and 0.0 <= r.precision <= 1.0 and 0.0 <= r.recall <= 1.0
                    assert r == file_f1(selection, reference, existing={"a.py", "b.py"}, beta=beta)


class TestShapedScore:
    def test_off(self) -> None:
        assert shaped_score(0.8, 50, None, 0.1) == 0.8
        assert shaped_score(0.8, 50, 5, 0.0) == 0.8

    def test_penalises_calls_beyond_target(self) -> None:
        assert shaped_score(0.8, 5, 5, 0.1) == 0.8
        assert shaped_score(0.8, 7, 5, 0.1) == pytest.approx(0.6)

    def test_clamped(self) -> None:
        assert shaped_score(0.8, 100, 5, 0.1) == 0.0
        assert shaped_score(1.5, 0, 5, 0.1) == 1.0
        assert shaped_score(float("nan"), 0, None, 0.0) == 0.0

    def test_negative_penalty_is_refused(self) -> None:
        with pytest.raises(ValueError):
            shaped_score(0.5, 10, 1, -0.1)


class TestCustomGrader:
    def test_allowed_function_loads(self) -> None:
        fsum = load_custom_grader("math:fsum", allowed={"math:fsum"})
        assert fsum([0.25, 0.5]) == 0.75

    def test_not_allowed(self) -> None:
        with pytest.raises(CustomGraderError, match="not in the allowed list"):
            load_custom_grader("os:system", allowed={"math:fsum"})

    @pytest.mark.parametrize("spec", ["math.fsum", "math:", ":fsum", "math:fsum:x", "os; rm:x", "", "1abc:f"])
    def test_malformed(self, spec: str) -> None:
        with pytest.raises(CustomGraderError, match="malformed"):
            load_custom_grader(spec, allowed={spec})

    def test_missing_attribute(self) -> None:
        with pytest.raises(CustomGraderError, match="no attribute"):
            load_custom_grader("math:no_such_function", allowed=["math:no_such_function"])

    def test_import_failure(self) -> None:
        with pytest.raises(CustomGraderError, match="cannot import"):
            load_custom_grader("no_such_module_xyz:f", allowed=["no_such_module_xyz:f"])

    def test_not_callable(self) -> None:
        with pytest.raises(CustomGraderError, match="not callable"):
            load_custom_grader("math:pi", allowed=["math:pi"])


class TestCoerceScore:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [(0.5, 0.5), (1, 1.0), (7, 1.0), (-3, 0.0), ({"score": 0.25, "why": "x"}, 0.25), (True, 1.0)],
    )
    def test_numbers(self, value: Any, expected: float) -> None:
        assert coerce_score(value) == expected

    def test_decimal(self) -> None:
        assert coerce_score(Decimal("0.75")) == 0.75

    @pytest.mark.parametrize(
        "value", [float("nan"), float("inf"), "0.5", None, [0.5], {"points": 1}, {"score": "high"}, 10**400]
    )
    def test_rejects(self, value: Any) -> None:
        with pytest.raises(CustomGraderError):
            coerce_score(value)
