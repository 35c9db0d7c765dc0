"""One root exception; each subclass carries its wire code, HTTP status and outcome.

Exceptions stay picklable (Celery carries them): every constructor takes only the
message, and class attributes say the rest.
"""

from __future__ import annotations

from .outcomes import InfraReason, Outcome


class SandboxError(Exception):
    """Root of every error the service raises on purpose."""

    code: str = "internal"
    http_status: int = 500
    outcome: Outcome | None = None  # None: a bad request, not a tool-call outcome
    retryable: bool = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message or self.__class__.__doc__ or self.code

    def to_wire(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message, "retryable": self.retryable}}


# --- bad requests (4xx): no retry can fix them --------------------------------------------


class BadRequest(SandboxError):
    """The request cannot be understood."""

    code = "bad_request"
    http_status = 400


class MissingRolloutId(BadRequest):
    """No rollout id: send `trace_id`, the `X-Rollout-Id` header, or use /v1/rollouts/{id}/tools/{tool}."""

    code = "missing_rollout_id"


class InvalidRolloutId(BadRequest):
    code = "invalid_rollout_id"


class UnknownTool(SandboxError):
    code = "unknown_tool"
    http_status = 404


class Unauthorized(SandboxError):
    code = "unauthorized"
    http_status = 401


class RolloutNotFound(SandboxError):
    code = "rollout_not_found"
    http_status = 404


class PayloadTooLarge(SandboxError):
    """The request body is larger than the service accepts."""

    code = "payload_too_large"
    http_status = 413


class UnknownEnvironment(SandboxError):
    """The item names an environment nobody registered."""

    code = "unknown_environment"
    http_status = 404


class WorkspaceForbidden(SandboxError):
    """The workspace path is outside the allowed roots."""

    code = "workspace_forbidden"
    http_status = 403


class WorkspaceInvalid(BadRequest):
    """The workspace cannot be read (missing path, bad commit, unreadable archive)."""

    code = "invalid_workspace"


class UnsupportedRuntime(BadRequest):
    """An environment asks for a container runtime no sandbox host offers: it could never run."""

    code = "unsupported_runtime"


class ImageUnavailable(BadRequest):
    """An environment names an image no sandbox host holds: its rollouts could never start."""

    code = "image_unavailable"


class LimitsUnsatisfiable(BadRequest):
    """An environment asks for more than any sandbox host has (CPUs): the engine would refuse
    every container of it."""

    code = "limits_unsatisfiable"


class InvalidGradeRequest(BadRequest):
    """The grade request or its dataset row cannot be graded as written."""

    code = "invalid_grade_request"


class RolloutReleased(SandboxError):
    """The rollout was released; its sandbox is gone and it takes no more calls."""

    code = "rollout_released"
    http_status = 409


class RolloutInfraTainted(SandboxError):
    """The rollout met an infrastructure failure; its score would be a lie."""

    code = "rollout_infra_tainted"
    http_status = 503
    retryable = False


class InvalidForkRequest(BadRequest):
    """A fork request names neither a count nor rollout ids, or names them badly."""

    code = "invalid_fork_request"


class RolloutNotForkable(SandboxError):
    """The parent has no live sandbox to copy: it ended, was lost, is tainted or is not ready yet."""

    code = "rollout_not_forkable"
    http_status = 409


class RolloutExists(SandboxError):
    """A rollout id asked for as a fork's child is already in use."""

    code = "rollout_exists"
    http_status = 409


class HostFull(SandboxError):
    """The parent's host has no room for the children (they must live where the parent's layer is).

    Not an infra_error outcome of a tool call: nothing failed, the fork was not attempted."""

    code = "host_full"
    http_status = 503
    retryable = True


class CallInProgress(SandboxError):
    """The same call_id is still running; retry later for its stored result."""

    code = "call_in_progress"
    http_status = 409
    retryable = True


class CallIdConflict(SandboxError):
    """The call_id was already used for a call of another tool in this rollout; its answer is that tool's."""

    code = "call_id_conflict"
    http_status = 409
    retryable = False


# --- the trainer API's file transfers (4xx): the sandbox's state, or the request, not ours ---


class FileNotFound(SandboxError):
    """No such file or directory in the sandbox."""

    code = "file_not_found"
    http_status = 404


class FilePermissionDenied(SandboxError):
    """The sandbox user may not read or write that path."""

    code = "permission_denied"
    http_status = 403


class IsADirectory(SandboxError):
    code = "is_a_directory"
    http_status = 409


class NotADirectory(SandboxError):
    code = "not_a_directory"
    http_status = 409


class NotARegularFile(SandboxError):
    code = "not_a_regular_file"
    http_status = 409


class InvalidArchive(BadRequest):
    """The body sent as application/x-tar is not a tar stream."""

    code = "invalid_archive"


class NoSpace(SandboxError):
    """The sandbox's disk (or its limit) is full: the upload does not fit."""

    code = "no_space"
    http_status = 413


class DownloadTooLarge(SandboxError):
    """The file or directory is larger than a download may be."""

    code = "download_too_large"
    http_status = 413


class TransferTimedOut(SandboxError):
    """The sandbox did not take (or give) the bytes in time."""

    code = "transfer_timed_out"
    http_status = 408
    retryable = True


class TransferFailed(SandboxError):
    """The sandbox's writer or reader failed; the message has its own words."""

    code = "transfer_failed"
    http_status = 409


# --- infrastructure failures (5xx): the trainer retries, then discards the rollout -------


class InfraError(SandboxError):
    """Our fault, never the model's: answered 503 and counted as infra_error."""

    http_status = 503
    outcome = Outcome.INFRA_ERROR
    retryable = True
    reason: InfraReason = InfraReason.INTERNAL

    @property
    def code(self) -> str:  # type: ignore[override]
        return self.reason.value


class ProvisionFailed(InfraError):
    """The rollout's container could not be created."""

    reason = InfraReason.PROVISION_FAILED


class EngineUnavailable(InfraError):
    """The Docker engine of the rollout's host does not answer."""

    reason = InfraReason.ENGINE_UNAVAILABLE


class SandboxLost(InfraError):
    """The rollout's container is gone; the rollout cannot continue and must be discarded."""

    reason = InfraReason.SANDBOX_LOST
    retryable = False


class HostUnavailable(InfraError):
    """The rollout's sandbox host is down or its engine is gone; the rollout must be discarded."""

    reason = InfraReason.HOST_UNAVAILABLE
    retryable = False


class QueueTimeout(InfraError):
    """No worker took the work in time."""

    reason = InfraReason.QUEUE_TIMEOUT


class WorkerLost(InfraError):
    """The worker running the call stopped answering."""

    reason = InfraReason.WORKER_LOST


class StoreUnavailable(InfraError):
    """Redis, the state store, does not answer."""

    reason = InfraReason.STORE_UNAVAILABLE


class InternalError(InfraError):
    """An unexpected fault in the service."""

    reason = InfraReason.INTERNAL


INFRA_ERRORS_BY_REASON: dict[str, type[InfraError]] = {
    cls.reason.value: cls
    for cls in (
        ProvisionFailed,
        EngineUnavailable,
        SandboxLost,
        HostUnavailable,
        QueueTimeout,
        WorkerLost,
        StoreUnavailable,
        InternalError,
    )
}


def infra_error_from_reason(reason: str, message: str) -> InfraError:
    """Rebuild an infra error carried as plain data (e.g. a worker's JSON reply)."""
    return INFRA_ERRORS_BY_REASON.get(reason, InternalError)(message)
