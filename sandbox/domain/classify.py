"""Classification: turning what ran in the sandbox into the outcome, reason and text the model reads.

Runs in the worker, on the guest's reply. Decided by evidence from the run itself (exit
status, the deadline, the cgroup's OOM counter), never by guessing from the output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import InternalError
from .outcomes import OK_REASON, ModelReason, Outcome


def shell_outcome(reply: Mapping[str, Any], *, timeout_s: float, memory_bytes: int) -> tuple[str, str, str]:
    """(outcome, reason, output) of a shell command, decided by its exit evidence.

    The guest's `{"error": ...}` reply (it could not run the command) is ours, InternalError,
    unless the evidence says the model's own processes filled the process table.
    """
    if "error" in reply:
        if reply.get("pids_exhausted"):
            return Outcome.MODEL_ERROR, ModelReason.PIDS_EXHAUSTED, f"[could not start the command: {PIDS_FULL}]"
        raise InternalError(f"guest could not run the command: {reply['error']}")
    output: str = reply.get("output", "")
    if reply.get("timed_out"):
        return (
            Outcome.MODEL_ERROR,
            ModelReason.TIMEOUT,
            _append(output, f"[timed out after {timeout_s:g} s; the command was killed]"),
        )
    if reply.get("oom_killed"):
        limit_mib = memory_bytes // (1024 * 1024)
        return (
            Outcome.MODEL_ERROR,
            ModelReason.OOM_KILLED,
            _append(output, f"[killed: out of memory (the sandbox has {limit_mib} MiB)]"),
        )
    signal = reply.get("signal")
    if signal:
        return Outcome.MODEL_ERROR, ModelReason.NONZERO_EXIT, _append(output, f"[killed by signal {signal}]")
    exit_code = reply.get("exit_code")
    if exit_code not in (0, None):
        return Outcome.MODEL_ERROR, ModelReason.NONZERO_EXIT, _append(output, f"[exit code {exit_code}]")
    return Outcome.OK, OK_REASON, output


def tests_outcome(reply: Mapping[str, Any]) -> tuple[str, str, str]:
    """(outcome, reason, output) of a grading test run. What the tests found is scored by the
    grader (grading/tests.py); here only whether they ran. A stage that could not be set (the
    sandbox's own state, e.g. its disk full) and a full process table are the model's; any
    other guest error is ours."""
    if "error" in reply:
        if reply.get("setup_failed"):
            return Outcome.MODEL_ERROR, ModelReason.TESTS_SETUP_FAILED, str(reply["error"])
        if reply.get("pids_exhausted"):
            return Outcome.MODEL_ERROR, ModelReason.PIDS_EXHAUSTED, f"[could not start the tests: {PIDS_FULL}]"
        raise InternalError(f"guest could not run the tests: {reply['error']}")
    return Outcome.OK, OK_REASON, str(reply.get("output", ""))


def exec_outcome(reply: Mapping[str, Any]) -> tuple[str, str, str]:
    """(outcome, reason, note) of the trainer API's exec, by shell's evidence; the note (why it
    ended that way, "" when it exited by itself) goes to the answer's stderr only if it never ran."""
    if "error" in reply:
        if reply.get("pids_exhausted"):
            return Outcome.MODEL_ERROR, ModelReason.PIDS_EXHAUSTED, f"could not start the command: {PIDS_FULL}"
        raise InternalError(f"guest could not run the command: {reply['error']}")
    if reply.get("timed_out"):
        return Outcome.MODEL_ERROR, ModelReason.TIMEOUT, ""
    if reply.get("oom_killed"):
        return Outcome.MODEL_ERROR, ModelReason.OOM_KILLED, ""
    if reply.get("signal") or reply.get("exit_code") not in (0, None):
        return Outcome.MODEL_ERROR, ModelReason.NONZERO_EXIT, ""
    return Outcome.OK, OK_REASON, ""


TRANSFER_STATUS_REASONS = {
    "not_found": ModelReason.FILE_NOT_FOUND,
    "not_a_directory": ModelReason.NOT_A_DIRECTORY,
    "is_a_directory": ModelReason.IS_A_DIRECTORY,
    "not_a_regular_file": ModelReason.NOT_A_REGULAR_FILE,
    "permission_denied": ModelReason.PERMISSION_DENIED,
    "no_space": ModelReason.NO_SPACE,
    "invalid_archive": ModelReason.INVALID_ARCHIVE,
    "too_large": ModelReason.TOO_LARGE,
    "timed_out": ModelReason.TIMEOUT,
    "failed": ModelReason.TRANSFER_FAILED,
}


def transfer_outcome(reply: Mapping[str, Any]) -> tuple[str, str, str]:
    """(outcome, reason, message) of an upload or a download. What the sandbox's state made of it
    (a missing path, a full disk, a tree too large) is not ours: the writer or reader ran as the
    user and said so. A guest error reply (a request it refused) is ours."""
    if "error" in reply:
        raise InternalError(f"guest refused the transfer: {reply['error']}")
    status = reply.get("status")
    if status == "ok":
        return Outcome.OK, OK_REASON, ""
    reason = TRANSFER_STATUS_REASONS.get(str(status))
    if reason is None:
        raise InternalError(f"guest answered a transfer with unknown status {status!r}")
    return Outcome.MODEL_ERROR, reason, str(reply.get("message") or status)


# pids_exhausted: the guest could not start a process or thread (EAGAIN). Only the model's
# processes can fill the container's process table: nothing else runs there.
PIDS_FULL = "the sandbox's process limit is used up by its running processes"

READ_FILE_STATUS_REASONS = {
    "not_found": ModelReason.FILE_NOT_FOUND,
    "is_a_directory": ModelReason.IS_A_DIRECTORY,
    "binary": ModelReason.BINARY_FILE,
    "permission_denied": ModelReason.PERMISSION_DENIED,
    "invalid_range": ModelReason.INVALID_RANGE,
    "not_a_regular_file": ModelReason.NOT_A_REGULAR_FILE,
    "unreadable": ModelReason.UNREADABLE_FILE,
}


def read_file_outcome(reply: Mapping[str, Any], path: str) -> tuple[str, str, str]:
    """(outcome, reason, output) of a read_file. Whatever happened reading the path the model
    named is the model's (the guest answers it as a status, `unreadable` at worst), and so is
    a process table the model filled; any other guest error is ours (InternalError). A
    status outside the protocol raises ValueError (the caller reports it as ours too)."""
    if "error" in reply:
        if reply.get("pids_exhausted"):
            return Outcome.MODEL_ERROR, ModelReason.PIDS_EXHAUSTED, f"read_file: could not read {path}: {PIDS_FULL}"
        raise InternalError(f"guest failed read_file: {reply['error']}")
    status = reply.get("status", "error")
    if status == "ok":
        return Outcome.OK, OK_REASON, reply.get("content", "")
    reason = READ_FILE_STATUS_REASONS.get(status)
    if reason is None:
        raise ValueError(f"guest answered read_file with unknown status {status!r}")
    message = reply.get("message") or _READ_FILE_MESSAGES[reason].format(path=path)
    return Outcome.MODEL_ERROR, reason, f"read_file: {message}"


_READ_FILE_MESSAGES = {
    ModelReason.FILE_NOT_FOUND: "no such file: {path}",
    ModelReason.IS_A_DIRECTORY: "{path} is a directory; list it with the shell tool",
    ModelReason.BINARY_FILE: "{path} is a binary file and is not shown",
    ModelReason.PERMISSION_DENIED: "permission denied: {path}",
    ModelReason.INVALID_RANGE: "the line range is outside {path}",
    ModelReason.NOT_A_REGULAR_FILE: "{path} is not a regular file",
    ModelReason.UNREADABLE_FILE: "could not read {path}",
}


def _append(output: str, note: str) -> str:
    if output and not output.endswith("\n"):
        output += "\n"
    return output + note


def cap_text(text: str, cap_bytes: int) -> tuple[str, int]:
    """Keep head and tail of `text` within about `cap_bytes`; return it and the bytes left out.

    The guest caps output already; this guards the paths that do not go through it.
    """
    data = text.encode("utf-8", "replace")
    if len(data) <= cap_bytes:
        return text, 0
    head = cap_bytes // 2
    tail = cap_bytes - head
    omitted = len(data) - cap_bytes
    marker = f"\n[... {omitted} bytes omitted ...]\n".encode()
    joined = data[:head] + marker + data[len(data) - tail :]
    return joined.decode("utf-8", "replace"), omitted
