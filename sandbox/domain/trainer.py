"""The trainer API as plain data (PROTOCOL.md, "Trainer API: exec and files"): exec and file
transfers on a rollout's sandbox, for trainers that run their own agent loop.

Pure: parsing and checking what a trainer sends, the arguments an API hands a worker, and
the answers built from a recorded call. These calls go through the same path as tool calls
(tool_service.py) and are recorded in the same trajectory, each with its `source`: `agent`
calls count against the tool budget and are what graders see; `trainer` calls (setup,
uploads, evaluation) are recorded but do neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .calls import MAX_CALL_ID_LEN, MAX_PATH_LEN, CallResult, check_item, has_unpaired_surrogate
from .errors import (
    BadRequest,
    DownloadTooLarge,
    FileNotFound,
    FilePermissionDenied,
    InvalidArchive,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotARegularFile,
    SandboxError,
    TransferFailed,
    TransferTimedOut,
)
from .outcomes import ModelReason

AGENT = "agent"
TRAINER = "trainer"
SOURCES = (AGENT, TRAINER)
EXEC_TOOL = "exec"
UPLOAD_TOOL = "upload"
DOWNLOAD_TOOL = "download"
TRAINER_TOOLS = (EXEC_TOOL, UPLOAD_TOOL, DOWNLOAD_TOOL)
TAR_TYPES = ("application/x-tar", "application/tar")
MAX_ENV_VARS = 1000
MAX_ARGV = 100_000
EXEC_FIELDS = {"command", "argv", "cwd", "env", "timeout", "request_id", "source", "merge_stderr", "item"}


@dataclass(frozen=True)
class ExecArgs:
    """API -> worker: one exec, checked."""

    argv: tuple[str, ...] | None
    command: str | None
    cwd: str | None
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0
    merge_stderr: bool = False

    def to_wire(self) -> dict[str, Any]:
        argv = list(self.argv) if self.argv is not None else None
        return {"argv": argv, "command": self.command, "cwd": self.cwd, "env": self.env,
                "timeout_s": self.timeout_s, "merge_stderr": self.merge_stderr}  # fmt: skip

    @classmethod
    def from_wire(cls, a: dict[str, Any]) -> ExecArgs:
        argv = a.get("argv")
        return cls(tuple(argv) if argv is not None else None, a.get("command"), a.get("cwd"),
                   dict(a.get("env") or {}), float(a["timeout_s"]), bool(a.get("merge_stderr")))  # fmt: skip

    def recorded(self) -> dict[str, Any]:
        """The arguments as the trajectory keeps them: the environment's names, not its values
        (a trainer passes credentials that way)."""
        what: dict[str, Any] = {"argv": list(self.argv)} if self.argv is not None else {"command": self.command}
        return {**what, "cwd": self.cwd, "env": sorted(self.env), "timeout": self.timeout_s}


@dataclass(frozen=True)
class UploadArgs:
    """API -> worker: write the transfer `transfer`'s bytes: from the API over the worker's data port
    (worker/data_port.py), or from the store (store/transfers.py)."""

    path: str
    kind: Literal["file", "tar"]
    size: int
    mode: int | None
    transfer: str
    timeout_s: float
    direct: bool = False  # the bytes come over the worker's data port, else from the store

    def to_wire(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "size": self.size, "mode": self.mode,
                "transfer": self.transfer, "timeout_s": self.timeout_s, "direct": self.direct}  # fmt: skip

    @classmethod
    def from_wire(cls, a: dict[str, Any]) -> UploadArgs:
        kind: Literal["file", "tar"] = "tar" if a["kind"] == "tar" else "file"
        return cls(str(a["path"]), kind, int(a["size"]), a.get("mode"), str(a["transfer"]), float(a["timeout_s"]),
                   bool(a.get("direct")))  # fmt: skip

    def recorded(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "bytes": self.size, "mode": self.mode}


@dataclass(frozen=True)
class DownloadArgs:
    """API -> worker: send the path's bytes (a directory: a tar stream) as the transfer `transfer`."""

    path: str
    transfer: str
    max_bytes: int
    timeout_s: float
    direct: bool = False  # the bytes go over the worker's data port, else into the store

    def to_wire(self) -> dict[str, Any]:
        return {"path": self.path, "transfer": self.transfer, "max_bytes": self.max_bytes,
                "timeout_s": self.timeout_s, "direct": self.direct}  # fmt: skip

    @classmethod
    def from_wire(cls, a: dict[str, Any]) -> DownloadArgs:
        direct = bool(a.get("direct"))
        return cls(str(a["path"]), str(a["transfer"]), int(a["max_bytes"]), float(a["timeout_s"]), direct)

    def recorded(self) -> dict[str, Any]:
        return {"path": self.path}


