"""Bad input gets a clear 4xx (or a 200 model error the model can fix), never a 500."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.stack import Stack

pytestmark = pytest.mark.integration


def rid() -> str:
    return f"bad-{uuid.uuid4().hex[:8]}"


def error_code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


def test_requests_no_retry_can_fix_are_4xx(stack: Stack) -> None:
    h = {"Content-Type": "application/json"}
    r = stack.http.post("/v1/tools/shell", content=b"{not json", headers=h)
    assert (r.status_code, error_code(r)) == (400, "bad_request")
    r = stack.http.post("/v1/tools/shell", json={"call_id": "c", "arguments": "{}"})
    assert (r.status_code, error_code(r)) == (400, "missing_rollout_id")
    r = stack.http.post("/v1/tools/launch_missiles", json={"trace_id": rid()})
    assert (r.status_code, error_code(r)) == (404, "unknown_tool")
    r = stack.http.post("/v1/tools/shell", json=["a", "list"])
    assert r.status_code == 400
    r = stack.http.post("/v1/tools/shell", json={"trace_id": "x\u0000y", "arguments": "{}"})
    assert (r.status_code, error_code(r)) == (400, "invalid_rollout_id")
    r = stack.http.post("/v1/tools/shell", content=b"x" * (5 * 1024 * 1024), headers=h)
    assert r.status_code == 413
    r = httpx.post(f"{stack.base}/v1/tools/shell", json={"trace_id": rid()})
    assert (r.status_code, error_code(r)) == (401, "unauthorized")
    r = httpx.post(f"{stack.base}/v1/tools/shell", json={"trace_id": rid()}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert stack.http.get("/v1/rollouts/never-seen").status_code == 404


def test_arguments_the_model_got_wrong_are_200_model_errors(stack: Stack) -> None:
    r1 = rid()
    cases = [
        ("shell", "{not json"),
        ("shell", json.dumps({"command": 42})),
        ("shell", json.dumps({"cmd_typo": "ls"})),
        ("shell", json.dumps({"command": "echo " + "a" * 100_000})),
        ("shell", json.dumps({"command": "echo a\u0000b"})),
        ("shell", json.dumps(["ls"])),
        ("read_file", json.dumps({"path": "a\u0000b"})),
        ("read_file", json.dumps({"path": "x", "start_line": "one"})),
        ("read_file", json.dumps({"path": "x", "start_line": 5, "end_line": 2})),
        ("read_file", json.dumps({})),
    ]
    for tool, arguments in cases:
        r = stack.call(tool, r1, arguments)
        assert r.status_code == 200, (arguments[:80], r.text)
        assert r.headers["X-Sandbox-Outcome"] == "model_error"
        assert r.headers["X-Sandbox-Reason"] == "invalid_arguments"
        assert r.json()["output"].startswith(f"{tool}: ")
    trajectory = stack.http.get(f"/v1/rollouts/{r1}/trajectory").json()["calls"]
    assert len(trajectory) == len(cases)
    # The service keeps serving: the same rollout still works.
    assert stack.shell(r1, "echo alive").json()["output"] == "alive\n"


def test_ops_endpoints_need_no_token(stack: Stack) -> None:
    base = stack.base + "/"
    health = httpx.get(f"{base}healthz").json()
    assert health["status"] == "ok" and isinstance(health["api_version"], int)  # the SDK checks the version
    ready = httpx.get(f"{base}readyz").json()
    assert ready["ready"] is True
    assert ready["checks"]["hosts"]["testhost"]["engine_healthy"] is True
    assert "sandbox_tool_calls_total" in httpx.get(f"{base}metrics").text
