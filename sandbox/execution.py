"""Worker side of a tool call: run it in the rollout's container and record how it ended.

The worker records ok/model_error results itself, in the same place the command ran, so
a result is never lost when the API that asked for it dies: the platform's retry finds
it stored and the command does not run twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .backends.base import Backend
from .calls import CallResult, cap_text, read_file_outcome, shell_outcome
from .config import Settings
from .errors import EngineUnavailable, InfraError, InternalError, ProvisionFailed, SandboxLost
from .hosts import FailureWindow
from .outcomes import ModelReason, Outcome
from .rollouts import mark_lost
from .store import FAILED, PROVISIONING, READY, RolloutRecord, Store


@dataclass
class Executor:
    store: Store
    backend: Backend
    settings: Settings
    failures: FailureWindow | None = None  # engine failures here may quarantine the host

    def execute(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one dispatched call; return the reply the API waits for.

        Reply shapes: {"result": CallResult dict} or {"infra": {"reason", "message"}}.
        """
        rid = request["rollout_id"]
        try:
            stored, rec = self.store.begin_execution(request["reply_id"], rid, request["call_id"])
            if stored is not None:  # a redelivered task: the command already ran
                return {"result": stored.to_dict()}
            result = self._run(request, rec)
            self._engine_result(ok=True)
            self.store.record_call(rid, result, served=True)
            return {"result": result.to_dict()}
        except InfraError as exc:
            if isinstance(exc, EngineUnavailable):
                self._engine_result(ok=False)
            if isinstance(exc, SandboxLost):
                if self.store.fail_unserved(rid, exc.message):
                    # Died before serving anything (e.g. a stale warm container): the
                    # agent lost nothing, so this is a provisioning failure, retryable.
                    return {
                        "infra": {"reason": "provision_failed", "message": f"sandbox died before use: {exc.message}"}
                    }
                mark_lost(self.store, rid, exc.message)
            return {"infra": {"reason": exc.reason.value, "message": exc.message}}

    def _engine_result(self, ok: bool) -> None:
        if self.failures is not None:
            self.failures.record(ok)

    def _run(self, request: dict[str, Any], rec: RolloutRecord | None) -> CallResult:
        if rec is not None and rec.state in (FAILED, PROVISIONING):
            # Its sandbox died before serving anything and is being (or may be) provisioned
            # again: retryable, and nothing the agent saw is lost.
            raise ProvisionFailed(f"the rollout's sandbox is not ready (state {rec.state}); retry")
        if rec is None or rec.state != READY:
            state = rec.state if rec else "missing"
            raise SandboxLost(f"the rollout's sandbox is not available (state {state})")
        if rec.host != self.settings.host_id:
            raise InternalError(f"call for host {rec.host!r} reached host {self.settings.host_id!r}")
        tool = request["tool"]
        args = request["arguments"]
        cap = int(request.get("output_cap") or self.settings.output.cap_bytes)
        started = time.time()
        if tool == "shell":
            timeout_s = float(args["timeout_s"])
            payload = {"op": "shell", "command": args["command"], "timeout": timeout_s, "output_cap": cap, "cwd": None}
            reply = self.backend.request(rec.container_name, payload, timeout_s)
            outcome, reason, output = self._shell(reply, timeout_s)
        else:
            payload = {
                "op": "read_file",
                "path": args["path"],
                "start_line": args.get("start_line"),
                "end_line": args.get("end_line"),
                "output_cap": cap,
            }
            reply = self.backend.request(rec.container_name, payload, 30.0)
            if "error" in reply:
                raise InternalError(f"guest failed read_file: {reply['error']}")
            try:
                outcome, reason, output = read_file_outcome(reply, args["path"])
            except ValueError as exc:
                raise InternalError(str(exc)) from exc
        # The guest caps output; cap again so no path can exceed the response budget.
        output, extra_cut = cap_text(output, cap + 256)
        finished = time.time()
        return CallResult(
            call_id=request["call_id"],
            item_id=request.get("item_id"),
            tool=tool,
            arguments=request.get("raw_arguments"),
            outcome=outcome,
            reason=reason,
            output=output,
            exit_code=reply.get("exit_code"),
            duration_ms=round((finished - started) * 1000, 3),
            output_bytes=int(reply.get("output_bytes", 0)),
            truncated_bytes=int(reply.get("truncated_bytes", 0)) + extra_cut,
            started_at=started,
            finished_at=finished,
        )

    def _shell(self, reply: dict[str, Any], timeout_s: float) -> tuple[str, str, str]:
        if "error" in reply:
            if reply.get("pids_exhausted"):
                # The model's own processes filled the sandbox's process table.
                return (
                    Outcome.MODEL_ERROR,
                    ModelReason.PIDS_EXHAUSTED,
                    "[could not start the command: the sandbox's process limit is used up by earlier commands]",
                )
            raise InternalError(f"guest could not run the command: {reply['error']}")
        return shell_outcome(reply, timeout_s=timeout_s, memory_bytes=self.settings.limits.memory_bytes)
