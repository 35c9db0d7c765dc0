"""Harbor task directories as environments: what registration checks and derives, and how a host
prepares the task's image (over the in-memory engine; the real build is in
tests/integration/test_harbor_tasks.py)."""

from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from sandbox import harbor
from sandbox.domain.environment import EnvironmentSpec
from sandbox.domain.errors import ProvisionFailed, WorkspaceForbidden, WorkspaceInvalid
from sandbox.domain.rollout import FAILED, READY, container_name
from sandbox.domain.tests import TestsSpec
from sandbox.worker import harbor_image
from tests.fakes.host import World
from tests.unit.conftest import MakeWorld

DOCKERFILE = "FROM rollout-sandbox:bookworm\nWORKDIR /app\nCOPY calc.py /app/\n"


def make_task(root: Path, dockerfile: str = DOCKERFILE, toml: str | None = None) -> Path:
    task = root / f"task-{uuid.uuid4().hex[:6]}"
    for rel, text in {
        "instruction.md": "Fix add.\n",
        "environment/Dockerfile": dockerfile,
        "environment/calc.py": "def add(a, b):\n    return a - b\n",
        "tests/test.sh": "echo 1 > /logs/verifier/reward.txt\n",
    }.items():
        (task / rel).parent.mkdir(parents=True, exist_ok=True)
        (task / rel).write_text(text)
    if toml is not None:
        (task / "task.toml").write_text(toml)
    return task


def spec(task: Path, **extra: object) -> EnvironmentSpec:
    return EnvironmentSpec.model_validate({"task": {"type": "harbor", "path": str(task)}, **extra})


# --- registration: the task directory --------------------------------------------------------


def test_a_task_reads_its_instruction_and_harbor_defaults(tmp_path: Path) -> None:
    task = harbor.read_task(str(make_task(tmp_path, toml="[verifier]\ntimeout_sec = 99999\n")), [tmp_path])
    assert task.instruction == "Fix add.\n"
    assert task.verifier_timeout_s == 3600.0  # within the grader's limit
    tests = task.tests_defaults(TestsSpec(timeout_s=5, restore=["src/"]))
    assert tests.model_dump(exclude_none=True) == {
        "dir": str(task.path / "tests"),
        "command": "bash /tests/test.sh",
        "score": "reward_file",
        "reward_file": "/logs/verifier/reward.txt",
        "timeout_s": 5.0,  # what the definition gives wins
        "restore": ["src/"],
    }


def test_a_task_without_its_required_files_names_each(tmp_path: Path) -> None:
    task = make_task(tmp_path)
    (task / "environment" / "Dockerfile").unlink()
    (task / "instruction.md").unlink()
    os.symlink("/etc/passwd", task / "instruction.md")  # a symlink is not the task's own file
    with pytest.raises(WorkspaceInvalid, match=r"missing instruction.md, environment/Dockerfile \("):
        harbor.read_task(str(task), [tmp_path])
    with pytest.raises(WorkspaceInvalid, match="is not a directory"):
        harbor.read_task(str(task / "nothing"), [tmp_path])


@pytest.mark.parametrize(
    ("breakage", "error", "message"),
    [
        ("outside", WorkspaceForbidden, "outside the allowed workspace roots"),
        ("context-link", WorkspaceForbidden, "outside the allowed workspace roots"),
        ("big-instruction", WorkspaceInvalid, "instruction.md is over 64 KiB"),
        ("binary-instruction", WorkspaceInvalid, "not UTF-8"),
        ("bad-toml", WorkspaceInvalid, "task.toml is not valid TOML"),
        ("bad-timeout", WorkspaceInvalid, "verifier.timeout_sec must be a positive number"),
    ],
)
def test_a_broken_task_is_refused_with_the_reason(
    tmp_path: Path, breakage: str, error: type[Exception], message: str
) -> None:
    roots = [tmp_path / "root"]
    roots[0].mkdir()
    task = make_task(tmp_path if breakage == "outside" else roots[0])
    if breakage == "context-link":
        os.rename(task / "environment", tmp_path / "elsewhere")
        os.symlink(tmp_path / "elsewhere", task / "environment")
    elif breakage == "big-instruction":
        (task / "instruction.md").write_text("x" * (64 * 1024 + 1))
    elif breakage == "binary-instruction":
        (task / "instruction.md").write_bytes(b"\xff\xfe")
    elif breakage == "bad-toml":
        (task / "task.toml").write_text("[verifier\n")
    elif breakage == "bad-timeout":
        (task / "task.toml").write_text("[verifier]\ntimeout_sec = -1\n")
    with pytest.raises(error, match=message):
        harbor.read_task(str(task), roots)


def test_a_task_excludes_a_workspace_and_an_image(tmp_path: Path) -> None:
    for extra in ({"image": "x"}, {"workspace": {"type": "dir", "path": str(tmp_path)}}):
        with pytest.raises(ValidationError, match="task cannot be combined with workspace or image"):
            spec(tmp_path, **extra)


