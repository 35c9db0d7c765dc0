"""The `tests` grader's API side: resolve the plan, read the hidden files, run them on the
rollout's host through the same call queue and guest as tool calls, score the report.

A test run is not an agent tool call: it is not in the trajectory, not against the tool
budget, and not counted in sandbox_tool_calls_total. It is kept with the grade's stored
answer (the rollout's grading step) instead.
"""

from __future__ import annotations

import base64
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import metrics, workspaces
from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..dispatch import Dispatcher
from ..domain.environment import Environment
from ..domain.errors import InvalidGradeRequest, QueueTimeout, WorkerLost
from ..domain.messages import TESTS_TOOL, CallRequest
from ..domain.tests import MAX_HIDDEN_BYTES, TestPlan, TestRunArgs, parse_tests_spec, resolve_plan
from ..grading.tests import score_tests
from ..store import Store

GRADING_CALL_ID = "grading"  # the call id a test run travels under (never a tool call's)
SETUP_SLACK_S = 30.0  # worker/executor.py TEST_SETUP_SLACK_S: the stage is set before the deadline starts


@dataclass
class TestRunner:
    __test__ = False
    store: Store
    dispatcher: Dispatcher
    settings: Settings
    clock: Clock = SYSTEM_CLOCK

    def plan(self, env: Environment, item: dict[str, Any]) -> TestPlan:
        """The run the item asks for, the environment's defaults under it. Raises InvalidGradeRequest."""
        return resolve_plan(env.spec.tests, parse_tests_spec(item.get("tests"), "item.tests"))

    def budget_s(self, plan: TestPlan) -> float:
        """How long a grading with this plan may take, queueing included."""
        return (
            self.settings.timeouts.grading_queue_s
            + plan.timeout_s
            + SETUP_SLACK_S
            + self.settings.timeouts.reply_slack_s
        )

    def run(self, rid: str, host: str, plan: TestPlan) -> dict[str, Any]:
        """Run the plan in the rollout's container; {"score", "tests"}. Raises InfraError."""
        request = CallRequest(
            reply_id=uuid.uuid4().hex,
            rollout_id=rid,
            call_id=GRADING_CALL_ID,
            item_id=None,
            tool=TESTS_TOOL,
            args=TestRunArgs(
                command=plan.command,
                timeout_s=plan.timeout_s,
                files=self._hidden_files(plan),
                restore=plan.restore,
                reward_file=plan.reward_file,
            ),
            raw_arguments=None,
            output_cap=self.settings.output.cap_bytes,
        )
        queue_s = self.settings.timeouts.grading_queue_s
        started = self.clock.monotonic()
        # A burst of gradings waits its turn in the host's queue (bounded by its call threads)
        # for as long as grading_queue_s, far longer than a tool call would.
        self.dispatcher.execute(host, request, expires_s=queue_s)
        reply = self.store.queues.wait_reply(request.reply_id, self.budget_s(plan))
        if reply is None:
            if self.store.queues.was_started(request.reply_id):
                raise WorkerLost("the worker running the tests stopped answering")
            raise QueueTimeout(f"no worker of host {host!r} took the test run within {queue_s:g} s")
        result = reply.unwrap()
        metrics.TEST_RUN_DURATION.observe(self.clock.monotonic() - started)
        return score_tests(plan, result.outcome, result.reason, result.output, result.extra.get("run") or {})

    def _hidden_files(self, plan: TestPlan) -> dict[str, str]:
        """Target path -> base64: the item's files, then the hidden directory's (read from the host now)."""
        files = dict(plan.files)
        if plan.dir is not None:
            root = workspaces.confine(plan.dir, self.settings.workspace_root_list)
            if not root.is_dir():
                raise InvalidGradeRequest(f"tests.dir {plan.dir} is not a directory")
            for path in _walk(root):
                rel = path.relative_to(root).as_posix()
                files[f"{plan.dir_target}/{rel}" if plan.dir_target else rel] = path.read_bytes()
        total = sum(len(v) for v in files.values())
        if total > MAX_HIDDEN_BYTES:
            raise InvalidGradeRequest(f"the hidden test files hold {total} bytes; at most {MAX_HIDDEN_BYTES} are taken")
        return {path: base64.b64encode(data).decode() for path, data in files.items()}


def _walk(root: Path) -> list[Path]:
    """Regular files under root, symlinks not followed (a link out of the allowed roots is not read)."""
    found = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", ".git")]
        for name in names:
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink():
                found.append(path)
    return sorted(found)
