"""Tool calls as plain data: parsing the platform's payload and validating arguments (API side).
What a call ended as (`CallResult`) is the record kept in the trajectory and replayed on
retries. Pure functions only (no I/O), so this is where most unit tests point.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import BadRequest, InvalidRolloutId, MissingRolloutId, UnknownTool
from .outcomes import TOOLS
from .rollout import environment_of

MAX_ROLLOUT_ID_LEN = 256
MAX_CALL_ID_LEN = 256
MAX_PATH_LEN = 4096
# Nesting of a request body. Deeper bodies are refused when read: past ~1000 levels the parser
# itself fails, and a few hundred levels already break the encoders that store or answer them.
MAX_JSON_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")  # after json.loads, any left is unpaired: not encodable as UTF-8
NOT_UNICODE = "text that is not valid Unicode (an unpaired surrogate, e.g. the escape \\ud800)"


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
    source: str = "agent"  # trainer: recorded, but outside the tool budget and what graders count
    args: Any = None  # arguments the API checked already (the trainer API's: domain/trainer.py)


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
    source: str = "agent"  # who made the call: agent (a tool call) or trainer (domain/trainer.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallResult:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


# --- JSON the client sent ------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send a finite number or null")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999, which Python reads as inf
        raise ValueError(f"the number {text[:32]} is too large for a 64-bit float")
    return value


def parse_json_body(raw: bytes) -> Any:
    """A request body as JSON; BadRequest (400) saying what is wrong with it.

    Stricter than json.loads wherever leniency fails later, after work was done: NaN and Infinity
    (not JSON, and an answer echoing them cannot be encoded), numbers that overflow to infinity,
    integers past Python's 4300-digit conversion limit, nesting past MAX_JSON_DEPTH.
    """
    try:
        body = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest(f"JSON body nested deeper than {MAX_JSON_DEPTH} levels") from exc
    except ValueError as exc:  # invalid UTF-8, the hooks above, an integer of more than 4300 digits
        reason = "an integer longer than 4300 digits" if "integer string conversion" in str(exc) else str(exc)
        raise BadRequest(f"malformed JSON body: {reason}") from exc
    problem = json_problem(body, check_text=False)
    if problem:
        raise BadRequest(f"JSON body: {problem}")
    return body


def json_problem(value: Any, *, max_depth: int = MAX_JSON_DEPTH, check_text: bool = True) -> str | None:
    """Why `value` cannot be stored and answered as JSON, or None.

    Nesting past `max_depth`, a non-finite float, and (with `check_text`) a string or key holding
    an unpaired surrogate, which no UTF-8 encoder accepts. Iterative, so depth cannot overflow it.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if check_text and not node.isascii() and _SURROGATE.search(node):
                return f"holds {NOT_UNICODE}"
        elif isinstance(node, float):
            if not math.isfinite(node):
                return "holds a number that is not finite (NaN or Infinity)"
        elif isinstance(node, dict | list):
            if depth >= max_depth:
                return f"is nested deeper than {max_depth} levels"
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return None


def has_unpaired_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


def scrub_text(value: Any) -> Any:
    """`value` with unpaired surrogates written as escapes (`\\ud800`), so it can be stored and shown."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8") if has_unpaired_surrogate(value) else value
    if isinstance(value, dict):
        return {scrub_text(k): scrub_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_text(v) for v in value]
    return value


def check_item(item: Any) -> dict[str, Any] | None:
    """The dataset row, checked before anything is stored or run. Raises BadRequest (400).

    The row is the client's, not the model's: text that cannot be encoded, a non-finite number
    or an `environment` that is not a name is the client's error, never the sandbox's.
    """
    if item is None:
        return None
    if not isinstance(item, dict):
        raise BadRequest("item must be a JSON object (the dataset row)")
    problem = json_problem(item)
    if problem:
        raise BadRequest(f"item (the dataset row) {problem}")
    environment_of(item)
    return item


# --- parsing -----------------------------------------------------------------------------


def check_rollout_id(rollout_id: Any) -> str:
    """Rollout ids become Redis keys, container labels and URL path segments: printable, short, no '/'."""
    if not isinstance(rollout_id, str) or not rollout_id.strip():
        raise MissingRolloutId(MissingRolloutId.__doc__ or "")
    if len(rollout_id) > MAX_ROLLOUT_ID_LEN:
        raise InvalidRolloutId(f"rollout id longer than {MAX_ROLLOUT_ID_LEN} characters")
    if not rollout_id.isprintable():
        raise InvalidRolloutId("rollout id contains control characters or text that is not valid Unicode")
    if "/" in rollout_id:
        raise InvalidRolloutId(
            "rollout id contains '/': ids may not contain '/', since /v1/rollouts/{id} could never reach it"
        )
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

    item = check_item(body.get("item"))
    item_id = body.get("id")
    if json_problem(item_id):  # echoed in the answer: refuse it before anything runs
        raise BadRequest(f"id holds {NOT_UNICODE}")

    raw = body.get("arguments", {})
    arguments, error = decode_arguments(raw)
    return ToolCall(
        tool=tool,
        rollout_id=rollout_id,
        call_id=call_id,
        item_id=item_id,
        arguments=arguments,
        raw_arguments=scrub_text(raw),  # recorded and shown: the model's text, made encodable
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
        except RecursionError:
            return None, "arguments are nested too deeply to read; send a flat JSON object"
        except ValueError:  # the only other: an integer past Python's conversion limit
            return None, "arguments hold an integer longer than 4300 digits"
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
    if has_unpaired_surrogate(command):
        return f"shell: the command is {NOT_UNICODE}; write it as plain UTF-8 text"
    size = len(command.encode("utf-8", "surrogatepass"))
    if size > max_command_bytes:
        return f"shell: the command is {size} bytes; the limit is {max_command_bytes} bytes"
    timeout = args.get("timeout", default_timeout)
    if timeout is None:
        timeout = default_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        return 'shell: "timeout" must be a number of seconds'
    if isinstance(timeout, float) and not math.isfinite(timeout):  # NaN, Infinity, 1e999
        return 'shell: "timeout" must be a finite number of seconds'
    if timeout <= 0:
        return 'shell: "timeout" must be positive'
    return ShellArgs(command=command, timeout_s=float(min(timeout, max_timeout)))


def validate_read_file(args: dict[str, Any]) -> ReadFileArgs | str:
    path = args.get("path", args.get("file_path"))
    if not isinstance(path, str) or not path:
        return 'read_file: "path" is required and must be a non-empty string'
    if "\x00" in path:
        return "read_file: the path contains a NUL byte"
    if has_unpaired_surrogate(path):
        return f"read_file: the path is {NOT_UNICODE}; write it as plain UTF-8 text"
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
