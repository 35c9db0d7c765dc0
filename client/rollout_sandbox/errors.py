"""The service's failure taxonomy, as exceptions.

- `RequestError` (4xx): the request, or the sandbox's own state, makes it fail (a malformed body,
  a missing file, a released rollout). Retrying the same request does not help (except where
  `retryable` says so, e.g. a call still running).
- `InfraError` (5xx, or no answer at all): the service failed, not the model and not you.
  The client retries these (with the same idempotency key, so nothing runs twice) while
  `retryable`; when it gives up, **discard or mask the rollout: never score it 0**. A false
  zero teaches the model that its (possibly right) actions were wrong.
- `ServerTooOld`: the server predates a route this client needs.

A command that exits non-zero, times out or runs out of memory is none of these: it is a
normal result (`ExecResult`), as it is for the model.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Root of every error this client raises."""

    def __init__(self, message: str, *, code: str = "error", status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.retryable = retryable
        self.retry_after: float | None = None  # seconds, when the server said (Retry-After)

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.message}"


class RequestError(SandboxError):
    """4xx: fix the request (or accept the sandbox's state); `code` says which, e.g. file_not_found."""


class InfraError(SandboxError):
    """5xx or no answer: the service's failure. `reason` is the taxonomy's (sandbox_lost, worker_lost,
    queue_timeout, ...; `transport` when no answer came at all)."""

    @property
    def reason(self) -> str:
        return self.code


class ServerTooOld(SandboxError):
    """The server does not serve what this client needs (its /healthz api_version is too low)."""
