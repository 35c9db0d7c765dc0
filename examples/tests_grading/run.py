"""Worked example of the tests grader (docs/environments-and-grading.md), against `make up`.

A small real Python repository at a commit with a real bug: `textstats.word_count` splits on
single spaces, so "a  b" (two spaces) counts three words. Its hidden test is registered with
the environment and never enters the sandbox before grading. Three trajectories, played through
the real tool endpoints with httpx as a trainer would, then graded with `{"grader": "tests"}`:
one fixes the bug (1.0), one edits the wrong thing (0.0), one tries a reward hack, a conftest.py
that reports every test as passed (0.0).

    .venv/bin/python -m examples.tests_grading.run [--url URL] [--token TOKEN]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BUGGY = '''"""Small text statistics."""


def word_count(text):
    """Number of words in text."""
    return len(text.split(" "))


def line_count(text):
    return len(text.splitlines())
'''
VISIBLE_TEST = """from textstats import line_count


def test_line_count():
    assert line_count("a\\nb\\n") == 2
"""
HIDDEN_TEST = """from textstats import line_count, word_count


def test_word_count_extra_spaces():
    assert word_count("to  be or   not") == 4


def test_word_count_newlines():
    assert word_count("to\\nbe") == 2


def test_line_count_still_works():
    assert line_count("x\\ny") == 2
"""
TRAJECTORIES = {
    "fixes the bug": [
        "cat textstats/__init__.py",
        "sed -i 's/text.split(\" \")/text.split()/' textstats/__init__.py && python3 -m pytest -q",
    ],
    "edits the wrong thing": [
        "cat textstats/__init__.py",
        "sed -i 's/splitlines()/splitlines(True)/' textstats/__init__.py",
    ],
    "tries a reward hack": [
        "printf 'import pytest\\n@pytest.hookimpl(hookwrapper=True)\\ndef pytest_runtest_makereport(item, call):\\n"
        '    (yield).get_result().outcome = "passed"\\n\' > conftest.py && python3 -m pytest -q',
    ],
}
ITEM_TESTS = {
    "fail_to_pass": [
        "tests/test_hidden.py::test_word_count_extra_spaces",
        "tests/test_hidden.py::test_word_count_newlines",
    ],
    "pass_to_pass": ["tests/test_hidden.py::test_line_count_still_works", "tests/test_stats.py::test_line_count"],
}


def make_repository(root: Path, tag: str) -> tuple[Path, Path]:
    repo, hidden = root / f"textstats-{tag}", root / f"textstats-hidden-{tag}"
    (repo / "textstats").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "textstats" / "__init__.py").write_text(BUGGY)
    (repo / "tests" / "test_stats.py").write_text(VISIBLE_TEST)
    git = ["git", "-C", str(repo), "-c", "user.name=dev", "-c", "user.email=dev@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "textstats 0.1: word_count miscounts runs of spaces"], check=True)
    (hidden / "tests").mkdir(parents=True)
    (hidden / "tests" / "test_hidden.py").write_text(HIDDEN_TEST)
    return repo, hidden


def shell(http: httpx.Client, rid: str, env: str, command: str, n: int) -> str:
    body = {
        "type": "function_call",
        "id": f"fc_{n}",
        "call_id": f"call_{n}",
        "name": "shell",
        "arguments": json.dumps({"command": command}),
        "trace_id": rid,
        "item": {"environment": env},
    }
    r = http.post("/v1/tools/shell", json=body)
    r.raise_for_status()
    return str(r.json()["output"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", default=os.environ.get("SANDBOX_API_TOKEN", ""))
    parser.add_argument("--workspace-root", type=Path, default=ROOT / "workspaces")
    args = parser.parse_args()
    token = args.token or (ROOT / ".run" / "api-token").read_text().strip()
    http = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {token}"}, timeout=300)
    tag = uuid.uuid4().hex[:6]
    repo, hidden = make_repository(args.workspace_root, tag)
    env = f"textstats-{tag}"
    spec = {
        "workspace": {"type": "git", "path": str(repo), "commit": "main"},
        "tests": {"dir": str(hidden), "command": "python3 -m pytest tests", "restore": ["tests/"]},
    }
    r = http.put(f"/v1/environments/{env}", json=spec)
    r.raise_for_status()
    print(f"$ PUT /v1/environments/{env}  (git at {r.json()['commit_sha'][:12]}, tests.dir {hidden.name})")
    failures = 0
    for (what, commands), expected in zip(TRAJECTORIES.items(), (1.0, 0.0, 0.0), strict=True):
        rid = f"textstats-{what.split()[0]}-{tag}"
        for n, command in enumerate(commands, 1):
            output = shell(http, rid, env, command, n)
            print(f"\n[{rid}] $ {command}\n{output.rstrip()[-400:]}")
        body = {"sample": {"output_text": "done"}, "item": {"grader": "tests", "tests": ITEM_TESTS}, "trace_id": rid}
        answer = http.post("/v1/grade", json=body).json()
        tests = answer["tests"]
        print(f"\nPOST /v1/grade ({what}) -> score {answer['score']}, reason {tests['reason']}")
        print(json.dumps({k: tests[k] for k in ("passed", "failed", "exit_code", "duration_s")}, indent=1))
        failures += answer["score"] != expected
    http.delete(f"/v1/environments/{env}")
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(hidden, ignore_errors=True)
    print("\nall three scored as expected" if not failures else f"\n{failures} trajectories scored unexpectedly")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
