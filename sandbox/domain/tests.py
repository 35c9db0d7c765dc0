"""The `tests` grader's inputs as data: what a dataset row or an environment says about the
hidden tests, and the resolved plan a host runs (PROTOCOL.md, "Grading by running tests").

Pure: reading a hidden `dir` from the host is the API's job (api/test_runs.py); running the
plan is the guest's (run_tests: guest/native/tests.go).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidGradeRequest

ScoreMode = Literal["all_pass", "fraction", "reward_file"]
DEFAULT_TIMEOUT_S = 300.0
MAX_TIMEOUT_S = 3600.0
DEFAULT_REWARD_FILE = "/logs/verifier/reward.txt"  # Harbor's
HARBOR_COMMAND = "bash /tests/test.sh"
HARBOR_TESTS_DIR = "/tests"
# Hidden files travel in the request to the guest (4 MiB a line, base64 adds a third).
MAX_HIDDEN_BYTES = 2_500_000
MAX_TEST_IDS = 10_000


class TestsSpec(BaseModel):
    """The `tests` block of an item or an environment; every field optional, the item wins field by field."""

    __test__ = False  # not a pytest test class, whatever its name says
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    command: str | None = Field(None, min_length=1, max_length=65536)
    files: dict[str, str] | None = Field(None, description="workdir-relative path -> file text, hidden until grading")
    dir: str | None = Field(None, description="host directory under the allowed roots, copied in at grading")
    fail_to_pass: list[str] | None = Field(None, max_length=MAX_TEST_IDS)
    pass_to_pass: list[str] | None = Field(None, max_length=MAX_TEST_IDS)
    restore: list[str] | None = Field(None, max_length=1000)
    score: ScoreMode | None = None
    reward_file: str | None = Field(None, pattern=r"^/[^\x00]+$")
    timeout_s: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S)


@dataclass(frozen=True)
class TestPlan:
    """What one grading runs; `dir` is still a host path here, read into `files` by the API."""

    __test__ = False
    command: str
    score: ScoreMode
    timeout_s: float
    files: dict[str, bytes] = field(default_factory=dict)
    dir: str | None = None
    dir_target: str = ""  # "" = the workdir, else an absolute directory (/tests)
    fail_to_pass: tuple[str, ...] = ()
    pass_to_pass: tuple[str, ...] = ()
    restore: tuple[str, ...] = ()
    reward_file: str | None = None

    @property
    def listed(self) -> tuple[str, ...]:
        return self.fail_to_pass + self.pass_to_pass


def parse_tests_spec(value: Any, where: str) -> TestsSpec:
    """An item's or environment's `tests` block; raises InvalidGradeRequest naming what is wrong."""
    if value is None:
        return TestsSpec()
    if not isinstance(value, dict):
        raise InvalidGradeRequest(f"{where} must be a JSON object")
    try:
        return TestsSpec.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise InvalidGradeRequest(f"{where}.{loc}: {first['msg']}") from exc


def resolve_plan(env_tests: TestsSpec | None, item_tests: TestsSpec) -> TestPlan:
    """Environment defaults overlaid by the item, field by field, with the service's defaults last."""
    merged = {**(env_tests or TestsSpec()).model_dump(exclude_none=True), **item_tests.model_dump(exclude_none=True)}
    spec = TestsSpec.model_validate(merged)
    score: ScoreMode = spec.score or ("reward_file" if spec.reward_file else "all_pass")
    reward_file = (spec.reward_file or DEFAULT_REWARD_FILE) if score == "reward_file" else None
    command = spec.command or (HARBOR_COMMAND if score == "reward_file" else None)
    if command is None:
        raise InvalidGradeRequest("the tests grader needs tests.command (in the item or the environment)")
    files = {}
    for path, text in (spec.files or {}).items():
        files[_relative(path, "tests.files")] = text.encode()
    return TestPlan(
        command=command,
        score=score,
        timeout_s=spec.timeout_s or DEFAULT_TIMEOUT_S,
        files=files,
        dir=spec.dir,
        dir_target=HARBOR_TESTS_DIR if score == "reward_file" else "",
        fail_to_pass=tuple(spec.fail_to_pass or ()),
        pass_to_pass=tuple(spec.pass_to_pass or ()),
        restore=tuple(_relative(p, "tests.restore") for p in spec.restore or ()),
        reward_file=reward_file,
    )


def _relative(path: str, where: str) -> str:
    """A workdir-relative path without '..' (a trailing '/' for directories is allowed)."""
    norm = posixpath.normpath(path) if path else ""
    if not norm or norm == "." or path.startswith("/") or norm.startswith("..") or "\x00" in path:
        raise InvalidGradeRequest(f"{where}: {path!r} must be a path relative to the workdir, without '..'")
    return norm


@dataclass(frozen=True)
class TestRunArgs:
    """API -> worker: one test run, the hidden files already read (target path -> base64)."""

    __test__ = False
    command: str
    timeout_s: float
    files: dict[str, str] = field(default_factory=dict)
    restore: tuple[str, ...] = ()
    reward_file: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "timeout_s": self.timeout_s,
            "files": self.files,
            "restore": list(self.restore),
            "reward_file": self.reward_file,
        }

    @classmethod
    def from_wire(cls, a: dict[str, Any]) -> TestRunArgs:
        return cls(
            command=str(a["command"]),
            timeout_s=float(a["timeout_s"]),
            files=dict(a.get("files") or {}),
            restore=tuple(a.get("restore") or ()),
            reward_file=a.get("reward_file"),
        )
