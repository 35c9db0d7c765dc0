"""The trainer's side of the wire, with httpx as trainers use it: tool calls in the Agent RFT
format, the endpoint grader, releases.

A 5xx (an infrastructure failure) raises InfraFailure instead of becoming a tool output: a
trainer must retry or discard such a rollout, never score it, and this example stops.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx


class InfraFailure(RuntimeError):
    """The service answered something other than a tool output (5xx, or a 4xx for our own mistake)."""


@dataclass(frozen=True)
class ToolResult:
    tool: str
    arguments: dict[str, Any]
    output: str
    outcome: str  # X-Sandbox-Outcome: ok | model_error
    reason: str  # X-Sandbox-Reason: none, nonzero_exit, budget_exhausted, ...


def _check(r: httpx.Response) -> httpx.Response:
    if r.status_code != 200:
        raise InfraFailure(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}")
    return r


@dataclass
class Rollout:
    """One rollout: every call carries trace_id = its id, the first one also the dataset row."""

    http: httpx.Client
    rollout_id: str
    item: dict[str, Any]
    calls: list[ToolResult] = field(default_factory=list)

    def call(self, tool: str, arguments: dict[str, Any]) -> ToolResult:
        n = len(self.calls) + 1
        body = {
            "type": "function_call",
            "id": f"fc_{n}",
            "call_id": f"call_{n}",
            "name": tool,
            "arguments": json.dumps(arguments),  # the platform sends a JSON-encoded string
            "trace_id": self.rollout_id,
            "item": self.item,
        }
        r = _check(self.http.post(f"/v1/tools/{tool}", json=body))
        result = ToolResult(tool, arguments, r.json()["output"], r.headers.get("X-Sandbox-Outcome", ""),
                            r.headers.get("X-Sandbox-Reason", ""))  # fmt: skip
        self.calls.append(result)
        return result

    def shell(self, command: str) -> str:
        return self.call("shell", {"command": command}).output

    def read_file(self, path: str, start_line: int | None = None, end_line: int | None = None) -> str:
        args: dict[str, Any] = {"path": path}
        if start_line is not None:
            args["start_line"] = start_line
        if end_line is not None:
            args["end_line"] = end_line
        return self.call("read_file", args).output

    def grade(self, answer: str) -> dict[str, Any]:
        """POST /v1/grade as the platform sends it: the final answer, the row, the trace id."""
        body = {"sample": {"output_text": answer, "output_json": None, "output_tools": []},
                "item": self.item, "trace_id": self.rollout_id}  # fmt: skip
        return dict(_check(self.http.post("/v1/grade", json=body)).json())

    def trajectory(self) -> list[dict[str, Any]]:
        return list(_check(self.http.get(f"/v1/rollouts/{self.rollout_id}/trajectory")).json()["calls"])

    def release(self) -> None:
        _check(self.http.delete(f"/v1/rollouts/{self.rollout_id}"))


def register_environment(http: httpx.Client, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    r = http.put(f"/v1/environments/{name}", json=spec)
    if r.status_code == 403:
        raise InfraFailure(
            f"the service refuses the workspace ({r.json()['error']['message']}): generate the corpus under one of "
            "its SANDBOX_WORKSPACE_ROOTS (make up: the checkout's workspaces/), or pass --corpus"
        )
    return dict(_check(r).json())
