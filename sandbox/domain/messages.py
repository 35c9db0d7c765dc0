"""Messages between the API and the workers, each defined once and used by both sides.

A tool call (or a trainer API call, domain/trainer.py) crosses processes twice: the API queues
a `CallRequest` on the call queue of the host that owns the rollout's container
(sandbox/store/queues.py), and the worker that ran it pushes a `CallReply` to the list
the API blocks on. Both travel as JSON; the field names on the wire are the ones below (API
replicas and workers of one release must agree, so renaming a field is a protocol change).

The worker <-> guest messages are in sandbox/guest/guest_protocol.py, which the guest
itself imports (it runs inside the container and may only use the standard library).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .calls import CallResult, ReadFileArgs, ShellArgs
from .errors import InfraError, infra_error_from_reason
from .outcomes import InfraReason
from .tests import TestRunArgs
from .trainer import AGENT, DOWNLOAD_TOOL, EXEC_TOOL, UPLOAD_TOOL, DownloadArgs, ExecArgs, TrainerArgs, UploadArgs

TESTS_TOOL = "tests"  # a grading test run travels as a call of this pseudo-tool (never an agent's)

# A read_file has no deadline of its own from the model; it gets this one.
READ_FILE_DEADLINE_S = 30.0


@dataclass(frozen=True)
class CallRequest:
    """API -> worker: run one validated tool call in the rollout's container."""

    reply_id: str  # the list the API waits on for the CallReply
    rollout_id: str
    call_id: str
    item_id: Any  # the payload's opaque `id`, echoed back in the result
    tool: str
    args: ShellArgs | ReadFileArgs | TestRunArgs | TrainerArgs
    raw_arguments: Any  # as the model wrote them, for the trajectory
    output_cap: int  # exec: per stream
    queued_at: float = 0.0
    expires_at: float = 0.0  # not started by then: answered queue_timeout, never run
    source: str = AGENT  # agent | trainer (domain/trainer.py), recorded with the result

    @property
    def run_deadline_s(self) -> float:
        """How long the command (or transfer) may run once started."""
        return READ_FILE_DEADLINE_S if isinstance(self.args, ReadFileArgs) else self.args.timeout_s

    def result(
        self,
        outcome: str,
        reason: str,
        output: str,
        *,
        started: float,
        finished: float,
        exit_code: int | None = None,
        output_bytes: int = 0,
        truncated_bytes: int = 0,
        extra: dict[str, Any] | None = None,
    ) -> CallResult:
        """How this call ended once run, as the trajectory keeps it (every worker-side result is built here)."""
        return CallResult(
            call_id=self.call_id,
            item_id=self.item_id,
            tool=self.tool,
            arguments=self.raw_arguments,
            outcome=outcome,
            reason=reason,
            output=output,
            exit_code=exit_code,
            duration_ms=round((finished - started) * 1000, 3),
            output_bytes=output_bytes,
            truncated_bytes=truncated_bytes,
            started_at=started,
            finished_at=finished,
            extra=extra or {},
            source=self.source,
        )

    def queued(self, now: float, expires_s: float) -> CallRequest:
        """This request stamped with when it was queued and when it expires."""
        return replace(self, queued_at=now, expires_at=now + expires_s)

    def to_wire(self) -> dict[str, Any]:
        if isinstance(self.args, ShellArgs):
            arguments: dict[str, Any] = {"command": self.args.command, "timeout_s": self.args.timeout_s}
        elif isinstance(self.args, TestRunArgs | ExecArgs | UploadArgs | DownloadArgs):
            arguments = self.args.to_wire()
        else:
            arguments = {"path": self.args.path, "start_line": self.args.start_line, "end_line": self.args.end_line}
        return {
            "reply_id": self.reply_id,
            "rollout_id": self.rollout_id,
            "call_id": self.call_id,
            "item_id": self.item_id,
            "tool": self.tool,
            "arguments": arguments,
            "raw_arguments": self.raw_arguments,
            "output_cap": self.output_cap,
            "queued_at": self.queued_at,
            "expires_at": self.expires_at,
            "source": self.source,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> CallRequest:
        a = data["arguments"]
        args: ShellArgs | ReadFileArgs | TestRunArgs | TrainerArgs
        tool = data["tool"]
        if tool in WIRE_ARGS:
            args = WIRE_ARGS[tool].from_wire(a)
        elif tool == "shell":
            args = ShellArgs(command=a["command"], timeout_s=float(a["timeout_s"]))
        else:
            args = ReadFileArgs(path=a["path"], start_line=a.get("start_line"), end_line=a.get("end_line"))
        return cls(
            reply_id=data["reply_id"],
            rollout_id=data["rollout_id"],
            call_id=data["call_id"],
            item_id=data.get("item_id"),
            tool=data["tool"],
            args=args,
            raw_arguments=data.get("raw_arguments"),
            output_cap=int(data["output_cap"]),
            queued_at=float(data.get("queued_at") or 0.0),
            expires_at=float(data.get("expires_at") or 0.0),
            source=str(data.get("source") or AGENT),
        )


WIRE_ARGS: dict[str, Any] = {
    TESTS_TOOL: TestRunArgs,
    EXEC_TOOL: ExecArgs,
    UPLOAD_TOOL: UploadArgs,
    DOWNLOAD_TOOL: DownloadArgs,
}


@dataclass(frozen=True)
class CallReply:
    """Worker -> API: how a call ended, either a result (ok / model_error) or an infra failure."""

    result: CallResult | None = None
    infra_reason: InfraReason | None = None
    infra_message: str = ""

    @classmethod
    def of(cls, result: CallResult) -> CallReply:
        return cls(result=result)

    @classmethod
    def failed(cls, error: InfraError) -> CallReply:
        return cls(infra_reason=error.reason, infra_message=error.message)

    @classmethod
    def infra(cls, reason: InfraReason, message: str) -> CallReply:
        return cls(infra_reason=reason, infra_message=message)

    def unwrap(self) -> CallResult:
        """The result, or raise the infra error the worker met (the API answers it as a 5xx)."""
        if self.result is not None:
            return self.result
        raise infra_error_from_reason((self.infra_reason or InfraReason.INTERNAL).value, self.infra_message)

    def to_wire(self) -> dict[str, Any]:
        if self.result is not None:
            return {"result": self.result.to_dict()}
        reason = self.infra_reason or InfraReason.INTERNAL
        return {"infra": {"reason": reason.value, "message": self.infra_message}}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> CallReply:
        if "result" in data:
            return cls(result=CallResult.from_dict(data["result"]))
        infra = data.get("infra") or {}
        try:
            reason = InfraReason(str(infra.get("reason")))
        except ValueError:
            reason = InfraReason.INTERNAL
        return cls(infra_reason=reason, infra_message=str(infra.get("message", "")))


@dataclass(frozen=True)
class ForkRequest:
    """API -> the parent's host: copy the parent's filesystem into a container per child.

    The API has created the children's records (provisioning, attempt 1) before sending it;
    the host marks each ready, or the API forgets them all when the fork fails.
    """

    reply_id: str
    parent_id: str
    child_ids: tuple[str, ...]
    expires_at: float  # not started by then: answered queue_timeout, nothing created

    def to_wire(self) -> dict[str, Any]:
        return {
            "reply_id": self.reply_id,
            "parent_id": self.parent_id,
            "child_ids": list(self.child_ids),
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ForkRequest:
        return cls(
            reply_id=str(data["reply_id"]),
            parent_id=str(data["parent_id"]),
            child_ids=tuple(str(c) for c in data["child_ids"]),
            expires_at=float(data.get("expires_at") or 0.0),
        )


@dataclass(frozen=True)
class ForkReply:
    """The parent's host -> API: the children are ready, or the fork failed and left nothing behind."""

    ok: bool
    infra_reason: InfraReason | None = None
    message: str = ""
    refused: bool = False  # the parent could not be forked (ended or tainted meanwhile): a 409, not infra

    def to_wire(self) -> dict[str, Any]:
        reason = self.infra_reason.value if self.infra_reason is not None else None
        return {"ok": self.ok, "reason": reason, "message": self.message, "refused": self.refused}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ForkReply:
        reason = data.get("reason")
        try:
            infra = InfraReason(str(reason)) if reason else None
        except ValueError:
            infra = InfraReason.INTERNAL
        return cls(bool(data.get("ok")), infra, str(data.get("message", "")), bool(data.get("refused")))
