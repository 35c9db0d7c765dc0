"""The trainer API (PROTOCOL.md, "Trainer API: exec and files"): exec, and files in and out."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ...domain.calls import MAX_CALL_ID_LEN, MAX_PATH_LEN
from ...domain.trainer import SOURCES
from .common import _enum, _Open


class ExecBody(BaseModel):
    """Exactly one of `command` and `argv`."""

    command: str | None = Field(None, description="a bash command, run as `bash -c COMMAND`")
    argv: list[str] | None = Field(None, min_length=1, description="a program and its arguments, run as they are")
    cwd: str | None = Field(
        None,
        max_length=MAX_PATH_LEN,
        description="working directory (relative: to the workspace); default the workspace",
    )
    env: dict[str, str] | None = Field(None, description="variables added to the sandbox's fixed environment")
    timeout: float | None = Field(None, gt=0, description="deadline in seconds; the whole process group is killed then")
    merge_stderr: bool = Field(False, description="stderr into stdout, interleaved as written (stderr is then empty)")
    request_id: str | None = Field(
        None,
        max_length=MAX_CALL_ID_LEN,
        description="idempotency key: the same (rollout, request_id) is answered once and never runs twice",
    )
    source: str = Field(
        "agent",
        json_schema_extra=_enum(SOURCES),
        description="agent: counts against the tool budget and is graded; trainer: recorded, neither",
    )
    item: dict[str, Any] | None = Field(None, description="the dataset row, for a rollout's first call")


class ExecResult(_Open):
    """How the command ended. A non-zero exit, a timeout or an OOM kill is a 200: the command's, not ours."""

    exit_code: int | None = Field(description="null when it did not exit by itself (timeout, signal) or never ran")
    stdout: str = Field(description="kept head and tail when longer than the cap")
    stderr: str = Field(description="likewise; says why when the command could not run")
    timed_out: bool
    stdout_truncated_bytes: int
    stderr_truncated_bytes: int
    duration_s: float
    oom_killed: bool = Field(description="killed by the sandbox's out-of-memory killer")
    outcome: str = Field(description="ok or model_error (the taxonomy of tool calls)")
    reason: str = Field(description="none, nonzero_exit, timeout, oom_killed, budget_exhausted, pids_exhausted")
    request_id: str = Field(description="the request_id sent, or the one the service gave the call")
    source: str = Field(json_schema_extra=_enum(SOURCES))


class UploadResult(_Open):
    path: str = Field(description="the absolute path written in the sandbox")
    bytes: int = Field(description="bytes received")
    kind: str = Field(json_schema_extra=_enum(["file", "tar"]), description="a file's bytes, or a tar unpacked")
    request_id: str


ITEM_HEADER: dict[str, Any] = {
    "name": "X-Rollout-Item",
    "in": "header",
    "required": False,
    "description": "the dataset row as JSON, for the rollout's first call (selects its environment)",
    "schema": {"type": "string"},
}
BINARY = {"schema": {"type": "string", "format": "binary"}}
DOWNLOAD_HEADERS: dict[str, Any] = {
    "X-Sandbox-Kind": {
        "description": "file (the file's bytes) or directory (a tar stream of its content)",
        "required": True,
        "schema": {"type": "string", "enum": ["file", "directory"]},
    },
}
