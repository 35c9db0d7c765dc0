"""The trainer API's pure parts: what a trainer may send, how calls end and are answered, the
messages to the worker, the transfers' store, and that graders count only the agent's calls."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from sandbox.api.data_channel import Spool, receive_frames
from sandbox.api.grading_service import GradingService
from sandbox.api.schemas import TrajectoryView
from sandbox.api.schemas.trainer import ExecResult, UploadResult
from sandbox.domain.calls import CallResult
from sandbox.domain.classify import exec_outcome, transfer_outcome
from sandbox.domain.errors import BadRequest, InternalError
from sandbox.domain.messages import CallRequest
from sandbox.domain.trainer import (
    DownloadArgs,
    ExecArgs,
    UploadArgs,
    check_path,
    exec_response,
    parse_exec,
    parse_mode,
    transfer_error,
    upload_kind,
)
from sandbox.guest.guest_protocol_stream import frame_header
from sandbox.store import Store
from sandbox.store.transfers import CHUNK_BYTES, ChunkBuffer
from tests.fakes.host import World

LIMITS = {"default_timeout": 30.0, "max_timeout": 600.0, "max_command_bytes": 1024}


def parse(**body: Any) -> Any:
    return parse_exec(body, **LIMITS)


def test_an_exec_body_takes_a_command_or_an_argv_with_defaults() -> None:
    req = parse(command="ls -la")
    assert (req.args.command, req.args.argv, req.args.timeout_s, req.source, req.request_id) == (
        "ls -la", None, 30.0, "agent", None,
    )  # fmt: skip
    req = parse(argv=["python3", "-c", "print(1)"], cwd="src", env={"A": "1"}, timeout=5, source="trainer",
                request_id="k1", merge_stderr=True)  # fmt: skip
    assert req.args == ExecArgs(("python3", "-c", "print(1)"), None, "src", {"A": "1"}, 5.0, True)
    assert (req.source, req.request_id) == ("trainer", "k1")
    # The trajectory keeps the environment's names, never its values (credentials travel there).
    assert req.args.recorded() == {"argv": ["python3", "-c", "print(1)"], "cwd": "src", "env": ["A"], "timeout": 5.0}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"command": "ls", "argv": ["ls"]},
        {"command": "  "},
        {"argv": []},
        {"argv": ["ls", 3]},
        {"command": "echo \x00"},
        {"command": "x" * 2000},
        {"command": "ls", "env": {"A=B": "1"}},
        {"command": "ls", "env": {"A": 1}},
        {"command": "ls", "timeout": 0},
        {"command": "ls", "timeout": 601},
        {"command": "ls", "timeout": True},
        {"command": "ls", "source": "model"},
        {"command": "ls", "request_id": 7},
        {"command": "ls", "cwd": ""},
        {"command": "ls", "merge_stderr": "yes"},
        {"command": "ls", "item": "row"},
    ],
)
def test_a_malformed_exec_body_is_the_clients_400_not_the_models(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        parse_exec(body, **LIMITS)


def test_paths_modes_and_upload_kinds() -> None:
    assert check_path("../etc/passwd") == "../etc/passwd"  # refused by permissions, as the user, not by us
    for bad in ("", None, "a\x00b", "x" * 5000):
        with pytest.raises(BadRequest):
            check_path(bad)
    assert (parse_mode("755"), parse_mode("0o644"), parse_mode(None)) == (0o755, 0o644, None)
    for bad in ("9", "rwx", "77777"):
        with pytest.raises(BadRequest):
            parse_mode(bad)
    assert upload_kind("application/x-tar") == "tar" and upload_kind("application/octet-stream") == "file"
    assert upload_kind(None) == "file" and upload_kind("application/x-tar; charset=binary") == "tar"


def result(**fields: Any) -> CallResult:
    base: dict[str, Any] = {"call_id": "k", "item_id": None, "tool": "exec", "arguments": {}, "outcome": "ok",
                            "reason": "none", "output": "", "duration_ms": 12.0}  # fmt: skip
    return CallResult(**{**base, **fields})


def test_the_exec_answer_of_a_run_and_of_a_call_that_never_ran() -> None:
    ran = {"exit_code": 2, "stdout": "o", "stderr": "e", "timed_out": False, "oom_killed": False,
           "stdout_truncated_bytes": 0, "stderr_truncated_bytes": 5}  # fmt: skip
    answer = exec_response(result(outcome="model_error", reason="nonzero_exit", extra={"exec": ran}, source="trainer"))
    assert answer["exit_code"] == 2 and (answer["stdout"], answer["stderr"]) == ("o", "e")
    assert (answer["stderr_truncated_bytes"], answer["duration_s"], answer["source"]) == (5, 0.012, "trainer")
    budget = exec_response(result(outcome="model_error", reason="budget_exhausted", output="exec: budget used up"))
    assert (budget["exit_code"], budget["stderr"], budget["reason"]) == (
        None,
        "exec: budget used up",
        "budget_exhausted",
    )


def test_exec_and_transfers_are_classified_by_their_evidence() -> None:
    assert exec_outcome({"exit_code": 0})[:2] == ("ok", "none")
    assert exec_outcome({"exit_code": 1})[:2] == ("model_error", "nonzero_exit")
    assert exec_outcome({"exit_code": None, "timed_out": True, "signal": 9})[:2] == ("model_error", "timeout")
    assert exec_outcome({"exit_code": None, "oom_killed": True, "signal": 9})[:2] == ("model_error", "oom_killed")
    assert exec_outcome({"error": "x", "pids_exhausted": True})[:2] == ("model_error", "pids_exhausted")
    with pytest.raises(InternalError):
        exec_outcome({"error": "bug"})
    assert transfer_outcome({"status": "ok"})[:2] == ("ok", "none")
    assert transfer_outcome({"status": "no_space", "message": "full"}) == ("model_error", "no_space", "full")
    for bad in ({"error": "refused"}, {"status": "weird"}):
        with pytest.raises(InternalError):
            transfer_outcome(bad)


@pytest.mark.parametrize(
    "reason, status, code",
    [
        ("file_not_found", 404, "file_not_found"),
        ("permission_denied", 403, "permission_denied"),
        ("is_a_directory", 409, "is_a_directory"),
        ("not_a_directory", 409, "not_a_directory"),
        ("no_space", 413, "no_space"),
        ("too_large", 413, "download_too_large"),
        ("invalid_archive", 400, "invalid_archive"),
        ("timeout", 408, "transfer_timed_out"),
        ("transfer_failed", 409, "transfer_failed"),
    ],
)
def test_a_failed_transfer_is_a_4xx_with_the_sandboxs_own_words(reason: str, status: int, code: str) -> None:
    error = transfer_error(result(tool="upload", outcome="model_error", reason=reason, output="tar: said so"))
    assert (error.http_status, error.code, error.message) == (status, code, "tar: said so")


@pytest.mark.parametrize(
    "tool, args",
    [
        ("exec", ExecArgs(None, "ls", "/tmp", {"A": "1"}, 12.5, True)),
        ("exec", ExecArgs(("ls", "-l"), None, None, {}, 1.0)),
        ("upload", UploadArgs("a/b", "tar", 123, 0o755, "t1", 60.0)),
        ("download", DownloadArgs("a", "t2", 1000, 60.0)),
    ],
)
def test_trainer_calls_cross_to_the_worker_unchanged(tool: str, args: Any) -> None:
    request = CallRequest("r1", "ro", "c", None, tool, args, {"x": 1}, 100, source="trainer")
    back = CallRequest.from_wire(request.to_wire())
    assert back == request
    assert back.run_deadline_s == args.timeout_s


def test_a_transfer_keeps_its_bytes_in_order_in_chunks_and_gives_them_up_once(store: Store) -> None:
    data = bytes(range(256)) * (CHUNK_BYTES // 128 + 17)  # two full chunks and a bit
    sink = ChunkBuffer(store.transfers, "t1", ttl_s=60)
    for i in range(0, len(data), 70_000):
        sink.write(data[i : i + 70_000])
    sink.flush()
    assert sink.total == len(data)
    chunks = list(store.transfers.chunks("t1"))
    assert [len(c) for c in chunks[:-1]] == [CHUNK_BYTES] * (len(chunks) - 1) and b"".join(chunks) == data
    assert 0 < store.redis.ttl(store.keys.transfer("t1")) <= 60  # a transfer nobody collects goes away
    popped = []
    while (chunk := store.transfers.pop("t1")) is not None:
        popped.append(chunk)
    assert b"".join(popped) == data and list(store.transfers.chunks("t1")) == []


def test_graders_count_only_the_agents_calls(world: World) -> None:
    for i, source in enumerate(["agent", "trainer", "trainer", "agent", "trainer"]):
        world.store.calls.record("r", result(call_id=f"c{i}", tool="exec", source=source))
    world.store.rollouts.ensure("r", "default", None)
    body = {"trace_id": "r", "item": {"grader": "file_f1", "reference_files": ["a.py"]},
            "sample": {"output_json": ["a.py"]}}  # fmt: skip
    graded = GradingService(world.store, world.registry, world.rollouts, world.settings).grade(body)
    assert graded["tool_calls"] == 2  # the trainer's three are recorded, but not the agent's moves
    assert len(world.store.calls.trajectory("r")) == 5


class Pieces:
    """A stream that hands out scripted pieces, whatever size was asked for (as a socket may)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.sizes = data, sizes

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self.data:
            raise anyio.EndOfStream
        n = min(self.sizes.pop(0) if self.sizes else len(self.data), max_bytes)
        piece, self.data = self.data[:n], self.data[n:]
        return piece


