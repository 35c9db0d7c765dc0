"""mini-swe-agent (the real package, pinned in pyproject's dev extra) runs its own agent loop in a
rollout sandbox: its DefaultAgent with its default config, its DeterministicModel replaying a
scripted fix of a real bug in a real repository environment, our environment plugged in through
its `environment_class` setting. The rollout is then graded by running hidden tests in it."""

from __future__ import annotations

import importlib
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.stack import Stack

pytestmark = pytest.mark.integration

BUGGY = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"
HIDDEN_TEST = """\
from calc import add, sub


def test_add():
    assert add(2, 3) == 5


def test_sub():
    assert sub(5, 3) == 2
"""
F2P, P2P = ["tests/test_hidden.py::test_add"], ["tests/test_hidden.py::test_sub"]
# What the scripted model does, step by step: look, reproduce, fix, check, submit (the submit
# action's output after mini-swe-agent's marker line is its submission).
ACTIONS = [
    "grep -n -A1 'def add' calc/__init__.py",
    "python3 -c 'from calc import add; print(add(2, 3))'",
    "sed -i '0,/return a - b/s//return a + b/' calc/__init__.py",
    "python3 -c 'from calc import add; assert add(2, 3) == 5; print(\"fixed\")'",
    "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git diff",
]


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def calc_env(stack: Stack) -> str:
    tag = uuid.uuid4().hex[:6]
    repo = stack.workspace_root / f"mswea-calc-{tag}"
    (repo / "calc").mkdir(parents=True)
    (repo / "calc" / "__init__.py").write_text(BUGGY)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.email=dev@example.com", "-c", "user.name=dev", "add", ".")
    git(repo, "-c", "user.email=dev@example.com", "-c", "user.name=dev", "commit", "-qm", "calc, add is wrong")
    hidden = stack.workspace_root / f"mswea-hidden-{tag}"
    (hidden / "tests").mkdir(parents=True)
    (hidden / "tests" / "test_hidden.py").write_text(HIDDEN_TEST)
    name = f"mswea-calc-{tag}"
    spec = {
        "workspace": {"type": "git", "path": str(repo), "commit": "main"},
        "tests": {"dir": str(hidden), "command": "python3 -m pytest -q tests", "restore": ["tests/"], "timeout_s": 60},
    }
    assert stack.put_environment(name, spec).status_code == 200
    return name


@pytest.fixture()
def mini(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The package, imported quietly, with its global config directory kept in the test's tmp."""
    monkeypatch.setenv("MSWEA_SILENT_STARTUP", "1")
    monkeypatch.setenv("MSWEA_GLOBAL_CONFIG_DIR", str(tmp_path / "mswea"))
    return importlib.import_module("minisweagent")


def test_mini_swe_agent_fixes_a_bug_in_a_sandbox_and_the_rollout_is_graded(
    stack: Stack, calc_env: str, mini: Any
) -> None:
    from minisweagent.agents.default import DefaultAgent
    from minisweagent.environments import get_environment
    from minisweagent.models.test_models import DeterministicModel, make_output

    config = yaml.safe_load((Path(mini.package_dir) / "config" / "default.yaml").read_text())
    item = {"environment": calc_env, "grader": "tests", "tests": {"fail_to_pass": F2P, "pass_to_pass": P2P}}
    env = get_environment(
        {
            **config["environment"],  # its own env vars for every action (PAGER=cat, ...)
            "environment_class": "rollout_sandbox.minisweagent.SandboxEnvironment",
            "base_url": stack.base,
            "token": stack.token,
            "item": item,
            "timeout": 60,
        }
    )
    model = DeterministicModel(
        outputs=[make_output(f"THOUGHT: step {i}", [{"command": c}]) for i, c in enumerate(ACTIONS)],
        observation_template=config["model"]["observation_template"],
    )
    agent = DefaultAgent(model, env, **config["agent"])
    try:
        info = agent.run(task="add(2, 3) returns -1; it should return 5.")
        assert info["exit_status"] == "Submitted"
        assert "-    return a - b\n+    return a + b" in info["submission"]
        observations = [m["content"] for m in agent.messages if m["role"] == "user"][1:]
        assert "<returncode>0</returncode>" in observations[1] and "-1" in observations[1]  # the bug, reproduced
        assert "fixed" in observations[3]
        assert "Linux" in agent.messages[1]["content"]  # the templates' {{system}}: the sandbox's own uname

        graded = env.rollout.grade({"output_text": info["submission"]}, item)
        assert graded["score"] == 1.0, graded
        assert sorted(graded["tests"]["passed"]) == sorted(F2P + P2P)
        assert graded["tool_calls"] == len(ACTIONS)  # the agent's actions; the uname lookup was the trainer's
        calls = env.rollout.trajectory()["calls"]
        assert [c["source"] for c in calls] == ["trainer"] + ["agent"] * len(ACTIONS)
        assert [c["arguments"]["command"] for c in calls[1:]] == ACTIONS
    finally:
        env.close()
    assert stack.http.get(f"/v1/rollouts/{env.rollout.id}").json()["state"] == "released"