TrainerArgs = ExecArgs | UploadArgs | DownloadArgs


@dataclass(frozen=True)
class ExecRequest:
    """A parsed POST /v1/rollouts/{id}/exec body."""

    args: ExecArgs
    source: str
    request_id: str | None
    item: dict[str, Any] | None


def parse_exec(body: Any, *, default_timeout: float, max_timeout: float, max_command_bytes: int) -> ExecRequest:
    """Check an exec body. Raises BadRequest (400) naming what is wrong: the trainer sent it,
    so unlike a model's tool arguments a mistake here is a client error, never run."""
    if not isinstance(body, dict):
        raise BadRequest("the exec body must be a JSON object")
    argv, command = body.get("argv"), body.get("command")
    if (argv is None) == (command is None):
        raise BadRequest('exec needs exactly one of "command" (a bash command) and "argv" (a list of strings)')
    if argv is not None:
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise BadRequest('"argv" must be a non-empty list of strings')
        if len(argv) > MAX_ARGV:
            raise BadRequest(f'"argv" has more than {MAX_ARGV} items')
        _check_text("argv", *argv, limit=max_command_bytes)
    else:
        if not isinstance(command, str) or not command.strip():
            raise BadRequest('"command" must be a non-empty string')
        _check_text("command", command, limit=max_command_bytes)
    cwd = body.get("cwd")
    if cwd is not None:
        cwd = check_path(cwd, "cwd")
    env = body.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise BadRequest('"env" must be an object of names to strings')
    if len(env) > MAX_ENV_VARS:
        raise BadRequest(f'"env" has more than {MAX_ENV_VARS} variables')
    for name in env:
        if not name or "=" in name:
            raise BadRequest(f'"env": {name!r} is not a variable name')
    _check_text("env", *env, *env.values(), limit=max_command_bytes)
    timeout = body.get("timeout")
    if timeout is None:
        timeout = default_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0:
        raise BadRequest('"timeout" must be a positive number of seconds')
    if timeout > max_timeout:
        raise BadRequest(f'"timeout" is at most {max_timeout:g} s')
    merge = body.get("merge_stderr", False)
    if not isinstance(merge, bool):
        raise BadRequest('"merge_stderr" must be true or false')
    args = ExecArgs(
        tuple(argv) if argv is not None else None, command, cwd, dict(env), float(timeout), merge_stderr=merge
    )
    return ExecRequest(args, check_source(body.get("source", AGENT)), check_request_id(body.get("request_id")),
                       check_item(body.get("item")))  # fmt: skip


def _check_text(name: str, *texts: str, limit: int) -> None:
    size = 0
    for text in texts:
        if "\x00" in text:
            raise BadRequest(f'"{name}" contains a NUL byte')
        if has_unpaired_surrogate(text):
            raise BadRequest(f'"{name}" holds text that is not valid Unicode')
        size += len(text.encode())
    if size > limit:
        raise BadRequest(f'"{name}" is {size} bytes; the limit is {limit}')


