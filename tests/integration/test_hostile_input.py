"""Hostile input over real HTTP against the real stack (issue 13, items 6 and 8): every attack
that answered 500, or 503 as if the infrastructure had failed, now gets a clear 4xx in the
error shape, or a 200 model error the model can learn from, and the service keeps serving."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.stack import Stack

pytestmark = pytest.mark.integration
JSON = {"Content-Type": "application/json"}


def rid(tag: str = "hostile") -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


def error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, str(r.json()["error"]["code"])


def post_raw(stack: Stack, path: str, raw: bytes) -> httpx.Response:
    return stack.http.post(path, content=raw, headers=JSON)


def tool_body(rollout: str, arguments: str = '{"command": "echo hi"}', **fields: Any) -> dict[str, Any]:
    return {"type": "function_call", "id": "fc_1", "call_id": f"call_{uuid.uuid4().hex}", "name": "shell",
            "arguments": arguments, "trace_id": rollout, **fields}  # fmt: skip


def nothing_recorded(stack: Stack, rollout: str) -> bool:
    return stack.http.get(f"/v1/rollouts/{rollout}").status_code == 404 and not stack.containers_of(rollout)


def test_deep_nesting_and_huge_integers_in_a_body_are_400_on_every_hand_read_route(stack: Stack) -> None:
    parent = rid("parent")
    assert stack.shell(parent, "echo up").status_code == 200
    target = rid()
    routes = ["/v1/tools/shell", f"/v1/rollouts/{target}/tools/shell", "/v1/grade", f"/v1/rollouts/{parent}/fork"]
    deep_but_parsable = json.dumps(tool_body(target, item={"a": json.loads("[" * 200 + "]" * 200)})).encode()
    bodies = {
        "100k lists": b"[" * 100_000,
        "100k objects": b'{"a":' * 100_000,
        "200 levels": deep_but_parsable,
        "5000 digits": b'{"trace_id": "' + target.encode() + b'", "count": ' + b"9" * 5000 + b"}",
    }
    for route in routes:
        for name, raw in bodies.items():
            r = post_raw(stack, route, raw)
            assert error(r) == (400, "bad_request"), (route, name, r.text[:200])
            assert r.json()["error"]["retryable"] is False
    assert "4300 digits" in post_raw(stack, routes[0], bodies["5000 digits"]).json()["error"]["message"]
    assert nothing_recorded(stack, target)
    assert stack.shell(parent, "echo still serving").json()["output"] == "still serving\n"


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_in_the_body_are_400_before_the_command_runs(stack: Stack, token: str) -> None:
    target = rid()
    raw = json.dumps(tool_body(target, '{"command": "touch /tmp/ran"}', id="ID")).replace('"ID"', token).encode()
    assert token.encode() in raw
    r = post_raw(stack, "/v1/tools/shell", raw)
    assert error(r) == (400, "bad_request"), r.text
    assert nothing_recorded(stack, target)  # no record, no trajectory, no container: nothing ran
    grade = post_raw(stack, "/v1/grade", b'{"trace_id": "x", "item": {"beta": ' + token.encode() + b"}}")
    assert error(grade) == (400, "bad_request")


def test_what_the_model_wrote_badly_in_arguments_is_a_200_model_error_never_a_503(stack: Stack) -> None:
    r1 = rid()
    assert stack.shell(r1, "printf 'one\\ntwo\\n' > f.txt").status_code == 200
    cases = [
        ("shell", '{"command": "echo hi", "timeout": NaN}', 'shell: "timeout" must be a finite number of seconds'),
        ("shell", '{"command": "echo hi", "timeout": Infinity}', 'shell: "timeout" must be a finite number of seconds'),
        ("shell", '{"command": "echo hi", "timeout": 1e999}', 'shell: "timeout" must be a finite number of seconds'),
        ("shell", '{"command": "echo \\ud800"}', "shell: the command is text that is not valid Unicode"),
        ("read_file", '{"path": "f\\udc00.txt"}', "read_file: the path is text that is not valid Unicode"),
        ("read_file", '{"path": "f.txt", "start_line": ' + "1" * 5000 + "}", "read_file: arguments hold an integer"),
        ("shell", "[" * 100_000, "shell: arguments are nested too deeply"),
    ]
    for tool, arguments, said in cases:
        r = stack.call(tool, r1, arguments)
        assert r.status_code == 200, (arguments[:60], r.text[:300])
        assert (r.headers["X-Sandbox-Outcome"], r.headers["X-Sandbox-Reason"]) == ("model_error", "invalid_arguments")
        assert r.json()["output"].startswith(said), r.json()["output"]
    # The same surrogate sent inside an arguments object (not a string): told, and recorded escaped.
    raw = json.dumps(tool_body(r1, "ARGS")).replace('"ARGS"', '{"command": "echo \\ud800"}').encode()
    r = post_raw(stack, "/v1/tools/shell", raw)
    assert (r.status_code, r.headers["X-Sandbox-Reason"]) == (200, "invalid_arguments")
    # A line number past any file is a plain answer, not a crash.
    huge = stack.call("read_file", r1, {"path": "f.txt", "start_line": 10**30})
    assert (huge.status_code, huge.headers["X-Sandbox-Outcome"]) == (200, "model_error"), huge.text
    assert "f.txt has 2 lines" in huge.json()["output"]
    whole = stack.call("read_file", r1, {"path": "f.txt", "start_line": 1, "end_line": 10**30})
    assert (whole.status_code, whole.headers["X-Sandbox-Outcome"]) == (200, "ok")
    assert "two" in whole.json()["output"]
    trajectory = stack.http.get(f"/v1/rollouts/{r1}/trajectory")
    assert trajectory.status_code == 200  # every recorded call, including the surrogate, encodes
    assert len(trajectory.json()["calls"]) == 1 + len(cases) + 3
    assert trajectory.json()["calls"][-3]["arguments"] == {"command": "echo \\ud800"}
    rec = stack.http.get(f"/v1/rollouts/{r1}").json()
    assert not rec["infra_tainted"] and rec["calls"]["infra_error"] == 0
    assert stack.shell(r1, "echo alive").json()["output"] == "alive\n"


def test_a_dataset_row_that_cannot_be_stored_or_names_no_environment_is_400(stack: Stack) -> None:
    rows = {
        "surrogate value": b'{"prompt": "x\\ud800"}',
        "surrogate key": b'{"\\udfff": 1}',
        "environment 42": b'{"environment": 42}',
        "environment list": b'{"environment": ["default"]}',
    }
    for name, row in rows.items():
        target = rid()
        raw = json.dumps(tool_body(target, '{"command": "touch /tmp/ran"}', item="ROW")).replace('"ROW"', row.decode())
        r = post_raw(stack, "/v1/tools/shell", raw.encode())
        assert error(r) == (400, "bad_request"), (name, r.text)
        assert nothing_recorded(stack, target)
        pre = post_raw(
            stack, "/v1/rollouts", b'{"rollouts": [{"rollout_id": "' + target.encode() + b'", "item": ' + row + b"}]}"
        )
        assert error(pre) == (400, "bad_request"), (name, pre.text)
        assert nothing_recorded(stack, target)
    r = stack.shell(rid(), "echo hi", item={"environment": 42})
    assert "item.environment must be a string naming an environment" in r.json()["error"]["message"]
    # Bare NaN in a pre-provisioned row (that route's body is parsed by the framework, which reads NaN).
    pre = post_raw(
        stack, "/v1/rollouts", b'{"rollouts": [{"rollout_id": "' + rid().encode() + b'", "item": {"w": NaN}}]}'
    )
    assert error(pre) == (400, "bad_request")
    # The grader gets the same row: refused the same way, before looking for the rollout.
    graded = stack.http.post("/v1/grade", json={"trace_id": "never-ran", "item": {"environment": 42}, "sample": {}})
    assert error(graded) == (400, "invalid_grade_request")
    # The model's answer is graded as written: a lone surrogate in it is a wrong path, not a 500.
    graded_rollout = rid()
    assert stack.shell(graded_rollout, "echo hi").status_code == 200
    raw = json.dumps({"trace_id": graded_rollout, "item": {"reference_files": ["src/a.py"]}, "sample": {}}).encode()
    raw = raw.replace(b'"sample": {}', b'"sample": {"output_text": "src/a.py\\nsrc/\\ud800.py"}')
    graded = post_raw(stack, "/v1/grade", raw)
    assert graded.status_code == 200, graded.text
    assert (graded.json()["matched"], graded.json()["precision"]) == (["src/a.py"], 0.5)
    # An id the answer would echo must be encodable too.
    target = rid()
    raw = json.dumps(tool_body(target, id="ID")).replace('"ID"', '"fc_\\ud800"').encode()
    assert error(post_raw(stack, "/v1/tools/shell", raw)) == (400, "bad_request")
    assert nothing_recorded(stack, target)


def test_a_rollout_id_with_a_slash_is_refused_up_front(stack: Stack) -> None:
    bad = f"{rid()}/child"
    r = stack.shell(bad, "echo hi")
    assert error(r) == (400, "invalid_rollout_id")
    assert "may not contain '/'" in r.json()["error"]["message"]
    r = stack.http.post("/v1/tools/shell", json=tool_body(""), headers={"X-Rollout-Id": bad})
    assert error(r) == (400, "invalid_rollout_id")
    assert error(stack.http.post("/v1/rollouts", json={"rollouts": [{"rollout_id": bad}]})) == (
        400,
        "invalid_rollout_id",
    )
    assert not stack.containers_of(bad)
    parent = rid("parent")
    assert stack.shell(parent, "echo up").status_code == 200
    fork = stack.http.post(f"/v1/rollouts/{parent}/fork", json={"rollout_ids": [bad]})
    assert error(fork) == (400, "invalid_rollout_id")


def test_a_call_id_reused_for_another_tool_is_409_not_the_other_tools_output(stack: Stack) -> None:
    r1 = rid()
    first = stack.shell(r1, "echo secret-of-the-shell-call", call_id="c1")
    assert first.json()["output"] == "secret-of-the-shell-call\n"
    other = stack.call("read_file", r1, {"path": "/etc/hostname"}, call_id="c1")
    assert error(other) == (409, "call_id_conflict")
    assert other.json()["error"]["retryable"] is False
    assert "secret" not in other.text and "already used for a shell call" in other.json()["error"]["message"]
    again = stack.shell(r1, "echo secret-of-the-shell-call", call_id="c1")
    assert again.json()["output"] == first.json()["output"]  # the same tool still replays
    calls = stack.http.get(f"/v1/rollouts/{r1}/trajectory").json()["calls"]
    assert [(c["call_id"], c["tool"]) for c in calls] == [("c1", "shell")]


def test_an_environment_can_be_deleted(stack: Stack) -> None:
    workspace = stack.workspace_root / f"del-{uuid.uuid4().hex[:6]}"
    workspace.mkdir()
    (workspace / "a.txt").write_text("a\n")
    name, twin = f"del-{uuid.uuid4().hex[:6]}", f"twin-{uuid.uuid4().hex[:6]}"
    spec = {"workspace": {"type": "dir", "path": str(workspace)}}
    registered = stack.put_environment(name, spec).json()
    assert stack.put_environment(twin, spec).status_code == 200  # same content: shares the file list
    digest = registered["definition_digest"]
    running = rid("del")
    assert stack.shell(running, "cat a.txt", item={"environment": name}).json()["output"] == "a\n"

    r = stack.http.delete(f"/v1/environments/{name}")
    assert r.status_code == 200, r.text
    assert r.json() == {"name": name, "deleted_definition_digest": digest,
                        "registered_at": registered["registered_at"], "now": "unknown"}  # fmt: skip
    assert error(stack.http.get(f"/v1/environments/{name}")) == (404, "unknown_environment")
    assert name not in [e["name"] for e in stack.http.get("/v1/environments").json()["environments"]]
    fresh = rid("del")
    assert error(stack.shell(fresh, "echo hi", item={"environment": name})) == (404, "unknown_environment")
    pre = stack.http.post("/v1/rollouts", json={"rollouts": [{"rollout_id": fresh, "item": {"environment": name}}]})
    assert error(pre) == (404, "unknown_environment")
    assert nothing_recorded(stack, fresh)
    assert error(stack.http.delete(f"/v1/environments/{name}")) == (404, "unknown_environment")  # second delete
    assert error(stack.http.delete("/v1/environments/never-registered")) == (404, "unknown_environment")
    # The rollout already using it keeps its container; the twin keeps its file list and serves.
    (container,) = stack.containers_of(running)
    container.reload()
    assert container.status == "running"
    # ... and goes on: its calls, a fork of it and its grade still find its (retired) definition.
    assert stack.shell(running, "cat a.txt").json()["output"] == "a\n"
    assert stack.http.post(f"/v1/rollouts/{running}/fork", json={"count": 1}).status_code == 200
    graded = stack.http.post(
        "/v1/grade",
        json={
            "trace_id": running,
            "sample": {"output_text": "a.txt"},
            "item": {"environment": name, "reference_files": ["a.txt"]},
        },
    )
    assert graded.status_code == 200 and graded.json()["score"] == 1.0, graded.text
    assert stack.redis.sismember(f"{stack.prefix}:envfiles:{digest}", "a.txt")
    assert stack.shell(rid("twin"), "cat a.txt", item={"environment": twin}).json()["output"] == "a\n"

    # `default`: deleting a registered one brings back the built-in default.
    assert stack.put_environment("default", {"max_tool_calls": 1000}).status_code == 200
    r = stack.http.delete("/v1/environments/default")
    assert (r.status_code, r.json()["now"]) == (200, "builtin_default")
    builtin = stack.http.get("/v1/environments/default").json()
    assert (builtin["registered_at"], builtin["max_tool_calls"]) == (None, None)
    assert error(stack.http.delete("/v1/environments/default")) == (404, "unknown_environment")


@pytest.mark.parametrize("field", ["shell_timeout_s", "cpus"])
@pytest.mark.parametrize("token", ["Infinity", "NaN", "1e999"])
def test_a_definition_with_infinity_or_nan_is_400_not_stored_as_null(stack: Stack, field: str, token: str) -> None:
    name = f"inf-{uuid.uuid4().hex[:6]}"
    raw = f'{{"{field}": {token}}}' if field == "shell_timeout_s" else f'{{"limits": {{"{field}": {token}}}}}'
    r = stack.http.put(f"/v1/environments/{name}", content=raw.encode(), headers=JSON)
    assert error(r) == (400, "bad_request"), r.text
    assert "finite" in r.json()["error"]["message"]
    assert stack.http.get(f"/v1/environments/{name}").status_code == 404