@pytest.mark.parametrize("sizes", [[], [1] * 40, [3, 100_000, 7, 2], [1_000_000]])
def test_download_frames_are_taken_in_however_the_bytes_arrive(sizes: list[int]) -> None:
    blobs = [b"a" * 70_000, b"", b"b" * 5, bytes(range(256)) * 300]
    wire = b"".join(frame_header(len(b)) + b for b in blobs if b) + frame_header(0)
    spool = Spool(memory_bytes=50_000)  # past it, the rest goes to a temporary file

    async def go() -> tuple[int, bytes]:
        total = await receive_frames(Pieces(wire, list(sizes)), spool)  # type: ignore[arg-type]
        return total, b"".join([piece async for piece in spool.read()])

    total, got = anyio.run(go)
    assert (total, got) == (sum(map(len, blobs)), b"".join(blobs))
    with pytest.raises(anyio.EndOfStream):  # cut short: never taken for a whole download
        anyio.run(receive_frames, Pieces(wire[:-5], []), Spool())


ENTRY = {"index": 0, "call_id": "c", "id": None, "tool": "exec", "arguments": {"command": "ls"}, "outcome": "ok",
         "reason": "none", "exit_code": 0, "duration_ms": 3.5, "output_bytes": 3, "truncated_bytes": 0,
         "started_at": 1.0, "finished_at": 1.5, "output": "ok\n"}  # fmt: skip