def test_registering_a_task_stores_its_tests_instruction_and_context_digest(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    world = make_world(workspace_roots=str(tmp_path))
    task = make_task(tmp_path)
    env = world.registry.register("calc", spec(task))
    assert env.needs_preparation and env.source_path == str(task) and env.instruction == "Fix add.\n"
    assert env.spec.tests is not None and env.spec.tests.dir == str(task / "tests")
    described = world.registry.describe(world.registry.get("calc"))
    assert described["instruction"] == "Fix add.\n" and described["tests"]["score"] == "reward_file"
    assert world.registry.describe(world.registry.get("default"))["instruction"] is None  # always sent (schema)
    (task / "environment" / "Dockerfile").write_text(DOCKERFILE + "RUN true\n")
    assert world.registry.register("calc", spec(task)).definition_digest != env.definition_digest


# --- preparation: the image, per host ----------------------------------------------------------


def test_base_images_are_the_from_lines_that_are_not_stages() -> None:
    dockerfile = (
        "# syntax=docker/dockerfile:1\nFROM --platform=linux/amd64 python:3.11 AS build\nRUN make\n"
        "from build as test\nFROM scratch\nFROM rollout-sandbox:bookworm\nCOPY --from=build /x /x\n"
        "FROM ${BASE}\n"
    )
    assert harbor_image.base_images(dockerfile) == ["python:3.11", "rollout-sandbox:bookworm", "${BASE}"]


@pytest.mark.parametrize(
    ("image_workdir", "expected"),
    [
        ("/app", "/app"),
        ("/srv/task/", "/srv/task"),
        (None, "/workspace"),
        ("/", "/workspace"),
        ("/opt/app", "/opt/app"),
    ],
)
def test_the_workdir_is_the_images_or_the_definitions(image_workdir: str | None, expected: str) -> None:
    assert harbor_image.resolve_workdir(image_workdir, "/workspace") == expected


@pytest.mark.parametrize("workdir", ["/usr/local", "/opt", "/etc", "/tests", "/opt/sandbox-base/x", "/logs/verifier"])
def test_a_system_directory_is_never_handed_to_the_sandbox_user(workdir: str) -> None:
    with pytest.raises(ProvisionFailed, match="is a system directory"):
        harbor_image.resolve_workdir(workdir, "/workspace")


def provision(world: World, env: str) -> str:
    """A cold start of a new rollout of `env` on h1; the rollout's state afterwards."""
    rid = f"r-{uuid.uuid4().hex[:10]}"
    won, _, attempt = world.store.rollouts.claim_provisioning(rid, env, None, 300)
    assert won
    world.host.provisioner.provision(rid, attempt)
    rec = world.store.rollouts.get(rid)
    assert rec is not None
    return rec.state


def test_a_task_image_is_built_once_and_rollouts_work_in_its_workdir(make_world: MakeWorld, tmp_path: Path) -> None:
    world = make_world(workspace_roots=str(tmp_path))
    world.registry.register("calc", spec(make_task(tmp_path)))
    assert provision(world, "calc") == READY and provision(world, "calc") == READY
    task_tag, env_tag = world.backend.builds
    assert task_tag.startswith("rollout-task:") and env_tag.startswith("rollout-env:")
    assert world.backend.removed_images == [task_tag]  # untagged once the rollout image exists
    assert {box.spec.workdir for box in world.backend.containers.values()} == {"/app"}
    assert {box.spec.image for box in world.backend.containers.values()} == {env_tag}
    prep = world.registry.describe(world.registry.get("calc"))["preparation"]["h1"]
    assert (prep["state"], prep["image"]) == ("ready", env_tag)


def test_a_dockerfile_from_an_absent_image_fails_preparation_with_the_reason(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    world = make_world(workspace_roots=str(tmp_path))
    world.registry.register("calc", spec(make_task(tmp_path, "FROM not-here:1\nWORKDIR /app\n")))
    assert provision(world, "calc") == FAILED
    prep = world.registry.describe(world.registry.get("calc"))["preparation"]["h1"]
    assert prep["state"] == "failed" and "builds FROM 'not-here:1', which is not on this host" in prep["error"]
    assert world.backend.builds == []  # nothing was asked of the builder (it would try a registry)


def test_a_fork_of_a_task_rollout_works_in_the_same_workdir(make_world: MakeWorld, tmp_path: Path) -> None:
    world = make_world(workspace_roots=str(tmp_path))
    world.registry.register("calc", spec(make_task(tmp_path)))
    result = world.tools.handle(dataclasses.replace(world.call("p", "echo hi"), item={"environment": "calc"}))
    assert result.outcome == "ok", result.output
    (child,) = world.forks.fork("p", {"count": 1})
    box = world.backend.containers[container_name(world.settings.instance, child["rollout_id"])]
    assert box.spec.workdir == "/app"
