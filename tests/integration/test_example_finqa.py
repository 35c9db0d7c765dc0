"""The FinQA example (examples/finqa) on the real stack: a corpus of 2,800 filings as a `dir`
environment with a budget of 10 calls, three scripted rollouts through the tool endpoints,
and the `numeric` grader's scores."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from examples.finqa import generate, run
from examples.finqa.agents import row_value, statement_rows
from examples.finqa.questions import question_of
from sandbox.grading import numeric_score
from tests.stack import ROOT, Stack, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def finqa(stack: Stack) -> tuple[generate.Generated, list[dict]]:
    g = generate.write(stack.workspace_root / "finqa-corpus")
    r = stack.put_environment(run.ENVIRONMENT, run.environment_spec(g.corpus))
    assert r.status_code == 200, r.text
    assert r.json()["file_count"] == 2801  # 2,800 filings and the README
    return g, generate.load_dataset(g.dataset)


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path)}\0".encode() + f.read_bytes())
    return h.hexdigest()


def recomputed(metric: str, table: dict[str, list[float]]) -> float | None:
    revenue = row_value(table, "revenue")
    if metric == "operating_margin":
        return 100 * row_value(table, "operating") / revenue
    if metric == "net_margin":
        return 100 * row_value(table, "net") / revenue
    if metric == "revenue_growth":
        return 100 * (revenue / row_value(table, "revenue", column=1) - 1)
    return None


def test_the_corpus_is_deterministic_and_its_references_match_the_printed_tables(tmp_path: Path) -> None:
    # Two processes with different hash seeds: nothing may depend on set or dict-of-str ordering.
    for name, hash_seed in (("a", "1"), ("b", "2")):
        subprocess.run(
            [sys.executable, "-m", "examples.finqa.generate", str(tmp_path / name), "--companies", "40"],
            cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": hash_seed}, check=True, capture_output=True,
        )  # fmt: skip
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    rows = generate.load_dataset(tmp_path / "a" / "dataset.jsonl")
    assert len(rows) == 121 and question_of(rows[0]) == "What was ACME's operating margin in fiscal 2021?"
    checked = 0
    for row in rows:  # recompute from the statement text an agent reads, not from the generator's figures
        meta = row["meta"]
        text = (tmp_path / "a" / "corpus" / meta["sources"][0]).read_text()
        table = statement_rows(text[text.index("CONSOLIDATED STATEMENTS OF") :])
        value = recomputed(meta["metric"], table)
        if value is not None:
            assert numeric_score(f"{value:.6f}", row["reference_answer"]).score == 1.0, row
            checked += 1
    assert checked >= 20


def test_three_scripted_rollouts_are_graded_as_expected(stack: Stack, finqa: tuple[generate.Generated, list]) -> None:
    _, rows = finqa
    played = run.play_all(stack.http, rows)
    got = [(p.scenario.agent, p.tool_calls, p.score, p.last_reason) for p in played]
    assert got == [
        ("careful", 4, 1.0, "none"),
        ("sloppy", 4, 0.0, "none"),
        ("wanderer", 11, 0.0, "budget_exhausted"),  # the 11th call was refused, not run
    ]
    assert [p.problems for p in played] == [(), (), ()]
    assert "budget" in played[2].last_output and "final answer" in played[2].last_output
    for p in played:
        assert stack.http.get(f"/v1/rollouts/{p.rollout_id}").json()["state"] == "released"
        wait_until(lambda rid=p.rollout_id: not stack.containers_of(rid), timeout_s=30)


def test_the_reference_answers_are_not_in_the_sandbox(stack: Stack, finqa: tuple[generate.Generated, list]) -> None:
    # The reward hack: read the dataset instead of the filings. It lies outside the workspace.
    rid = f"finqa-hack-{uuid.uuid4().hex[:6]}"
    r = stack.shell(
        rid, "ls; rg -l -F --one-file-system reference_answer / 2>/dev/null | head -3; echo end", item=finqa[1][0]
    )
    assert r.status_code == 200, r.text
    assert r.json()["output"] == "README.txt\nfilings\nend\n"
    stack.http.delete(f"/v1/rollouts/{rid}")


def test_run_prints_the_table_and_fails_when_an_expectation_fails(
    stack: Stack, finqa: tuple[generate.Generated, list], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    args = ["--url", stack.base, "--token", stack.token, "--corpus", str(finqa[0].corpus.parent)]
    assert run.main(args) == 0
    out = capsys.readouterr().out
    assert "corpus: 2,800 filings" in out and "all 3 rollouts ended as expected" in out
    assert "13.48%       13.48%       1.0" in out  # ACME, fiscal 2021, from the seed talk
    # A run whose rollout does not end as expected exits non-zero and says why.
    monkeypatch.setattr(run, "SCENARIOS", (run.Scenario("careful", "operating_margin", True, expected_score=0.0),))
    assert run.main(args) == 1
    assert "FAILED finqa-careful-" in capsys.readouterr().err
