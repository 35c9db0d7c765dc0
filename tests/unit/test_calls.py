"""Pure logic: payload parsing, argument validation, classification, truncation."""

from __future__ import annotations

import pickle

import pytest

from sandbox.config import Settings
from sandbox.domain import errors
from sandbox.domain.calls import (
    ReadFileArgs,
    ShellArgs,
    parse_tool_call,
    validate_read_file,
    validate_shell,
)
from sandbox.domain.classify import cap_text, read_file_outcome, shell_outcome


def shell_limits() -> dict[str, float | int]:
    return {"default_timeout": 30.0, "max_timeout": 300.0, "max_command_bytes": 1000}


class TestParse:
    def test_arguments_as_string_or_object(self) -> None:
        a = parse_tool_call("shell", {"trace_id": "r", "call_id": "c", "arguments": '{"command": "ls"}'})
        b = parse_tool_call("shell", {"trace_id": "r", "call_id": "c", "arguments": {"command": "ls"}})
        assert a.arguments == b.arguments == {"command": "ls"}

    def test_rollout_id_precedence_path_then_body_then_header(self) -> None:
        body = {"trace_id": "body", "call_id": "c"}
        assert parse_tool_call("shell", body, path_rollout_id="path", header_rollout_id="hdr").rollout_id == "path"
        assert parse_tool_call("shell", body, header_rollout_id="hdr").rollout_id == "body"
        assert parse_tool_call("shell", {"call_id": "c"}, header_rollout_id="hdr").rollout_id == "hdr"

    def test_missing_rollout_id_is_a_bad_request(self) -> None:
        with pytest.raises(errors.MissingRolloutId):
            parse_tool_call("shell", {"call_id": "c"})

    def test_unknown_tool(self) -> None:
        with pytest.raises(errors.UnknownTool):
            parse_tool_call("python", {"trace_id": "r"})

    def test_broken_arguments_are_the_models_problem_not_an_exception(self) -> None:
        call = parse_tool_call("shell", {"trace_id": "r", "arguments": "{oops"})
        assert call.arguments is None
        assert "not valid JSON" in call.arguments_error

    def test_missing_call_id_gets_a_unique_one(self) -> None:
        a = parse_tool_call("shell", {"trace_id": "r"})
        b = parse_tool_call("shell", {"trace_id": "r"})
        assert a.call_id != b.call_id

    def test_item_must_be_an_object(self) -> None:
        with pytest.raises(errors.BadRequest):
            parse_tool_call("shell", {"trace_id": "r", "item": "row"})


class TestValidate:
    def test_shell_ok_and_timeout_clamped(self) -> None:
        assert validate_shell({"command": "ls", "timeout": 9999}, **shell_limits()) == ShellArgs("ls", 300.0)
        assert validate_shell({"command": "ls"}, **shell_limits()) == ShellArgs("ls", 30.0)

    @pytest.mark.parametrize(
        "args",
        [{}, {"command": 1}, {"command": "  "}, {"command": "a\x00b"}, {"command": "x" * 2000},
         {"command": "ls", "timeout": "5"}, {"command": "ls", "timeout": -1}, {"command": "ls", "timeout": True}],
    )  # fmt: skip
    def test_shell_problems_are_sentences(self, args: dict) -> None:
        problem = validate_shell(args, **shell_limits())
        assert isinstance(problem, str) and problem.startswith("shell: ")

    def test_read_file(self) -> None:
        assert validate_read_file({"path": "a", "start_line": 2}) == ReadFileArgs("a", 2, None)
        for bad in ({}, {"path": ""}, {"path": "a\x00"}, {"path": "a", "start_line": 0}, {"path": "a", "end_line": 1.5},
                    {"path": "a", "start_line": 3, "end_line": 2}):  # fmt: skip
            assert isinstance(validate_read_file(bad), str)


class TestClassify:
    def test_shell_outcomes(self) -> None:
        mem = 1024**3
        assert shell_outcome({"exit_code": 0, "output": "hi\n"}, timeout_s=5, memory_bytes=mem) == (
            "ok",
            "none",
            "hi\n",
        )
        assert shell_outcome({"exit_code": 2, "output": "x"}, timeout_s=5, memory_bytes=mem) == (
            "model_error", "nonzero_exit", "x\n[exit code 2]")  # fmt: skip
        timed = shell_outcome({"timed_out": True, "output": ""}, timeout_s=30, memory_bytes=mem)
        assert timed[1] == "timeout" and timed[2] == "[timed out after 30 s; the command was killed]"
        oom = shell_outcome({"oom_killed": True, "signal": 9, "output": ""}, timeout_s=5, memory_bytes=mem)
        assert oom[1] == "oom_killed" and "1024 MiB" in oom[2]

    def test_read_file_outcomes(self) -> None:
        assert read_file_outcome({"status": "ok", "content": "x"}, "a") == ("ok", "none", "x")
        assert read_file_outcome({"status": "not_found"}, "src/x.py") == (
            "model_error", "file_not_found", "read_file: no such file: src/x.py")  # fmt: skip
        with pytest.raises(ValueError):
            read_file_outcome({"status": "weird"}, "a")


def test_cap_text_keeps_head_and_tail() -> None:
    text = "".join(f"{i}\n" for i in range(10000))
    capped, omitted = cap_text(text, 1000)
    assert capped.startswith("0\n1\n") and capped.endswith("9999\n")
    assert omitted == len(text) - 1000
    assert f"[... {omitted} bytes omitted ...]" in capped
    assert cap_text("short", 1000) == ("short", 0)


def test_errors_are_picklable_and_carry_their_wire_shape() -> None:
    for exc in (errors.SandboxLost("gone"), errors.BadRequest("bad"), errors.QueueTimeout("slow")):
        again = pickle.loads(pickle.dumps(exc))
        assert type(again) is type(exc) and again.message == exc.message
    lost = errors.SandboxLost("gone")
    assert lost.http_status == 503 and lost.to_wire() == {
        "error": {"code": "sandbox_lost", "message": "gone", "retryable": False}
    }
    assert errors.infra_error_from_reason("queue_timeout", "m").code == "queue_timeout"
    assert errors.infra_error_from_reason("nonsense", "m").code == "internal"


def test_production_refuses_placeholder_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        Settings(env="production", api_tokens="changeme")
    assert Settings(env="production", api_tokens="a" * 32).token_list == ["a" * 32]
    monkeypatch.setenv("SANDBOX_SHELL__DEFAULT_TIMEOUT_S", "12")
    assert Settings().shell.default_timeout_s == 12
