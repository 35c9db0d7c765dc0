"""Environments as data: base image + workspace + limits + tool budget.

A rollout picks its environment with `item["environment"]` on its first call (default:
`default`, the plain sandbox image). The definition digest addresses what the derived
image contains, so the same definition maps to the same image on every host.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .calls import json_problem
from .errors import BadRequest
from .images import reference_problem
from .tests import TestsSpec

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT = "default"  # the environment that exists unregistered: the service's sandbox image
Runtime = Literal["runc", "runsc"]
DEFAULT_RUNTIME: Runtime = "runc"


class WorkspaceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["git", "dir", "tar"]
    path: str
    commit: str | None = Field(None, description="git: a sha, tag or branch; resolved to a sha when registered")


class TaskSpec(BaseModel):
    """A benchmark task directory that is a whole environment: its image, its prompt, its hidden tests."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["harbor"]
    path: str = Field(description="host path of the task directory, under the allowed roots")


class EnvLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    memory_bytes: int | None = Field(None, ge=64 * 1024**2)
    cpus: float | None = Field(None, gt=0, le=64)
    pids: int | None = Field(None, ge=32, le=100_000)


class EnvironmentSpec(BaseModel):
    """What a client sends to PUT /v1/environments/{name} (or writes in the YAML file).

    NaN and Infinity are refused (pydantic would store them as null, silently dropping the limit),
    as is text that cannot be stored as UTF-8.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    workspace: WorkspaceSpec | None = None
    task: TaskSpec | None = Field(
        None, description="a Harbor task directory (image, instruction, hidden tests); excludes workspace and image"
    )
    image: str | None = Field(None, description="base image; default: the service's sandbox image")
    workdir: str = Field("/workspace", pattern=r"^/[^\x00]*$")
    limits: EnvLimits = EnvLimits()
    shell_timeout_s: float | None = Field(None, gt=0)
    output_cap_bytes: int | None = Field(None, ge=256, le=1024 * 1024)
    max_tool_calls: int | None = Field(None, ge=1)
    warm_pool_size: int = Field(0, ge=0, le=5000, description="pre-started containers kept ready on each host")
    tests: TestsSpec | None = Field(None, description="defaults for the tests grader (PROTOCOL.md), e.g. dir + command")
    runtime: Runtime = Field(
        "runc", description="runc (default) or runsc (gVisor: a user-space kernel between the agent and the host's)"
    )

    @field_validator("image")
    @classmethod
    def _image_reference(cls, image: str | None) -> str | None:
        problem = reference_problem(image) if image is not None else None
        if problem:
            raise ValueError(f"image {image!r} {problem}")
        return image

    @model_validator(mode="after")
    def _storable(self) -> EnvironmentSpec:
        problem = json_problem(self.model_dump())
        if problem:
            raise ValueError(f"the definition {problem}")
        return self

    @model_validator(mode="after")
    def _one_source(self) -> EnvironmentSpec:
        if self.task is not None and (self.workspace is not None or self.image is not None):
            raise ValueError(
                "task cannot be combined with workspace or image: the task's environment/Dockerfile makes both"
            )
        return self


class Environment(BaseModel):
    """A registered environment: the spec plus what registration resolved."""

    name: str
    spec: EnvironmentSpec
    commit_sha: str | None = None
    source_path: str | None = None  # the resolved (symlink-free) host path
    source_digest: str | None = None
    definition_digest: str
    file_count: int = 0
    registered_at: float = 0.0
    instruction: str | None = None  # a task's prompt (instruction.md), read at registration

    @property
    def needs_preparation(self) -> bool:
        return self.spec.workspace is not None or self.spec.task is not None


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise BadRequest("environment names are 1-64 characters: letters, digits, '_', '.', '-'")
    return name


def digest_of(spec: EnvironmentSpec, source_path: str | None, commit: str | None, source_digest: str | None) -> str:
    """Address of what the derived image contains; limits and budgets are not part of it.

    For a task, `source_digest` is the fingerprint of its build context (environment/).
    """
    identity = {
        "layout": 2,  # 2: the image holds a root-only copy of the base state for grading
        "workspace": spec.workspace.type if spec.workspace else None,
        "path": source_path,
        "commit": commit,
        "content": source_digest,
        "image": spec.image,
        "workdir": spec.workdir,
    }
    if spec.task is not None:  # only then: the digests (and images) of other definitions stay as they were
        identity["task"] = spec.task.type
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
