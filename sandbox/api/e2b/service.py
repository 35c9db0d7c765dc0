"""What E2B's control plane and envd do, over this service's rollouts.

A sandbox is a rollout of the same id: created by its first provisioning, its commands and
file operations are trainer API calls (exec, files) through the same host queues, guest,
deadlines, output caps, records and metrics as every call, and it ends by release (kill) or
by the reaper (its E2B timeout, or the rollout's idle TTL and max lifetime, whichever is
first). Errors stay in this service's taxonomy (domain/errors.py); the routes translate them
into what E2B's SDK expects.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from ... import metrics
from ...domain.calls import CallResult
from ...domain.e2b import (
    DEFAULT_TEMPLATE,
    DEFAULT_TIMEOUT_S,
    MAX_TIMEOUT_S,
    SandboxRecord,
    check_string_map,
    environment_of_template,
    new_access_token,
    new_sandbox_id,
)
from ...domain.errors import BadRequest, RolloutNotFound, SandboxError
from ...domain.rollout import ENDED_STATES
from ...domain.trainer import TRAINER
from ..context import ApiContext

PID_VARIABLE = "SANDBOX_E2B_PID"  # in every command's environment: how SendSignal finds its processes
SIGNALS = {"SIGNAL_SIGKILL": "KILL", "SIGNAL_SIGTERM": "TERM", 9: "KILL", 15: "TERM"}


class SandboxGone(Exception):
    """No live sandbox of that id (never created, killed, timed out, reaped)."""


@dataclass(frozen=True)
class Sandbox:
    """A live E2B sandbox: its record and the access token's owner check done."""

    record: SandboxRecord
    ctx: ApiContext

    @property
    def id(self) -> str:
        return self.record.sandbox_id


