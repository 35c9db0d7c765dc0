"""The failure taxonomy: every tool call ends in one outcome with one reason.

These closed lists are also the label values of the metrics, so adding a reason here
is the one place to do it.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    OK = "ok"
    MODEL_ERROR = "model_error"
    INFRA_ERROR = "infra_error"


class ModelReason(StrEnum):
    """The model caused it; answered 200 with words it can learn from."""

    NONZERO_EXIT = "nonzero_exit"
    TIMEOUT = "timeout"
    INVALID_ARGUMENTS = "invalid_arguments"
    UNKNOWN_TOOL = "unknown_tool"
    FILE_NOT_FOUND = "file_not_found"
    IS_A_DIRECTORY = "is_a_directory"
    BINARY_FILE = "binary_file"
    PERMISSION_DENIED = "permission_denied"
    INVALID_RANGE = "invalid_range"
    NOT_A_REGULAR_FILE = "not_a_regular_file"
    UNREADABLE_FILE = "unreadable_file"
    BUDGET_EXHAUSTED = "budget_exhausted"
    OOM_KILLED = "oom_killed"
    PIDS_EXHAUSTED = "pids_exhausted"
    TESTS_SETUP_FAILED = "tests_setup_failed"  # grading: the hidden tests could not be put in (e.g. disk full)
    # The trainer API's file transfers (domain/trainer.py), answered 4xx: the sandbox's own state.
    NOT_A_DIRECTORY = "not_a_directory"
    NO_SPACE = "no_space"
    INVALID_ARCHIVE = "invalid_archive"
    TOO_LARGE = "too_large"
    TRANSFER_FAILED = "transfer_failed"


class InfraReason(StrEnum):
    """We caused it; answered 5xx so the trainer retries or discards the rollout."""

    PROVISION_FAILED = "provision_failed"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    SANDBOX_LOST = "sandbox_lost"
    HOST_UNAVAILABLE = "host_unavailable"
    QUEUE_TIMEOUT = "queue_timeout"
    WORKER_LOST = "worker_lost"
    STORE_UNAVAILABLE = "store_unavailable"
    INTERNAL = "internal"


OK_REASON = "none"
TOOLS = ("shell", "read_file")
# Every kind of call a trajectory holds and the `tool` label counts: the tools, and the trainer
# API's exec, upload and download (domain/trainer.py).
CALL_KINDS = (*TOOLS, "exec", "upload", "download")

# Every (outcome, reason) pair a tool call can end with, for zero-initialised metrics.
OUTCOME_REASONS: tuple[tuple[str, str], ...] = (
    ((Outcome.OK.value, OK_REASON),)
    + tuple((Outcome.MODEL_ERROR.value, r.value) for r in ModelReason)
    + tuple((Outcome.INFRA_ERROR.value, r.value) for r in InfraReason)
)
