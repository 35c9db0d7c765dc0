"""A Harbor task directory registered as an environment, on the real stack.

The task is written here as a task author would: instruction.md, environment/Dockerfile
(FROM the service's sandbox image, WORKDIR /app, a buggy file), tests/test.sh writing the
reward to /logs/verifier/reward.txt, solution/solve.sh and task.toml. The image is built on
the host from the Dockerfile, offline; the tests stay outside the sandbox until grading.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.stack import Stack

pytestmark = pytest.mark.integration

INSTRUCTION = "Fix `add` in /app/calc.py: `add(2, 3)` must be 5.\n"
BUGGY = "def add(a, b):\n    return a - b\n"
# The verifier as Harbor tasks write it: run a check, write 1 or 0 to the reward file.
TEST_SH = """\
#!/bin/bash
cd /app
if python3 -c 'from calc import add; assert add(2, 3) == 5 and add(-1, -1) == -2'
then echo 1 > /logs/verifier/reward.txt
else echo 0 > /logs/verifier/reward.txt
fi
"""
SOLVE_SH = "#!/bin/bash\nsed -i 's/return a - b/return a + b/' /app/calc.py\n"


def write_task(root: Path, dockerfile: str, **skip: bool) -> Path:
    """A Harbor task directory under `root`; `skip` leaves out files by name (e.g. Dockerfile=True)."""
    task = root / f"task-{uuid.uuid4().hex[:6]}"
    files = {
        "instruction.md": INSTRUCTION,
        "task.toml": 'version = "1.0"\n\n[verifier]\ntimeout_sec = 30.0\n\n[agent]\ntimeout_sec = 120.0\n',
        "environment/Dockerfile": dockerfile,
        "environment/calc.py": BUGGY,
        "tests/test.sh": TEST_SH,
        "solution/solve.sh": SOLVE_SH,
    }
    for rel, text in files.items():
        if not skip.get(Path(rel).stem):
            (task / rel).parent.mkdir(parents=True, exist_ok=True)
            (task / rel).write_text(text)
    return task


@pytest.fixture(scope="module")
def task_env(stack: Stack) -> tuple[str, Path]:
    # No USER root: the sandbox image's USER is the sandbox user, and COPY leaves root-owned files.
    task = write_task(stack.workspace_root, "FROM rollout-sandbox:bookworm\nWORKDIR /app\nCOPY calc.py /app/calc.py\n")
    name = task.name
    r = stack.put_environment(name, {"task": {"type": "harbor", "path": str(task)}})
    assert r.status_code == 200, r.text
    return name, task


def shell(stack: Stack, rid: str, env: str, command: str) -> str:
    r = stack.shell(rid, command, item={"environment": env})
    assert r.status_code == 200, r.text
    return str(r.json()["output"])


def grade(stack: Stack, rid: str) -> Any:
    body = {"sample": {"output_text": "done"}, "item": {"grader": "tests"}, "trace_id": rid}
    r = stack.http.post("/v1/grade", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_registration_shows_the_instruction_and_harbor_test_defaults(stack: Stack, task_env: tuple[str, Path]) -> None:
    name, task = task_env
    described = stack.http.get(f"/v1/environments/{name}").json()
    assert described["instruction"] == INSTRUCTION
    assert described["task"] == {"type": "harbor", "path": str(task)}
    assert described["tests"] == {
        "dir": str(task / "tests"),
        "command": "bash /tests/test.sh",
        "score": "reward_file",
        "reward_file": "/logs/verifier/reward.txt",
        "timeout_s": 30.0,  # task.toml's [verifier] timeout_sec
    } | {k: None for k in ("files", "fail_to_pass", "pass_to_pass", "restore")}
    listed = {e["name"]: e for e in stack.http.get("/v1/environments").json()["environments"]}
    assert listed[name]["instruction"] == INSTRUCTION and listed["default"]["instruction"] is None


def test_the_solution_scores_one_and_doing_nothing_scores_zero(stack: Stack, task_env: tuple[str, Path]) -> None:
    name, task = task_env
    solved, idle = f"hb-{uuid.uuid4().hex[:10]}", f"hb-{uuid.uuid4().hex[:10]}"
    # The agent works in the Dockerfile's WORKDIR, on files it may edit though the build left them root's.
    assert shell(stack, solved, name, "pwd; stat -c %U calc.py").split() == ["/app", "sandbox"]
    # Nothing of tests/ (nor the solution) is anywhere the agent can look before grading.
    look = "test -e /tests || echo no-tests; test -e /logs || echo no-logs; ls -R / 2>/dev/null | grep -c '^test.sh$'"
    assert shell(stack, solved, name, look).split()[:3] == ["no-tests", "no-logs", "0"]
    shell(stack, solved, name, (task / "solution" / "solve.sh").read_text())
    shell(stack, idle, name, "cat calc.py")
    # The base copy grading restores from is the built workdir, root's only.
    box = stack.containers_of(solved)[0]
    base = box.exec_run(["sh", "-c", "stat -c %U:%a /opt/sandbox-base; cat /opt/sandbox-base/workdir/calc.py"])
    assert base.output.decode() == "root:700\n" + BUGGY
    body = grade(stack, solved)
    assert body["score"] == 1.0 and body["tests"]["reward"].strip() == "1", body
    body = grade(stack, idle)
    assert body["score"] == 0.0 and body["tests"]["reward"].strip() == "0", body


def test_bad_task_definitions_are_clear_4xx(stack: Stack, task_env: tuple[str, Path]) -> None:
    _, task = task_env
    no_dockerfile = write_task(stack.workspace_root, "", Dockerfile=True, instruction=True)
    r = stack.put_environment("hb-bad", {"task": {"type": "harbor", "path": str(no_dockerfile)}})
    assert r.status_code == 400, r.text
    assert "missing instruction.md, environment/Dockerfile" in r.json()["error"]["message"]
    r = stack.put_environment("hb-bad", {"task": {"type": "harbor", "path": "/etc"}})
    assert r.status_code == 403 and r.json()["error"]["code"] == "workspace_forbidden"
    r = stack.put_environment("hb-bad", {"task": {"type": "harbor", "path": str(task / "missing")}})
    assert r.status_code == 400 and "is not a directory" in r.json()["error"]["message"]
    for extra in ({"image": "rollout-sandbox:bookworm"}, {"workspace": {"type": "dir", "path": str(task)}}):
        r = stack.put_environment("hb-bad", {"task": {"type": "harbor", "path": str(task)}, **extra})
        assert r.status_code == 400 and "task cannot be combined with workspace or image" in r.text, r.text
    assert stack.http.get("/v1/environments/hb-bad").status_code == 404


@pytest.mark.parametrize(
    ("dockerfile", "expected"),
    [
        ("FROM no-such-base-{tag}:1\nWORKDIR /app\n", "builds FROM 'no-such-base-{tag}:1', which is not on this host"),
        # The step's own output (not in its command line) reaches the message.
        ("FROM rollout-sandbox:bookworm\nRUN echo needs-a-package-$((40 + 2)) >&2; exit 3\n", "needs-a-package-42"),
    ],
    ids=["from-an-image-not-on-the-host", "a-step-that-fails"],
)
def test_a_dockerfile_that_cannot_build_fails_rollouts_clearly(stack: Stack, dockerfile: str, expected: str) -> None:
    """The environment's own configuration problem: every rollout is told why at once, and so is GET."""
    tag = uuid.uuid4().hex[:6]
    task = write_task(stack.workspace_root, dockerfile.format(tag=tag))
    assert stack.put_environment(task.name, {"task": {"type": "harbor", "path": str(task)}}).status_code == 200
    for _ in range(2):  # a retry is told the same, as quickly
        started = time.monotonic()
        r = stack.shell(f"hb-{uuid.uuid4().hex[:10]}", "true", item={"environment": task.name})
        assert time.monotonic() - started < 20
        assert r.status_code == 503 and r.json()["error"]["code"] == "provision_failed", r.text
        assert expected.format(tag=tag) in r.json()["error"]["message"]
    preparation = stack.http.get(f"/v1/environments/{task.name}").json()["preparation"]["testhost"]
    assert preparation["state"] == "failed" and expected.format(tag=tag) in preparation["error"]