ANSWERS: list[tuple[Any, dict[str, Any]]] = [
    (
        TrajectoryView,
        {
            "rollout_id": "r",
            "state": "ready",
            "infra_tainted": False,
            "calls": [{**ENTRY, "source": "agent"}, {**ENTRY, "index": 1, "source": "trainer", "stderr": "warning\n"}],
        },
    ),  # fmt: skip
    (
        ExecResult,
        {
            "exit_code": 1,
            "stdout": "",
            "stderr": "boom\n",
            "timed_out": False,
            "stdout_truncated_bytes": 0,
            "stderr_truncated_bytes": 0,
            "duration_s": 0.012,
            "oom_killed": False,
            "outcome": "model_error",
            "reason": "nonzero_exit",
            "request_id": "req-1",
            "source": "agent",
        },
    ),  # fmt: skip
    (UploadResult, {"path": "/workspace/a.txt", "bytes": 5, "kind": "file", "request_id": "req-2"}),
]


@pytest.mark.parametrize(("model", "body"), ANSWERS, ids=["trajectory", "exec", "upload"])
def test_the_trainer_apis_answers_go_through_their_models_unchanged(model: Any, body: dict[str, Any]) -> None:
    """/openapi.json describes what these routes send: the models take it and give it back as it was."""
    assert model.model_validate(body).model_dump(exclude_unset=True) == body
