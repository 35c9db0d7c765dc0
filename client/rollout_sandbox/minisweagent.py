"""A mini-swe-agent environment backed by a rollout sandbox (`pip install 'rollout-sandbox-client[minisweagent]'`).

mini-swe-agent builds environments from its config's `environment_class`, a full import path:

    environment:
      environment_class: rollout_sandbox.minisweagent.SandboxEnvironment
      base_url: http://127.0.0.1:8000
      token: ...
      item: {environment: my-repo}

Each action runs as one exec in the rollout's own container, as the sandbox user, with stdout
and stderr interleaved as written (what mini-swe-agent's local and docker environments give the
model). A command's own failure (a non-zero exit, a timeout) is the model's observation, as in
mini-swe-agent; an infrastructure failure is not: `InfraError` propagates out of the agent's
loop, so the trainer discards the rollout instead of training on a made-up observation.
"""

from __future__ import annotations

import uuid
from typing import Any

from minisweagent.exceptions import Submitted
from minisweagent.utils.serialize import recursive_merge
from pydantic import BaseModel, Field

from .client import Client, Rollout

SUBMIT_MARKER = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"  # mini-swe-agent's own (its environments check it)


class SandboxEnvironmentConfig(BaseModel):
    base_url: str | None = None  # default: $ROLLOUT_SANDBOX_URL, else http://127.0.0.1:8000
    token: str | None = None  # default: $ROLLOUT_SANDBOX_TOKEN
    rollout_id: str = Field(default_factory=lambda: f"mswea-{uuid.uuid4().hex}")
    item: dict[str, Any] | None = None
    """The dataset row: `item["environment"]` picks the sandbox's environment on its first call."""
    cwd: str = ""
    """Working directory of actions; "" = the environment's workspace."""
    env: dict[str, str] = {}
    """Variables added to every action's environment."""
    timeout: int = 30
    """Deadline of one action, in seconds; at it the action's whole process group is killed."""
    source: str = "agent"
    """agent: actions count against the rollout's tool budget and are graded; trainer: neither."""
    release_on_close: bool = True


class SandboxEnvironment:
    """mini-swe-agent's Environment protocol over one rollout of the sandbox service."""

    def __init__(self, *, config_class: type = SandboxEnvironmentConfig, client: Client | None = None, **kwargs: Any):
        self.config = config_class(**kwargs)
        self._own_client = client is None
        self.client = client or Client(self.config.base_url, self.config.token)
        self.rollout: Rollout = self.client.rollout(self.config.rollout_id, self.config.item)
        self._system: dict[str, str] | None = None

    def execute(self, action: dict, cwd: str = "", *, timeout: int | None = None) -> dict[str, Any]:
        command = action.get("command", "")
        deadline = timeout or self.config.timeout
        result = self.rollout.exec(
            command,
            cwd=cwd or self.config.cwd or None,
            env=self.config.env or None,
            timeout=deadline,
            source=self.config.source,
            merge_stderr=True,
        )
        output: dict[str, Any] = {
            "output": result.stdout + result.stderr,  # stderr is empty (merged) unless it never ran
            "returncode": result.exit_code if result.exit_code is not None else -1,
            "exception_info": "",
        }
        if result.timed_out:  # as mini-swe-agent's own environments report a timeout
            output["exception_info"] = f"An error occurred while executing the command: timed out after {deadline} s"
            output["extra"] = {"exception_type": "TimeoutExpired", "exception": f"timed out after {deadline} s"}
        self._check_finished(output)
        return output

    def _check_finished(self, output: dict[str, Any]) -> None:
        """Raise Submitted when the action printed the submit marker first, as mini-swe-agent's environments do."""
        lines = output.get("output", "").lstrip().splitlines(keepends=True)
        if lines and lines[0].strip() == SUBMIT_MARKER and output["returncode"] == 0:
            submission = "".join(lines[1:])
            raise Submitted(
                {"role": "exit", "content": submission, "extra": {"exit_status": "Submitted", "submission": submission}}
            )

    def system(self) -> dict[str, str]:
        """The sandbox's own uname, for the templates' {{system}} {{release}} {{version}} {{machine}}
        (asked once, as the trainer's call: it is not one of the agent's moves)."""
        if self._system is None:
            lines = self.rollout.exec("uname -srm; uname -v", source="trainer").stdout.splitlines() + ["", ""]
            system, release, machine = (lines[0].split() + ["", "", ""])[:3]
            version = lines[1].strip()
            self._system = {"system": system, "release": release, "version": version, "machine": machine}
        return self._system

    def get_template_vars(self, **kwargs: Any) -> dict[str, Any]:
        return recursive_merge(self.config.model_dump(exclude={"token"}), self.system(), kwargs)

    def serialize(self) -> dict:
        return {
            "info": {
                "config": {
                    "environment": self.config.model_dump(mode="json", exclude={"token"}),
                    "environment_type": f"{self.__class__.__module__}.{self.__class__.__name__}",
                }
            }
        }

    def close(self) -> None:
        """Release the rollout's sandbox (grade it first: release ends it)."""
        if self.config.release_on_close:
            self.rollout.__exit__(None, None, None)
        if self._own_client:
            self.client.close()
