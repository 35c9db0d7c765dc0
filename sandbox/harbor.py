"""Harbor task directories on the host: what registering one as an environment reads and checks.

A Harbor task (the format of Harbor and Terminal-Bench) is a directory:

    instruction.md          the prompt
    environment/Dockerfile  the task's image, with its build context beside it
    tests/test.sh           the verifier: writes the reward to /logs/verifier/reward.txt
    solution/solve.sh       optional: a reference solution (never put in the sandbox)
    task.toml               optional: metadata; `[verifier] timeout_sec` is used

Registration (the API) checks the layout, reads the instruction, fingerprints the build context
and derives the `tests` grader's defaults; each host builds the image later
(worker/harbor_image.py). tests/ is read only at grade time, so it is never in the image.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from . import workspaces
from .domain.errors import WorkspaceInvalid
from .domain.tests import DEFAULT_REWARD_FILE, HARBOR_COMMAND, MAX_TIMEOUT_S, TestsSpec

REQUIRED_FILES = ("instruction.md", "environment/Dockerfile", "tests/test.sh")
CONTEXT_DIR = "environment"
TESTS_DIR = "tests"
# The instruction is served in every GET of the environment and stored in Redis: a prompt, not a corpus.
MAX_INSTRUCTION_BYTES = 64 * 1024
MAX_TASK_TOML_BYTES = 64 * 1024


@dataclass(frozen=True)
class HarborTask:
    path: Path  # resolved, under an allowed root
    instruction: str
    context_digest: str  # fingerprint of environment/, part of the definition digest
    verifier_timeout_s: float | None

    @property
    def context(self) -> Path:
        return self.path / CONTEXT_DIR

    def tests_defaults(self, given: TestsSpec | None) -> TestsSpec:
        """Harbor's verifier as the environment's `tests` block; fields the definition gives win."""
        defaults = TestsSpec(
            dir=str(self.path / TESTS_DIR),
            command=HARBOR_COMMAND,
            score="reward_file",
            reward_file=DEFAULT_REWARD_FILE,
            timeout_s=self.verifier_timeout_s,
        )
        overrides = given.model_dump(exclude_none=True) if given is not None else {}
        return TestsSpec.model_validate({**defaults.model_dump(exclude_none=True), **overrides})


def read_task(path: str, roots: list[Path]) -> HarborTask:
    """Check a task directory and read what registration needs.

    Raises WorkspaceForbidden (403) for a path, or a file in it, that resolves outside the roots;
    WorkspaceInvalid (400) naming every required file that is missing, or what cannot be read.
    """
    root = workspaces.confine(path, roots)
    if not root.is_dir():
        raise WorkspaceInvalid(f"{path} is not a directory (a Harbor task is one)")
    missing = [rel for rel in REQUIRED_FILES if not _regular_file(root / rel)]
    if missing:
        raise WorkspaceInvalid(
            f"{path} is not a Harbor task: missing {', '.join(missing)} (each must be a regular file, not a symlink)"
        )
    context = workspaces.confine(str(root / CONTEXT_DIR), roots)  # environment/ may be a symlink: where to?
    instruction = _read_capped(root / "instruction.md", MAX_INSTRUCTION_BYTES, "instruction.md")
    return HarborTask(
        path=root,
        instruction=instruction,
        context_digest=workspaces.fingerprint("dir", context),
        verifier_timeout_s=_verifier_timeout(root / "task.toml", roots),
    )


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _read_capped(path: Path, limit: int, name: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise WorkspaceInvalid(f"cannot read {name}: {exc.strerror}") from exc
    if len(data) > limit:
        raise WorkspaceInvalid(f"{name} is over {limit // 1024} KiB; a task's {name} is read whole, never cut")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WorkspaceInvalid(f"{name} is not UTF-8 text") from exc


def _verifier_timeout(path: Path, roots: list[Path]) -> float | None:
    """task.toml's `[verifier] timeout_sec`, within the tests grader's limit; None without one."""
    if not os.path.lexists(path):
        return None
    workspaces.confine(str(path), roots)  # a symlink out of the roots is refused, not read
    try:
        data = tomllib.loads(_read_capped(path, MAX_TASK_TOML_BYTES, "task.toml"))
    except tomllib.TOMLDecodeError as exc:
        raise WorkspaceInvalid(f"task.toml is not valid TOML: {exc}") from exc
    verifier = data.get("verifier")
    value = verifier.get("timeout_sec") if isinstance(verifier, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise WorkspaceInvalid(f"task.toml: verifier.timeout_sec must be a positive number, not {value!r}")
    return min(float(value), MAX_TIMEOUT_S)
