"""Hostile and sloppy input, in the pure parts: a client's malformed request is a BadRequest (400),
what the model wrote in `arguments` is a sentence it can learn from, never an exception that
would answer 500 or look like infra (503). Over HTTP: tests/integration/test_hostile_input.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from sandbox.api.grading_service import _float_or
from sandbox.domain.calls import (
    MAX_JSON_DEPTH,
    ReadFileArgs,
    ShellArgs,
    check_item,
    check_rollout_id,
    decode_arguments,
    parse_json_body,
    parse_tool_call,
    validate_read_file,
    validate_shell,
)
from sandbox.domain.environment import Environment, EnvironmentSpec
from sandbox.domain.errors import (
    BadRequest,
    CallIdConflict,
    InvalidGradeRequest,
    InvalidRolloutId,
    UnknownEnvironment,
)
from sandbox.domain.rollout import environment_of
from sandbox.grading import file_f1
from sandbox.grading.files import _f_beta
from sandbox.store import Store
from tests.fakes.host import World, build_world, drop_world
from tests.stack import RedisServer

SHELL_LIMITS = {"default_timeout": 30.0, "max_timeout": 300.0, "max_command_bytes": 65536}


def shell(arguments: str) -> ShellArgs | str:
    """The model's JSON-encoded arguments, decoded and checked as the tool service does."""
    decoded, error = decode_arguments(arguments)
    assert decoded is not None, error
    return validate_shell(decoded, **SHELL_LIMITS)


# --- 1, 2: the request body -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000, b'{"a":' * 100_000, b"[" * 900 + b"]" * 900, b"[" * (MAX_JSON_DEPTH + 1) + b"]" * 65],
    ids=["100k-lists", "100k-objects", "900-deep-parses-but-breaks-encoders", "one-past-the-limit"],
)
def test_deeply_nested_bodies_are_bad_requests(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="nested deeper than 64 levels") as caught:
        parse_json_body(raw)
    assert caught.value.http_status == 400


def test_nesting_up_to_the_limit_is_read() -> None:
    depth = MAX_JSON_DEPTH
    assert parse_json_body(b"[" * depth + b"]" * depth) is not None


def test_integers_past_4300_digits_are_bad_requests_with_a_plain_reason() -> None:
    raw = b'{"trace_id": "r", "id": ' + b"7" * 5000 + b"}"
    with pytest.raises(BadRequest, match="an integer longer than 4300 digits") as caught:
        parse_json_body(raw)
    assert "set_int_max_str_digits" not in caught.value.message


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
def test_non_finite_numbers_are_refused_when_the_body_is_read(token: str) -> None:
    raw = b'{"trace_id": "r", "call_id": "c", "id": ' + token.encode() + b', "arguments": "{}"}'
    with pytest.raises(BadRequest) as caught:
        parse_json_body(raw)
    assert caught.value.http_status == 400


def test_an_ordinary_body_reads_as_before() -> None:
    body = {"trace_id": "r", "id": [1, 2.5, None, {"x": "é"}], "arguments": '{"command": "ls"}'}
    assert parse_json_body(json.dumps(body).encode()) == body


def test_an_id_that_cannot_be_echoed_is_refused_before_anything_runs() -> None:
    body = parse_json_body(b'{"trace_id": "r", "id": "fc_\\ud800", "arguments": "{}"}')
    with pytest.raises(BadRequest, match="not valid Unicode"):
        parse_tool_call("shell", body)


# --- 3: what the model wrote in `arguments` -------------------------------------------------------------


