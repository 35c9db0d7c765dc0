"""Tool calls as plain data: parsing the platform's payload and validating arguments (API side).
What a call ended as (`CallResult`) is the record kept in the trajectory and replayed on
retries. Pure functions only (no I/O), so this is where most unit tests point.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import BadRequest, InvalidRolloutId, MissingRolloutId, UnknownTool
from .outcomes import TOOLS

MAX_ROLLOUT_ID_LEN = 256
MAX_CALL_ID_LEN = 256
MAX_PATH_LEN = 4096


@dataclass(frozen=True)
class ToolCall:
    """One call as the platform sent it, with the rollout resolved."""

    tool: str
    rollout_id: str
    call_id: str
    item_id: Any  # the payload's opaque `id`, echoed back
    arguments: dict[str, Any] | None  # None when the model's arguments did not parse
    raw_arguments: Any
    item: dict[str, Any] | None
    arguments_error: str = ""  # why `arguments` is None: a model error, answered 200


@dataclass
class CallResult:
    """How a call ended: the record kept in the trajectory and replayed on retries."""

    call_id: str
    item_id: Any
    tool: str
    arguments: Any
    outcome: str
    reason: str
    output: str
    exit_code: int | None = None
    duration_ms: float = 0.0
    output_bytes: int = 0
    truncated_bytes: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallResult:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


# --- parsing -----------------------------------------------------------------------------


def check_rollout_id(rollout_id: Any) -> str:
    """Rollout ids become Redis keys and container labels: keep them printable and short."""
    if not isinstance(rollout_id, str) or not rollout_id.strip():
        raise MissingRolloutId(MissingRolloutId.__doc__ or "")
    if len(rollout_id) > MAX_ROLLOUT_ID_LEN:
        raise InvalidRolloutId(f"rollout id longer than {MAX_ROLLOUT_ID_LEN} characters")
    if not rollout_id.isprintable():
        raise InvalidRolloutId("rollout id contains control characters")
    return rollout_id


def check_tool(tool: str) -> str:
    if tool not in TOOLS:
        raise UnknownTool(f"unknown tool {tool!r}; this service offers: {', '.join(TOOLS)}")
    return tool


def parse_tool_call(
    tool: str,
    body: Any,
    *,
    path_rollout_id: str | None = None,
    header_rollout_id: str | None = None,
) -> ToolCall:
    """Read an OpenAI Agent RFT `function_call` payload.

    Raises BadRequest (and subclasses) for what no retry can fix. Arguments the model
    wrote badly are not an exception: they come back in `arguments_error`.
    """
    check_tool(tool)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    rollout_id = path_rollout_id or body.get("trace_id") or header_rollout_id
    rollout_id = check_rollout_id(rollout_id)

    call_id = body.get("call_id")
    if call_id is None or call_id == "":
        # Without a call_id a retry cannot be recognised; give the call its own id.
        call_id = f"anon-{uuid.uuid4().hex}"
    if not isinstance(call_id, str) or len(call_id) > MAX_CALL_ID_LEN or not call_id.isprintable():
        raise BadRequest(f"call_id must be a printable string of at most {MAX_CALL_ID_LEN} characters")

    item = body.get("item")
    if item is not None and not isinstance(item, dict):
        raise BadRequest("item must be a JSON object (the dataset row)")

    raw = body.get("arguments", {})
    arguments, error = decode_arguments(raw)
    return ToolCall(
        tool=tool,
        rollout_id=rollout_id,
        call_id=call_id,
        item_id=body.get("id"),
        arguments=arguments,
        raw_arguments=raw,
        item=item,
        arguments_error=error,
    )


def decode_arguments(raw: Any) -> tuple[dict[str, Any] | None, str]:
    """Arguments arrive as a JSON-encoded string or as an object; both must work."""
    if raw is None:
        return {}, ""
    if isinstance(raw, dict):
        return raw, ""
    if isinstance(raw, str):
        if not raw.strip():
            return {}, ""
        try:
            decoded = json.loads(raw)
        except json.JSONDecodeError as exc:
            return None, f"arguments are not valid JSON ({exc.msg} at position {exc.pos})"
        if not isinstance(decoded, dict):
            return None, "arguments must be a JSON object"
        return decoded, ""
    return None, "arguments must be a JSON object or a JSON-encoded string"


# --- validation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShellArgs:
    command: str
    timeout_s: float


@dataclass(frozen=True)
class ReadFileArgs:
    path: str
    start_line: int | None
    end_line: int | None


def validate_shell(
    args: dict[str, Any], *, default_timeout: float, max_timeout: float, max_command_bytes: int
) -> ShellArgs | str:
    """Return the checked arguments, or the sentence that tells the model what to fix."""
    command = args.get("command", args.get("cmd"))
    if isinstance(command, list) and all(isinstance(p, str) for p in command):
        command = " ".join(command)  # some models send argv lists; bash -c of the join is what they mean
    if not isinstance(command, str):
        return 'shell: "command" is required and must be a string'
    if not command.strip():
        return "shell: the command is empty"
    if "\x00" in command:
        return "shell: the command contains a NUL byte"
    size = len(command.encode("utf-8", "surrogatepass"))
    if size > max_command_bytes:
        return f"shell: the command is {size} bytes; the limit is {max_command_bytes} bytes"
    timeout = args.get("timeout", default_timeout)
    if timeout is None:
        timeout = default_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        return 'shell: "timeout" must be a number of seconds'
    if timeout <= 0:
        return 'shell: "timeout" must be positive'
    return ShellArgs(command=command, timeout_s=float(min(timeout, max_timeout)))


def validate_read_file(args: dict[str, Any]) -> ReadFileArgs | str:
    path = args.get("path", args.get("file_path"))
    if not isinstance(path, str) or not path:
        return 'read_file: "path" is required and must be a non-empty string'
    if "\x00" in path:
        return "read_file: the path contains a NUL byte"
    if len(path) > MAX_PATH_LEN:
        return f"read_file: the path is longer than {MAX_PATH_LEN} characters"
    lines: dict[str, int | None] = {}
    for key in ("start_line", "end_line"):
        value = args.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return f'read_file: "{key}" must be an integer'
        if value is not None and value < 1:
            return f'read_file: "{key}" is 1-based and must be at least 1'
        lines[key] = value
    start, end = lines["start_line"], lines["end_line"]
    if start is not None and end is not None and start > end:
        return f"read_file: start_line {start} is after end_line {end}"
    return ReadFileArgs(path=path, start_line=start, end_line=end)
