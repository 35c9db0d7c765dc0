"""The OpenAPI document is the API clients and fuzzers read: every route's answers, errors and bodies in it,
and the response models leave the JSON the routes send unchanged."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, TypeAdapter, ValidationError

from sandbox.api.errors import install_error_handlers
from sandbox.api.routes import environments, grade, ops, rollouts, tools, trainer
from sandbox.api.schemas import (
    EnvironmentList,
    EnvironmentView,
    ErrorResponse,
    GradeResponse,
    Health,
    PreProvisionResult,
    Readiness,
    RolloutView,
    ToolCallOutput,
    TrajectoryView,
)

ROUTERS = (ops.router, tools.router, rollouts.router, environments.router, grade.router, trainer.router)
ERROR_REF = "#/components/schemas/ErrorResponse"
# Error statuses each /v1 route must document beyond 401 and 503, which they all must.
ERRORS = {
    ("post", "/v1/tools/{tool}"): {400, 404, 409, 413},
    ("post", "/v1/rollouts/{rollout_id}/tools/{tool}"): {400, 404, 409, 413},
    ("post", "/v1/grade"): {400, 404, 413},
    ("post", "/v1/rollouts"): {400, 404},
    ("get", "/v1/rollouts/{rollout_id}"): {404},
    ("delete", "/v1/rollouts/{rollout_id}"): {404},
    ("get", "/v1/rollouts/{rollout_id}/trajectory"): {404},
    ("put", "/v1/environments/{name}"): {400, 403},
    ("get", "/v1/environments/{name}"): {404},
    ("get", "/v1/environments"): set(),
    ("delete", "/v1/environments/{name}"): {404},
    ("post", "/v1/rollouts/{rollout_id}/fork"): {400, 404, 409, 413},
    ("post", "/v1/rollouts/{rollout_id}/exec"): {400, 404, 409, 413},
    ("put", "/v1/rollouts/{rollout_id}/files"): {400, 403, 404, 408, 409, 413},
    ("get", "/v1/rollouts/{rollout_id}/files"): {400, 403, 404, 408, 409, 413},
}
BINARY_ROUTES = {("get", "/v1/rollouts/{rollout_id}/files")}  # a file's bytes or a tar stream, not JSON
HAND_READ_BODIES = {
    ("post", "/v1/tools/{tool}"): {"trace_id", "call_id", "id", "arguments", "item"},
    ("post", "/v1/rollouts/{rollout_id}/tools/{tool}"): {"call_id", "id", "arguments", "item"},
    ("post", "/v1/grade"): {"sample", "item", "trace_id"},
    ("post", "/v1/rollouts/{rollout_id}/fork"): {"count", "rollout_ids"},
    ("post", "/v1/rollouts/{rollout_id}/exec"): {"command", "argv", "cwd", "env", "timeout", "request_id", "source"},
}


def bare_app() -> FastAPI:
    app = FastAPI(title="Rollout sandbox service", version="test")
    for router in ROUTERS:
        app.include_router(router)
    return app


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return bare_app().openapi()


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in doc["paths"].items() for method, op in item.items()]


def test_every_route_documents_its_success_body(document: dict[str, Any]) -> None:
    ops_ = operations(document)
    assert {(m, p) for m, p, _ in ops_} >= set(ERRORS) | {("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics")}
    for method, path, op in ops_:
        status = "202" if (method, path) == ("post", "/v1/rollouts") else "200"
        content = op["responses"][status]["content"]
        if path == "/metrics":
            (media_type,) = content
            assert media_type.startswith("text/plain") and content[media_type]["schema"] == {"type": "string"}
        elif (method, path) in BINARY_ROUTES:
            assert set(content) == {"application/octet-stream", "application/x-tar"}, (method, path)
            assert all(c["schema"] == {"type": "string", "format": "binary"} for c in content.values())
        else:
            schema = content["application/json"]["schema"]
            assert schema.get("$ref", "").startswith("#/components/schemas/"), (method, path, schema)


def test_every_v1_route_documents_its_errors_in_the_error_shape(document: dict[str, Any]) -> None:
    for method, path, op in operations(document):
        responses = op["responses"]
        assert "422" not in responses, f"{method} {path}: validation errors are answered 400, never 422"
        if not path.startswith("/v1/"):
            continue
        expected = {str(s) for s in ERRORS[(method, path)] | {401, 503}} | {"default"}
        assert expected <= set(responses), (method, path, sorted(responses))
        for status in expected:
            assert responses[status]["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}, (path, status)
        assert "Retry-After" in responses["503"]["headers"]
    error = document["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"code", "message", "retryable"}


def test_tool_calls_document_their_diagnostic_headers(document: dict[str, Any]) -> None:
    for path in ("/v1/tools/{tool}", "/v1/rollouts/{rollout_id}/tools/{tool}"):
        headers = document["paths"][path]["post"]["responses"]["200"]["headers"]
        assert set(headers) == {"X-Sandbox-Outcome", "X-Sandbox-Reason", "X-Sandbox-Exit-Code", "X-Sandbox-Duration-Ms"}
        assert headers["X-Sandbox-Outcome"]["schema"]["enum"] == ["ok", "model_error"]
    params = document["paths"]["/v1/tools/{tool}"]["post"]["parameters"]
    assert {p["name"]: p["in"] for p in params} == {"tool": "path", "X-Rollout-Id": "header"}


def test_bodies_read_by_hand_are_documented(document: dict[str, Any]) -> None:
    for (method, path), fields in HAND_READ_BODIES.items():
        body = document["paths"][path][method]["requestBody"]
        assert body["required"] is True
        schema = body["content"]["application/json"]["schema"]
        assert fields <= set(schema["properties"]), (path, sorted(schema["properties"]))
        # Inlined whole: a "#/$defs/..." reference would resolve against the OpenAPI document, not the schema.
        assert "$defs" not in json.dumps(schema)
    arguments = document["paths"]["/v1/tools/{tool}"]["post"]["requestBody"]["content"]["application/json"]
    kinds = {alt.get("type") for alt in arguments["schema"]["properties"]["arguments"]["anyOf"]}
    assert {"string", "object"} <= kinds
    grade_body = document["paths"]["/v1/grade"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert grade_body["required"] == ["trace_id"]


def test_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(json.loads(json.dumps(document)))


# --- the models against bodies shaped like what the routes send ---------------------------------------------

ROLLOUT = {
    "rollout_id": "trace_7f0c",
    "state": "ready",
    "host": "host-a",
    "container_id": "3f2a9c",
    "environment": "default",
    "item": {"environment": "default", "reference_files": ["src/a.py"]},
    "created_at": 1767225600.25,
    "ready_at": 1767225601.5,
    "last_used_at": 1767225605.75,
    "ended_at": None,
    "end_reason": None,
    "calls": {"total": 3, "ok": 2, "model_error": 1, "infra_error": 0},
    "infra_tainted": False,
    "taint_reason": None,
    "provision_error": None,
}
ENDED_ROLLOUT = {
    **ROLLOUT,
    "state": "lost",
    "host": None,
    "container_id": None,
    "environment": "",
    "item": None,
    "ready_at": None,
    "ended_at": 1767225700.0,
    "end_reason": "the rollout's sandbox was lost",
    "calls": {"total": 1, "ok": 0, "model_error": 0, "infra_error": 1},
    "infra_tainted": True,
    "taint_reason": "sandbox_lost",
}
ENTRY = {
    "index": 0,
    "call_id": "call_abc",
    "id": "fc_123",
    "tool": "shell",
    "arguments": '{"command": "ls"}',
    "outcome": "ok",
    "reason": "none",
    "exit_code": 0,
    "duration_ms": 12.5,
    "output_bytes": 20,
    "truncated_bytes": 0,
    "started_at": 1767225602.0,
    "finished_at": 1767225602.0125,
    "output": "README.md\nsrc\n",
}
INFRA_ENTRY = {
    **ENTRY,
    "index": 1,
    "id": None,
    "arguments": {"path": "src/a.py"},
    "tool": "read_file",
    "outcome": "infra_error",
    "reason": "sandbox_lost",
    "exit_code": None,
    "duration_ms": 0.0,
    "output": "",
    "error": "the rollout's container is gone",
}
TRAJECTORY = {"rollout_id": "trace_7f0c", "state": "ready", "infra_tainted": False, "calls": [ENTRY, INFRA_ENTRY]}
ENVIRONMENT = {
    "name": "repo",
    "workspace": {"type": "git", "path": "/srv/repos/repo", "commit": "a" * 40},
    "image": None,
    "workdir": "/workspace",
    "limits": {"memory_bytes": 2 * 1024**3, "cpus": 1.5, "pids": None},
    "shell_timeout_s": 30.0,
    "output_cap_bytes": None,
    "max_tool_calls": 50,
    "warm_pool_size": 2,
    "commit_sha": "a" * 40,
    "definition_digest": "d" * 64,
    "file_count": 120,
    "registered_at": 1767225600.5,
    "preparation": {
        "host-a": {"state": "ready", "image": "sbx-env-repo:dddd", "started_at": 1767225601.0, "duration_s": 4.25},
        "host-b": {"state": "preparing", "image": "sbx-env-repo:dddd", "started_at": 1767225603.0},
        "host-c": {"state": "failed", "image": "sbx-env-repo:dddd", "started_at": 1.0, "duration_s": 0.5, "error": "x"},
    },
    "pool": {"host-a": {"available": 2, "target": 2}},
}
DEFAULT_ENVIRONMENT = {
    **ENVIRONMENT,
    "name": "default",
    "workspace": None,
    "limits": {"memory_bytes": None, "cpus": None, "pids": None},
    "shell_timeout_s": None,
    "max_tool_calls": None,
    "warm_pool_size": 0,
    "commit_sha": None,
    "definition_digest": "default",
    "file_count": 0,
    "registered_at": None,
    "preparation": {},
}
FILE_F1 = {
    "score": 0.6666666666666666,
    "grader": "file_f1",
    "raw_score": 0.6666666666666666,
    "tool_calls": 4,
    "precision": 0.5,
    "recall": 1.0,
    "beta": 1.0,
    "selected": ["src/a.py", "src/b.py"],
    "matched": ["src/a.py"],
    "hallucinated": ["src/b.py"],
    "missed": [],
}
NUMERIC = {
    "score": 0.5,
    "grader": "numeric",
    "raw_score": 0.5,
    "tool_calls": 0,
    "parsed": 12.3,
    "expected": 12.34,
    "relative_error": 0.0032414910858995,
    "reason": "rounding-level miss (the reference rounds to the answer)",
}
CUSTOM = {"score": 1.0, "grader": "graders.mine:score", "raw_score": 1.0, "tool_calls": 2}
HOST = {
    "status": "up",
    "reason": None,
    "engine_healthy": True,
    "heartbeat_age_s": 1.2,
    "containers": 3,
    "capacity": None,
}
SAMPLES: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (RolloutView, ROLLOUT),
    (RolloutView, ENDED_ROLLOUT),
    (TrajectoryView, TRAJECTORY),
    (TrajectoryView, {"rollout_id": "gone", "state": None, "infra_tainted": False, "calls": [ENTRY]}),
    (EnvironmentView, ENVIRONMENT),
    (EnvironmentList, {"environments": [DEFAULT_ENVIRONMENT, ENVIRONMENT]}),
    (GradeResponse, FILE_F1),
    (GradeResponse, NUMERIC),
    (GradeResponse, {**NUMERIC, "parsed": None, "relative_error": None, "reason": "no number in the answer"}),
    (GradeResponse, CUSTOM),
    (GradeResponse, {**CUSTOM, "rubric": {"style": 0.5, "notes": []}}),  # a grader's field we do not know
    (
        GradeResponse,
        {
            "score": 1.0,
            "grader": "tests",
            "raw_score": 1.0,
            "tool_calls": 2,
            "tests": {
                "passed": ["t.py::a"],
                "failed": [],
                "exit_code": 0,
                "timed_out": False,
                "duration_s": 0.4,
                "output_tail": "1 passed",
                "reason": "passed",
            },
        },
    ),
    (
        GradeResponse,
        {
            "score": 0.0,
            "grader": ["tests", "numeric"],
            "raw_score": 0.0,
            "tool_calls": 1,
            "graders": {"tests": {"score": 0.0}, "numeric": {"score": 1.0, "parsed": 5.0}},
            "failed_required": "tests",
        },
    ),
    (Health, {"status": "ok"}),
    (
        Readiness,
        {
            "ready": True,
            "checks": {
                "store": "ok",
                "broker": "ok",
                "hosts": {"host-a": HOST},
                "hosts_taking_new_rollouts": ["host-a"],
            },
        },
    ),
    (
        Readiness,
        {
            "ready": False,
            "checks": {
                "store": "unavailable: Redis does not answer",
                "broker": "ok",
                "hosts": {"host-b": {**HOST, "status": "down", "reason": "heartbeat_lost", "engine_healthy": False}},
                "hosts_taking_new_rollouts": [],
            },
        },
    ),
    (PreProvisionResult, {"rollouts": [{"rollout_id": "r1", "state": "provisioning", "queued": True}]}),
    (ToolCallOutput, {"type": "function_call_output", "call_id": "call_abc", "id": None, "output": "[exit code 2]"}),
    (ErrorResponse, {"error": {"code": "sandbox_lost", "message": "the container is gone", "retryable": False}}),
]


@pytest.mark.parametrize(("model", "body"), SAMPLES, ids=[f"{m.__name__}-{i}" for i, (m, _) in enumerate(SAMPLES)])
def test_models_accept_the_bodies_and_give_them_back_unchanged(model: type[BaseModel], body: dict[str, Any]) -> None:
    """What a route serializes through its model must come out as the route built it: same keys, order, values."""
    dumped = model.model_validate(body).model_dump_json(exclude_unset=True)
    assert dumped == TypeAdapter(dict[str, Any]).dump_json(body).decode()


def test_models_refuse_bodies_that_break_the_contract() -> None:
    with pytest.raises(ValidationError):
        RolloutView.model_validate({k: v for k, v in ROLLOUT.items() if k != "infra_tainted"})
    with pytest.raises(ValidationError):
        GradeResponse.model_validate({**CUSTOM, "score": 1.5})
    with pytest.raises(ValidationError):
        ToolCallOutput.model_validate({"type": "function_call", "call_id": "c", "id": None, "output": ""})


# --- the routes send their dicts unchanged --------------------------------------------------------------------


def stub_app(trajectory: dict[str, Any], environment: dict[str, Any], graded: dict[str, Any]) -> FastAPI:
    """The real routers over a stub context: what the service layer returns, the route must send as is."""
    calls = trajectory["calls"]
    app = bare_app()
    app.state.ctx = SimpleNamespace(
        settings=SimpleNamespace(token_list=["token"]),
        limiter=anyio.CapacityLimiter(4),
        rollouts=SimpleNamespace(
            trajectory=lambda rid: (SimpleNamespace(state=trajectory["state"], tainted=False), calls),
        ),
        registry=SimpleNamespace(names=lambda: ["repo"], get=lambda name: name, describe=lambda env: environment),
        grading=SimpleNamespace(grade=lambda body: graded, step=lambda rid: None),
    )
    install_error_handlers(app)
    return app


def send(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
            return await client.request(method, path, headers={"Authorization": "Bearer token"}, **kwargs)

    return anyio.run(go)


def test_routes_send_optional_fields_only_when_the_service_set_them() -> None:
    stored = [
        {
            "call_id": "c1",
            "item_id": "fc_1",
            "tool": "shell",
            "arguments": "{}",
            "outcome": "ok",
            "reason": "none",
            "output": "",
            "exit_code": 0,
            "duration_ms": 1.5,
            "output_bytes": 0,
            "truncated_bytes": 0,
            "started_at": 1.0,
            "finished_at": 2.0,
            "extra": {},
        },
        {
            "call_id": "c2",
            "item_id": None,
            "tool": "shell",
            "arguments": "{}",
            "outcome": "infra_error",
            "reason": "sandbox_lost",
            "output": "",
            "exit_code": None,
            "duration_ms": 0.0,
            "output_bytes": 0,
            "truncated_bytes": 0,
            "started_at": 3.0,
            "finished_at": 3.0,
            "extra": {"message": "gone"},
        },
    ]
    app = stub_app({"state": "ready", "calls": stored}, ENVIRONMENT, NUMERIC)

    entries = send(app, "GET", "/v1/rollouts/r1/trajectory").json()["calls"]
    assert "error" not in entries[0] and entries[1]["error"] == "gone"
    prep = send(app, "GET", "/v1/environments/repo").json()["preparation"]
    assert "error" not in prep["host-a"] and "duration_s" not in prep["host-b"] and prep["host-c"]["error"] == "x"
    assert send(app, "GET", "/v1/environments").json() == {"environments": [ENVIRONMENT]}
    graded = send(app, "POST", "/v1/grade", json={"trace_id": "r1"})
    assert graded.content == TypeAdapter(dict[str, Any]).dump_json(NUMERIC)  # no file_f1 fields as nulls