class E2BService:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    # --- control plane ---
    def create(self, body: Any) -> dict[str, Any]:
        """POST /v2/sandboxes: provision now (E2B's create returns a running sandbox)."""
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        template = body.get("templateID") or DEFAULT_TEMPLATE
        if not isinstance(template, str):
            raise BadRequest("templateID must be a string")
        timeout = _timeout(body.get("timeout", DEFAULT_TIMEOUT_S))
        try:
            metadata = check_string_map(body.get("metadata"), "metadata")
            env_vars = check_string_map(body.get("envVars"), "envVars")
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        environment = environment_of_template(template)
        self.ctx.registry.get(environment)  # an unknown template is a 404 now, not a failed provisioning
        sid = new_sandbox_id()
        self.ctx.rollouts.ensure_ready(sid, {"environment": environment})
        now = time.time()
        token = new_access_token()
        record = SandboxRecord(sid, template, now, now + timeout, token, metadata, env_vars)
        self.ctx.store.e2b.save(record)
        metrics.E2B_SANDBOXES.labels("created").inc()
        return record.detail(self._limits(environment), access_token=token)

    def connect(self, sid: str, body: Any) -> dict[str, Any]:
        """POST /v2/sandboxes/{id}/connect: the sandbox again, with its access token; any live
        rollout may be connected to (its template is its environment)."""
        timeout = _timeout(body.get("timeout")) if isinstance(body, dict) and body.get("timeout") else None
        rollout = self._live_rollout(sid)
        record = self.ctx.store.e2b.get(sid)
        now = time.time()
        if record is None or sid not in set(self.ctx.store.e2b.listed()):
            end = now + (timeout or DEFAULT_TIMEOUT_S)
            record = SandboxRecord(sid, rollout.environment, rollout.created_at or now, end, new_access_token())
            self.ctx.store.e2b.save(record)
        elif timeout is not None and now + timeout > record.end_at:
            record.end_at = now + timeout
            self.ctx.store.e2b.set_end(sid, record.end_at)
        return record.detail(self._limits(rollout.environment), access_token=record.access_token)

    def info(self, sid: str) -> dict[str, Any]:
        record, rollout = self._live(sid)
        return record.detail(self._limits(rollout.environment))

    def listing(self, metadata_query: str | None, limit: int | None) -> list[dict[str, Any]]:
        wanted = _metadata_filter(metadata_query)
        found = []
        for sid in self.ctx.store.e2b.listed():
            try:
                record, rollout = self._live(sid)
            except SandboxGone:
                continue
            if all(record.metadata.get(k) == v for k, v in wanted.items()):
                found.append(record.detail(self._limits(rollout.environment)))
            if limit is not None and len(found) >= limit:
                break
        return found

    def kill(self, sid: str) -> None:
        self._live(sid)
        try:
            self.ctx.rollouts.release(sid, reason="killed by its E2B client")
        except RolloutNotFound as exc:
            raise SandboxGone(sid) from exc
        self.ctx.store.e2b.forget(sid)
        metrics.E2B_SANDBOXES.labels("killed").inc()

    def set_timeout(self, sid: str, body: Any) -> None:
        if not isinstance(body, dict) or "timeout" not in body:
            raise BadRequest('the body must be {"timeout": seconds}')
        timeout = _timeout(body["timeout"])
        self._live(sid)
        self.ctx.store.e2b.set_end(sid, time.time() + timeout)

    # --- envd ---
    def sandbox(self, sid: str | None, token: str | None) -> Sandbox:
        """The live sandbox an envd request names (E2b-Sandbox-Id), its token checked.
        Raises SandboxGone, PermissionError (a missing or wrong X-Access-Token)."""
        if not sid:
            raise SandboxGone("")
        record, _ = self._live(sid)
        if not record.token_matches(token):
            raise PermissionError("missing or wrong X-Access-Token for this sandbox")
        return Sandbox(record, self.ctx)

    def run(self, box: Sandbox, body: dict[str, Any]) -> tuple[dict[str, Any], CallResult]:
        """One command, as the trainer API's exec (the agent's call unless body says otherwise)."""
        return self.ctx.trainer.exec(box.id, body, None)

    def run_helper(self, box: Sandbox, argv: list[str], timeout_s: float = 60.0) -> dict[str, Any]:
        """A small program of ours (filesystem calls, signals): a trainer call, outside the agent's budget."""
        body = {"argv": argv, "timeout": timeout_s, "source": TRAINER, "env": dict(box.record.env_vars)}
        answer, _ = self.ctx.trainer.exec(box.id, body, None)
        return answer

    # --- internals ---
    def _live(self, sid: str) -> tuple[SandboxRecord, Any]:
        record = self.ctx.store.e2b.get(sid)
        if record is None:
            raise SandboxGone(sid)
        rollout = self._live_rollout(sid)
        if record.end_at < time.time():  # timed out, the reaper not yet round
            raise SandboxGone(sid)
        return record, rollout

    def _live_rollout(self, sid: str) -> Any:
        rollout = self.ctx.store.rollouts.get(sid)
        if rollout is None or rollout.state in ENDED_STATES:
            raise SandboxGone(sid)
        return rollout

    def _limits(self, environment: str) -> tuple[int, int]:
        """(cpuCount, memoryMB) as E2B reports them: the environment's limits, else the service's."""
        s = self.ctx.settings.limits
        try:
            limits = self.ctx.registry.of_rollout(environment).spec.limits
        except SandboxError:
            limits = None
        cpus = (limits.cpus if limits is not None and limits.cpus else None) or s.cpus
        memory = (limits.memory_bytes if limits is not None and limits.memory_bytes else None) or s.memory_bytes
        return max(1, math.ceil(cpus)), memory // (1024 * 1024)


def _timeout(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise BadRequest("timeout must be a positive number of seconds")
    if value > MAX_TIMEOUT_S:
        raise BadRequest(f"timeout is at most {MAX_TIMEOUT_S} s (24 h), as on E2B")
    return int(math.ceil(value))


def _metadata_filter(query: str | None) -> dict[str, str]:
    """The list's `metadata` query: `k=v&k2=v2`, URL-encoded as one value."""
    return dict(parse_qsl(query or "", keep_blank_values=True))