@pytest.mark.parametrize("timeout", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_non_finite_timeout_is_the_models_error(timeout: str) -> None:
    assert shell('{"command": "echo", "timeout": ' + timeout + "}") == (
        'shell: "timeout" must be a finite number of seconds'
    )


def test_a_huge_integer_timeout_is_capped_not_a_crash() -> None:
    assert shell('{"command": "echo", "timeout": ' + "9" * 4000 + "}") == ShellArgs("echo", 300.0)


@pytest.mark.parametrize(
    "arguments",
    ['{"command": "echo \\ud800"}', '{"command": "echo \\udfff tail"}', '{"cmd": ["echo", "\\ud83d"]}'],
    ids=["high", "low", "argv-list"],
)
def test_a_lone_surrogate_in_the_command_is_the_models_error(arguments: str) -> None:
    problem = shell(arguments)
    assert isinstance(problem, str)
    assert problem.startswith("shell: the command is text that is not valid Unicode")


def test_a_surrogate_pair_is_ordinary_text() -> None:
    assert shell('{"command": "echo \\ud83d\\ude00"}') == ShellArgs("echo \U0001f600", 30.0)


def test_a_lone_surrogate_in_a_path_is_the_models_error() -> None:
    decoded, _ = decode_arguments('{"path": "src/\\udc80.py"}')
    assert decoded is not None
    problem = validate_read_file(decoded)
    assert isinstance(problem, str)
    assert problem.startswith("read_file: the path is text that is not valid Unicode")


def test_huge_line_numbers_are_valid_arguments() -> None:
    assert validate_read_file({"path": "a", "start_line": 10**30}) == ReadFileArgs("a", 10**30, None)


@pytest.mark.parametrize(
    "arguments, error",
    [
        ("[" * 100_000, "arguments are nested too deeply to read; send a flat JSON object"),
        ('{"path": "a", "start_line": ' + "1" * 5000 + "}", "arguments hold an integer longer than 4300 digits"),
    ],
    ids=["deep", "huge-int"],
)
def test_arguments_that_break_the_parser_are_explained_not_raised(arguments: str, error: str) -> None:
    assert decode_arguments(arguments) == (None, error)


def test_arguments_sent_as_an_object_with_a_lone_surrogate_are_recorded_escaped() -> None:
    body = parse_json_body(b'{"trace_id": "r", "arguments": {"command": "echo \\ud800", "note": "x\\udc00"}}')
    call = parse_tool_call("shell", body)
    assert call.arguments is not None
    assert isinstance(validate_shell(call.arguments, **SHELL_LIMITS), str)  # the model is told
    assert call.raw_arguments == {"command": "echo \\ud800", "note": "x\\udc00"}  # the trajectory can encode it
    json.dumps(call.raw_arguments, ensure_ascii=False).encode("utf-8")


# --- 4: the dataset row ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item, message",
    [
        ({"prompt": "x\ud800"}, "not valid Unicode"),
        ({"\udfff": 1}, "not valid Unicode"),
        ({"rows": [{"deep": ["\ud800"]}]}, "not valid Unicode"),
        ({"score": float("nan")}, "not finite"),
        ({"score": [float("inf")]}, "not finite"),
        ({"environment": 42}, "item.environment must be a string naming an environment, not a number"),
        ({"environment": ["repo"]}, "item.environment must be a string naming an environment, not a list"),
        ({"environment": {"name": "repo"}}, "item.environment must be a string naming an environment, not an object"),
        ({"environment": True}, "not a boolean"),
        ("a row", "item must be a JSON object"),
    ],
)
def test_a_row_that_cannot_be_stored_or_names_no_environment_is_a_bad_request(item: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        check_item(item)
    with pytest.raises(BadRequest, match=message):
        parse_tool_call("shell", {"trace_id": "r", "item": item})


def test_a_row_without_an_environment_still_means_default() -> None:
    assert [environment_of(i) for i in (None, {}, {"environment": None}, {"environment": ""})] == ["default"] * 4
    assert environment_of({"environment": "repo"}) == "repo"


# --- 5: rollout ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rid", ["a/b", "/", "trace/../x", "x/"])
def test_a_rollout_id_with_a_slash_is_refused(rid: str) -> None:
    with pytest.raises(InvalidRolloutId, match="ids may not contain '/'"):
        check_rollout_id(rid)
    with pytest.raises(InvalidRolloutId):
        parse_tool_call("shell", {"trace_id": rid, "arguments": "{}"})


def test_ordinary_rollout_ids_still_pass() -> None:
    for rid in ("trace_7f0c", "a b", "a:b.c-d", "ünï"):
        assert check_rollout_id(rid) == rid


# --- 6: environment definitions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"shell_timeout_s": float("inf")}, "shell_timeout_s"),
        ({"shell_timeout_s": float("nan")}, "shell_timeout_s"),
        ({"limits": {"cpus": float("inf")}}, "limits.cpus"),
        ({"limits": {"cpus": float("nan")}}, "limits.cpus"),
    ],
)
def test_non_finite_numbers_in_a_definition_are_refused_not_stored_as_null(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        EnvironmentSpec.model_validate(spec)
    assert [".".join(map(str, e["loc"])) for e in caught.value.errors()] == [field]
    assert caught.value.errors()[0]["type"] == "finite_number"


def test_a_definition_with_text_that_cannot_be_stored_is_refused() -> None:
    with pytest.raises(ValidationError, match="not valid Unicode"):
        EnvironmentSpec.model_validate({"tests": {"files": {"test_x.py": "x = 1  # \ud800"}}})


def test_finite_definitions_still_round_trip() -> None:
    spec = EnvironmentSpec.model_validate({"shell_timeout_s": 12.5, "limits": {"cpus": 1.5}})
    assert EnvironmentSpec.model_validate_json(spec.model_dump_json()) == spec


# --- 7: F-beta ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [1e308, 1.7976931348623157e308, 1e154, 1e-308, 5e-324, 1e-154])
def test_a_perfect_selection_scores_one_whatever_the_finite_beta(beta: float) -> None:
    result = file_f1(["src/a.py", "src/b.py"], ["src/a.py", "src/b.py"], beta=beta)
    assert (result.precision, result.recall, result.score) == (1.0, 1.0, 1.0)


def test_extreme_betas_tend_to_recall_and_to_precision() -> None:
    assert _f_beta(1.0, 0.5, 1e308) == 0.5  # beta -> inf: recall
    assert _f_beta(0.5, 1.0, 1e-308) == 0.5  # beta -> 0: precision
    assert _f_beta(0.0, 1.0, 1e308) == 0.0 and _f_beta(1.0, 0.0, 1e-308) == 0.0


@pytest.mark.parametrize("beta", [0.25, 0.5, 1.0, 2.0, 3.0])
def test_ordinary_betas_score_as_the_textbook_formula(beta: float) -> None:
    for p, r in ((0.5, 0.5), (0.25, 0.75), (1.0, 1 / 3)):
        b2 = beta * beta
        assert _f_beta(p, r, beta) == pytest.approx((1 + b2) * p * r / (b2 * p + r), rel=1e-12)


def test_a_beta_no_float_holds_is_a_bad_grade_request() -> None:
    with pytest.raises(InvalidGradeRequest, match="64-bit float"):
        _float_or(10**400, 1.0)


# --- 8, 9: over the real store (the session's Redis) ----------------------------------------------------


@pytest.fixture()
def world(redis_server: RedisServer) -> Iterator[World]:
    w = build_world(redis_server.url)
    yield w
    drop_world(w)


def test_a_call_id_reused_for_another_tool_is_a_conflict_not_the_other_tools_output(world: World) -> None:
    first = world.tools.handle(world.call("r", "echo first", "c1"))
    with pytest.raises(CallIdConflict, match="already used for a shell call") as caught:
        world.tools.handle(world.call("r", "/etc/hostname", "c1", tool="read_file"))
    assert (caught.value.http_status, caught.value.code, caught.value.retryable) == (409, "call_id_conflict", False)
    assert world.tools.handle(world.call("r", "echo first", "c1")) == first  # the same tool still replays
    assert [c["call_id"] for c in world.rollouts.trajectory("r")[1]] == ["c1"]


def test_deleting_an_environment_refuses_it_afterwards_and_default_comes_back(world: World) -> None:
    world.registry.register("gone", EnvironmentSpec(max_tool_calls=3))
    world.registry.register("default", EnvironmentSpec(max_tool_calls=7))
    assert world.registry.delete("gone").spec.max_tool_calls == 3
    with pytest.raises(UnknownEnvironment):
        world.registry.get("gone")
    with pytest.raises(UnknownEnvironment, match="nothing to delete"):
        world.registry.delete("gone")  # a second delete: nothing left
    assert "gone" not in world.registry.names()
    assert world.registry.delete("default").spec.max_tool_calls == 7
    builtin = world.registry.get("default")
    assert (builtin.registered_at, builtin.spec.max_tool_calls) == (0.0, None)
    with pytest.raises(UnknownEnvironment, match="built-in default already"):
        world.registry.delete("default")


def test_a_file_list_shared_with_another_environment_outlives_the_delete(store: Store) -> None:
    """A deleted definition and its file list stay for the rollouts using it, then expire;
    a file list another environment shares never expires with the delete."""

    def env(name: str, digest: str) -> Environment:
        return Environment(name=name, spec=EnvironmentSpec(), definition_digest=digest)

    def ttl(digest: str) -> int:
        return int(store.redis.ttl(store.keys.environment_files(digest)))

    store.environments.save(env("a", "same"), ["x.py"])
    store.environments.save(env("b", "same"), ["x.py"])
    store.environments.save(env("c", "own"), ["y.py"])
    store.environments.set_preparation("a", "h1", {"state": "ready"})
    assert store.environments.delete("a") is not None
    assert store.environments.files("same") == {"x.py"} and ttl("same") == -1  # b still needs it
    assert store.environments.preparation("a") == {}
    assert store.environments.load("a") is None and store.environments.load_retired("a") is not None
    assert store.environments.delete("c") is not None
    assert store.environments.files("own") == {"y.py"} and 0 < ttl("own") <= 60  # kept for its rollouts
    assert store.environments.delete("b") is not None
    assert 0 < ttl("same") <= 60
    assert store.environments.names() == set() and store.environments.delete("b") is None