def check_source(source: Any) -> str:
    if source not in SOURCES:
        raise BadRequest(f'"source" must be one of {", ".join(SOURCES)}')
    return str(source)


def check_request_id(request_id: Any) -> str | None:
    """The idempotency key: the same (rollout, request_id) is answered once, never run twice."""
    if request_id is None or request_id == "":
        return None
    if not isinstance(request_id, str) or len(request_id) > MAX_CALL_ID_LEN or not request_id.isprintable():
        raise BadRequest(f"request_id must be a printable string of at most {MAX_CALL_ID_LEN} characters")
    return request_id


def check_path(path: Any, name: str = "path") -> str:
    """A path in the sandbox. Nothing is refused for where it points: every file operation runs
    as the sandbox user, so a path can reach only what that user may reach anyway."""
    if not isinstance(path, str) or not path:
        raise BadRequest(f"{name} is required and must be a non-empty string")
    if "\x00" in path:
        raise BadRequest(f"{name} contains a NUL byte")
    if has_unpaired_surrogate(path):
        raise BadRequest(f"{name} holds text that is not valid Unicode")
    if len(path) > MAX_PATH_LEN:
        raise BadRequest(f"{name} is longer than {MAX_PATH_LEN} characters")
    return path


def parse_mode(mode: str | None) -> int | None:
    """An upload's `mode` query parameter: octal permission bits, e.g. 755 or 0o644."""
    if mode is None or mode == "":
        return None
    text = mode.removeprefix("0o")
    if not text or len(text) > 4 or any(c not in "01234567" for c in text):
        raise BadRequest("mode must be octal permission bits, e.g. 644 or 755")
    return int(text, 8)


def upload_kind(content_type: str | None) -> Literal["file", "tar"]:
    media = (content_type or "").split(";")[0].strip().lower()
    return "tar" if media in TAR_TYPES else "file"


def exec_response(result: CallResult) -> dict[str, Any]:
    """The exec answer (200) of a recorded call; a call that never ran (its budget used up, its
    process table full) has no exit code and says why on stderr."""
    ran = result.extra.get("exec")
    if ran is None:
        ran = {"exit_code": None, "stdout": "", "stderr": result.output, "timed_out": False,
               "stdout_truncated_bytes": 0, "stderr_truncated_bytes": 0}  # fmt: skip
    return {
        "exit_code": ran.get("exit_code"),
        "stdout": ran.get("stdout", ""),
        "stderr": ran.get("stderr", ""),
        "timed_out": bool(ran.get("timed_out")),
        "stdout_truncated_bytes": int(ran.get("stdout_truncated_bytes", 0)),
        "stderr_truncated_bytes": int(ran.get("stderr_truncated_bytes", 0)),
        "duration_s": round(result.duration_ms / 1000, 6),
        "oom_killed": bool(ran.get("oom_killed")),
        "outcome": result.outcome,
        "reason": result.reason,
        "request_id": result.call_id,
        "source": result.source,
    }


TRANSFER_ERRORS: dict[str, type[SandboxError]] = {
    ModelReason.FILE_NOT_FOUND: FileNotFound,
    ModelReason.PERMISSION_DENIED: FilePermissionDenied,
    ModelReason.IS_A_DIRECTORY: IsADirectory,
    ModelReason.NOT_A_DIRECTORY: NotADirectory,
    ModelReason.NOT_A_REGULAR_FILE: NotARegularFile,
    ModelReason.NO_SPACE: NoSpace,
    ModelReason.INVALID_ARCHIVE: InvalidArchive,
    ModelReason.TOO_LARGE: DownloadTooLarge,
    ModelReason.TIMEOUT: TransferTimedOut,
}


def transfer_error(result: CallResult) -> SandboxError:
    """The 4xx a failed upload or download is answered with (its reason decides; the message is the
    sandbox's own words)."""
    return TRANSFER_ERRORS.get(result.reason, TransferFailed)(result.output or result.reason)
