"""Worker side of a tool call: run it in the rollout's container and record how it ended.

The worker records ok/model_error results itself, in the same place the command ran, so
a result is never lost when the API that asked for it dies: the platform's retry finds
it stored and the command does not run twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backends.base import Backend
from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..domain.calls import CallResult, ReadFileArgs
from ..domain.classify import cap_text, read_file_outcome, shell_outcome, tests_outcome
from ..domain.errors import EngineUnavailable, InfraError, InternalError, ProvisionFailed, SandboxLost
from ..domain.hosts import FailureWindow
from ..domain.messages import CallReply, CallRequest
from ..domain.outcomes import InfraReason
from ..domain.rollout import FAILED, PROVISIONING, READY, RolloutRecord
from ..domain.tests import TestRunArgs
from ..domain.trainer import DownloadArgs, ExecArgs, UploadArgs
from ..endings import mark_lost
from ..guest.guest_protocol import read_file_request, run_tests_request, shell_request
from ..store import Store
from .data_port import DataPort
from .trainer_ops import TrainerOps

# Slack over the output cap for the final cut: the guest's own omission marker fits in it.
CAP_SLACK_BYTES = 256
TEST_SETUP_SLACK_S = 30.0  # restoring files and writing the hidden ones, before the test command's deadline


@dataclass
class Executor:
    store: Store
    backend: Backend
    settings: Settings
    failures: FailureWindow | None = None  # engine failures here may quarantine the host
    clock: Clock = SYSTEM_CLOCK
    data_port: DataPort | None = None  # the trainer API's transfers straight from the API (data_port.py)

    def execute(self, request: CallRequest) -> CallReply:
        """Run one dispatched call; return the reply the API waits for."""
        rid = request.rollout_id
        try:
            if isinstance(request.args, TestRunArgs):  # grading: neither an agent call nor recorded as one
                taken, _, rec = self.store.calls.begin_execution(request.reply_id, rid, request.call_id)
                if not taken:
                    return _abandoned()
                self._check_servable(rec)
                assert rec is not None
                result = self._run_tests(request, request.args, rec)
                self._engine_result(ok=True)
                return CallReply.of(result)
            taken, stored, rec = self.store.calls.begin_execution(request.reply_id, rid, request.call_id)
            if not taken:
                return _abandoned()
            if stored is not None:  # a redelivered call: the command already ran
                return CallReply.of(stored)
            result = self._run(request, rec)
            self._engine_result(ok=True)
            self.store.calls.record(rid, result, served=True)
            return CallReply.of(result)
        except InfraError as exc:
            if isinstance(exc, EngineUnavailable):
                self._engine_result(ok=False)
            if isinstance(exc, SandboxLost):
                if self.store.rollouts.fail_unserved(rid, exc.message):
                    # Died before serving anything (e.g. a stale warm container): the
                    # agent lost nothing, so this is a provisioning failure, retryable.
                    return CallReply.infra(InfraReason.PROVISION_FAILED, f"sandbox died before use: {exc.message}")
                mark_lost(self.store, rid, exc.message)
            return CallReply.failed(exc)

    def _engine_result(self, ok: bool) -> None:
        if self.failures is not None:
            self.failures.record(ok)

    def _check_servable(self, rec: RolloutRecord | None) -> None:
        if rec is not None and rec.state in (FAILED, PROVISIONING):
            # Its sandbox died before serving anything and is being (or may be) provisioned
            # again: retryable, and nothing the agent saw is lost.
            raise ProvisionFailed(f"the rollout's sandbox is not ready (state {rec.state}); retry")
        if rec is None or rec.state != READY:
            state = rec.state if rec else "missing"
            raise SandboxLost(f"the rollout's sandbox is not available (state {state})")
        if rec.host != self.settings.host_id:
            raise InternalError(f"call for host {rec.host!r} reached host {self.settings.host_id!r}")

    def _run(self, request: CallRequest, rec: RolloutRecord | None) -> CallResult:
        self._check_servable(rec)
        assert rec is not None
        args = request.args
        assert not isinstance(args, TestRunArgs)
        if isinstance(args, ExecArgs | UploadArgs | DownloadArgs):  # the trainer API (trainer_ops.py)
            return TrainerOps(self.store, self.backend, self.settings, self.clock, self.data_port).run(request, rec)
        cap = request.output_cap or self.settings.output.cap_bytes
        started = self.clock.time()
        reply: dict[str, Any]
        if isinstance(args, ReadFileArgs):
            payload = read_file_request(args.path, args.start_line, args.end_line, cap)
            reply = self.backend.request(rec.container_name, payload, request.run_deadline_s)
            try:
                outcome, reason, output = read_file_outcome(reply, args.path)
            except ValueError as exc:
                raise InternalError(str(exc)) from exc
        else:
            payload_shell = shell_request(args.command, args.timeout_s, cap)
            reply = self.backend.request(rec.container_name, payload_shell, args.timeout_s)
            outcome, reason, output = shell_outcome(
                reply, timeout_s=args.timeout_s, memory_bytes=self.settings.limits.memory_bytes
            )
        # The guest caps output; cap again so no path can exceed the response budget.
        output, extra_cut = cap_text(output, cap + CAP_SLACK_BYTES)
        finished = self.clock.time()
        return request.result(
            outcome,
            reason,
            output,
            started=started,
            finished=finished,
            exit_code=reply.get("exit_code"),
            output_bytes=int(reply.get("output_bytes", 0)),
            truncated_bytes=int(reply.get("truncated_bytes", 0)) + extra_cut,
        )

    def _run_tests(self, request: CallRequest, args: TestRunArgs, rec: RolloutRecord) -> CallResult:
        """Run the hidden tests in the rollout's container; the API scores what they reported."""
        payload = run_tests_request(
            args.command, args.timeout_s, request.output_cap, list(args.restore), args.files, args.reward_file
        )
        started = self.clock.time()
        # Setting the stage (restore, hidden files) comes on top of the command's own deadline.
        reply = self.backend.request(rec.container_name, payload, args.timeout_s + TEST_SETUP_SLACK_S)
        outcome, reason, output = tests_outcome(reply)
        finished = self.clock.time()
        run = {k: v for k, v in reply.items() if k != "output"}
        return request.result(
            outcome,
            reason,
            output,
            started=started,
            finished=finished,
            exit_code=reply.get("exit_code"),
            output_bytes=int(reply.get("output_bytes", 0)),
            truncated_bytes=int(reply.get("truncated_bytes", 0)),
            extra={"run": run},
        )


def _abandoned() -> CallReply:
    """The API gave up waiting for this call before it started; it answered queue_timeout."""
    return CallReply.infra(
        InfraReason.QUEUE_TIMEOUT, "the API stopped waiting for this call before it started; not run"
    )
