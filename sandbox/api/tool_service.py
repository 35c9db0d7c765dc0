"""API side of a tool call: validate, deduplicate, get the sandbox, dispatch, answer.

Every call ends as one CallResult (ok / model_error, answered 200) or one InfraError
(answered 5xx). Both are recorded in the rollout's trajectory and counted once here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import metrics
from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..dispatch import Dispatcher
from ..domain.calls import CallResult, ReadFileArgs, ShellArgs, ToolCall, validate_read_file, validate_shell
from ..domain.environment import Environment
from ..domain.errors import (
    CallIdConflict,
    CallInProgress,
    InfraError,
    InternalError,
    QueueTimeout,
    SandboxError,
    SandboxLost,
    WorkerLost,
)
from ..domain.messages import READ_FILE_DEADLINE_S, CallRequest
from ..domain.outcomes import ModelReason, Outcome
from ..domain.rollout import RolloutRecord, environment_of
from ..domain.trainer import AGENT, ExecArgs, TrainerArgs
from ..endings import mark_lost, taint
from ..environments import EnvironmentRegistry
from ..store import Store
from .admission import AdmissionTicket, CallAdmission
from .rollout_service import RolloutService

log = logging.getLogger(__name__)
RETRY_WAIT_S = 30.0  # how long a duplicate of a running call waits for its result
RETRY_LOOK_S = 0.05  # how often it looks for that result
# A worker marks a call started as it pops it, before its expiry; this much later the mark
# must be there, or no worker took it.
QUEUE_PICKUP_SLACK_S = 1.0
RUN_SLOT_LOOK_S = 1.0  # a call waiting for a run slot looks at least this often (a slot may expire unreleased)
# admission.py: calls doing their CPU-bound part at once in one API process (one core: a few
# keep it busy while others wait on Redis), and how long a follow-up lets first calls go first.
ADMISSION_SLOTS = 8
FOLLOW_UP_MAX_WAIT_S = 5.0


@dataclass
class ToolService:
    store: Store
    dispatcher: Dispatcher
    rollouts: RolloutService
    settings: Settings
    registry: EnvironmentRegistry
    admission: CallAdmission = field(default_factory=lambda: CallAdmission(ADMISSION_SLOTS, FOLLOW_UP_MAX_WAIT_S))
    clock: Clock = SYSTEM_CLOCK

    def handle(self, call: ToolCall) -> CallResult:
        """Answer one tool call. Raises InfraError (recorded and counted) or CallInProgress."""
        started = self.clock.monotonic()
        try:
            try:
                result = self._handle(call)
            except SandboxError:  # already classified (infra 5xx, or a 4xx like rollout_released)
                raise
            except Exception as exc:  # a bug is still our fault: answer 503 internal, counted
                log.exception("tool call crashed (rollout %s)", call.rollout_id)
                raise InternalError(f"internal error: {type(exc).__name__}") from exc
        except InfraError as exc:
            metrics.TOOL_CALLS.labels(call.tool, Outcome.INFRA_ERROR.value, exc.reason.value).inc()
            metrics.TOOL_CALL_DURATION.labels(call.tool).observe(self.clock.monotonic() - started)
            raise
        metrics.TOOL_CALLS.labels(call.tool, result.outcome, result.reason).inc()
        metrics.TOOL_CALL_DURATION.labels(call.tool).observe(self.clock.monotonic() - started)
        return result

    def _handle(self, call: ToolCall) -> CallResult:
        """A retry replays the stored answer; a call_id already used for another tool is a 409 CallIdConflict."""

        stored, rec = self.store.calls.context(call.rollout_id, call.call_id)
        if stored is None:  # not a retry (a retry gets the first answer, never a second run)
            ticket = self.admission.enter(first=rec is None or not rec.served)
            try:
                stored = self._handle_new(call, rec, ticket)  # or a concurrent duplicate's answer
            finally:
                ticket.release()
        if stored.tool != call.tool:  # never hand one tool's output to a call of another
            raise CallIdConflict(
                f"call_id {call.call_id!r} was already used for a {stored.tool} call of this rollout; "
                f"this {call.tool} call needs a call_id of its own"
            )
        return stored

    def _handle_new(self, call: ToolCall, rec: RolloutRecord | None, ticket: AdmissionTicket) -> CallResult:
        # The environment is fixed by the rollout's first call; unknown names are a 404.
        if rec is not None and rec.environment:  # fixed by its first call, even if deleted since
            env = self.registry.of_rollout(rec.environment)
        else:
            env = self.registry.get(environment_of(call.item))
        args_or_problem = self._validate(call, env)
        if isinstance(args_or_problem, str):
            return self._model_error_without_running(call, ModelReason.INVALID_ARGUMENTS, args_or_problem, env)
        if not self.store.calls.claim(call.rollout_id, call.call_id, stale_s=self._call_budget_s(args_or_problem)):
            ticket.release()  # waiting for another attempt's result is not CPU work
            return self._wait_for_duplicate(call)
        # Only the agent's calls spend its budget: a trainer's setup and evaluation are not its moves.
        limit = env.spec.max_tool_calls if call.source == AGENT else None
        if limit is not None and not self.store.calls.consume_budget(call.rollout_id, limit):
            message = (
                f"{call.tool}: the tool-call budget of this rollout ({limit} calls) is used up; give your final answer"
            )
            return self._model_error_without_running(call, ModelReason.BUDGET_EXHAUSTED, message, env)
        try:
            # Waiting for a container is not CPU work: follow-up calls need not wait for it.
            rec = self.rollouts.ensure_ready(call.rollout_id, call.item, known=rec, on_wait=ticket.release)
            return self._dispatch(call, rec.host, args_or_problem, env, first=not rec.served, queued=ticket.release)
        except InfraError as exc:
            now = self.store.rollouts.get(call.rollout_id)
            if now is None:  # no rollout any more (a fork that failed forgot its child): nothing to record into
                raise
            if limit is not None:
                self.store.calls.refund_budget(call.rollout_id)
            self._record_infra(call, exc, had_sandbox=now.served)
            raise

    def _validate(self, call: ToolCall, env: Environment) -> ShellArgs | ReadFileArgs | TrainerArgs | str:
        if call.args is not None:  # the trainer API's, checked by the API already (4xx, not the model's)
            return call.args  # type: ignore[no-any-return]
        if call.arguments is None:
            return f"{call.tool}: {call.arguments_error}"
        if call.tool == "shell":
            s = self.settings.shell
            return validate_shell(
                call.arguments,
                default_timeout=env.spec.shell_timeout_s or s.default_timeout_s,
                max_timeout=max(s.max_timeout_s, env.spec.shell_timeout_s or 0),
                max_command_bytes=s.max_command_bytes,
            )
        return validate_read_file(call.arguments)

    def _call_budget_s(self, args: ShellArgs | ReadFileArgs | TrainerArgs) -> float:
        timeout = READ_FILE_DEADLINE_S if isinstance(args, ReadFileArgs) else args.timeout_s
        t = self.settings.timeouts
        return t.provision_s + t.queue_s + timeout + 60.0

    def _dispatch(
        self,
        call: ToolCall,
        host: str,
        args: ShellArgs | ReadFileArgs | TrainerArgs,
        env: Environment,
        first: bool,
        queued: Callable[[], None],
    ) -> CallResult:
        cap = env.spec.output_cap_bytes or self.settings.output.cap_bytes
        request = CallRequest(
            reply_id=uuid.uuid4().hex,
            rollout_id=call.rollout_id,
            call_id=call.call_id,
            item_id=call.item_id,
            tool=call.tool,
            args=args,
            raw_arguments=call.raw_arguments,
            output_cap=self.settings.exec.output_cap_bytes if isinstance(args, ExecArgs) else cap,
            source=call.source,
        )
        queue_s = self.settings.timeouts.queue_s
        wait_s = queue_s + request.run_deadline_s + self.settings.timeouts.reply_slack_s
        queued()  # the API's CPU-bound part is done: follow-up calls may go
        self._take_run_slot(request, hold_s=wait_s + queue_s)
        try:
            self.dispatcher.execute(host, request, expires_s=queue_s, first=first)
            # First only as long as the call may wait in the queue: a call no worker took by then
            # is answered queue_timeout at once, not after its whole run deadline.
            taken_by_s = min(wait_s, queue_s + QUEUE_PICKUP_SLACK_S)
            reply = self.store.queues.wait_reply(request.reply_id, taken_by_s)
            if reply is None and self.store.queues.abandon_unstarted(request.reply_id):
                raise QueueTimeout(f"no worker of host {host!r} took the call within {queue_s:g} s")
            if reply is None:  # a worker runs it: wait for its end
                reply = self.store.queues.wait_reply(request.reply_id, wait_s - taken_by_s)
        finally:
            self.store.calls.release_run_slot(request.rollout_id, request.reply_id)
        if reply is None:
            raise WorkerLost("the worker running this call stopped answering")
        return reply.unwrap()

    def _take_run_slot(self, request: CallRequest, hold_s: float) -> None:
        """Wait for one of the rollout's run slots (SANDBOX_ROLLOUT_PARALLEL_CALLS).

        A host has a fixed number of call threads; without a cap per rollout, one rollout
        running many long commands at once takes them all and its neighbours' calls time
        out. Waiting here costs only the rollout's own calls. Raises QueueTimeout, which
        taints nothing: the call never ran.
        """
        rid, cap = request.rollout_id, self.settings.rollout_parallel_calls
        deadline = self.clock.monotonic() + self.settings.timeouts.queue_s
        while not self.store.calls.acquire_run_slot(rid, request.reply_id, cap, hold_s):
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                raise QueueTimeout(
                    f"the rollout already runs {cap} calls at once; this one waited "
                    f"{self.settings.timeouts.queue_s:g} s for one of them to finish and was not run"
                )
            self.store.calls.wait_for_run_slot(rid, min(RUN_SLOT_LOOK_S, remaining))

    def _wait_for_duplicate(self, call: ToolCall) -> CallResult:
        """A retry arrived while the first attempt still runs: wait for its stored result."""
        deadline = self.clock.monotonic() + RETRY_WAIT_S
        while self.clock.monotonic() < deadline:
            stored = self.store.calls.stored_result(call.rollout_id, call.call_id)
            if stored is not None:
                return stored
            self.clock.sleep(RETRY_LOOK_S)
        raise CallInProgress(f"call {call.call_id!r} is still running; retry later for its result")

    def _model_error_without_running(
        self, call: ToolCall, reason: ModelReason, message: str, env: Environment
    ) -> CallResult:
        self.store.rollouts.ensure(call.rollout_id, env.name, call.item)
        result = self._unrun_result(call, Outcome.MODEL_ERROR, reason, message)
        self.store.calls.record(call.rollout_id, result)
        return result

    def _unrun_result(
        self, call: ToolCall, outcome: Outcome, reason: str, output: str, extra: dict[str, Any] | None = None
    ) -> CallResult:
        """How a call that never reached its sandbox ended, as the trajectory keeps it."""
        now = self.clock.time()
        return CallResult(
            call_id=call.call_id,
            item_id=call.item_id,
            tool=call.tool,
            arguments=call.raw_arguments,
            outcome=outcome,
            reason=reason,
            output=output,
            started_at=now,
            finished_at=now,
            extra=extra or {},
            source=call.source,
        )

    def _record_infra(self, call: ToolCall, exc: InfraError, *, had_sandbox: bool) -> None:
        """Put the failure in the trajectory and, if the agent had a sandbox, taint the rollout.

        A failure before the rollout ever had a sandbox taints nothing: the platform's
        retry may provision again. Nor does a call that never started (queue_timeout).
        """
        result = self._unrun_result(call, Outcome.INFRA_ERROR, exc.reason.value, "", {"message": exc.message})
        try:
            if isinstance(exc, SandboxLost):
                mark_lost(self.store, call.rollout_id, exc.message)
            # queue_timeout: the call never started, so the sandbox is as the agent left it and
            # the rollout stays usable (a call that waited behind others must not taint it).
            if had_sandbox and not isinstance(exc, QueueTimeout):
                taint(self.store, call.rollout_id, exc.reason.value)
            self.store.calls.record(call.rollout_id, result)
        except InfraError:
            pass  # the store itself is down; the 5xx still goes out and is counted
