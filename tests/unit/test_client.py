"""The SDK's own logic against a scripted transport: the taxonomy's exceptions, retries that keep
their idempotency key, the version check, and what it sends. (Against the real stack:
tests/integration/test_trainer_api.py.)"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollout_sandbox import (
    AsyncClient,
    Client,
    InfraError,
    RequestError,
    RetryPolicy,
    SandboxError,
    ServerTooOld,
)
from rollout_sandbox._core import TarStream, extract_tar, tar_directory

FAST = RetryPolicy(attempts=4, backoff_s=0.001, max_backoff_s=0.002)
EXEC_OK = {"exit_code": 0, "stdout": "hi\n", "stderr": "", "timed_out": False, "duration_s": 0.01,
           "stdout_truncated_bytes": 0, "stderr_truncated_bytes": 0, "oom_killed": False, "outcome": "ok",
           "reason": "none", "request_id": "k", "source": "agent"}  # fmt: skip


def error(status: int, code: str, retryable: bool) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": code, "retryable": retryable}})


class Server:
    """A scripted server: /healthz answers `health`; other requests get `answers` in turn."""

    def __init__(self, answers: list[httpx.Response | Exception], health: dict[str, Any] | None = None) -> None:
        self.answers = answers
        self.health = health if health is not None else {"status": "ok", "version": "0.1.0", "api_version": 2}
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json=self.health)
        self.seen.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) for r in self.seen]


def client(server: Callable[[httpx.Request], httpx.Response], **kw: Any) -> Client:
    http = httpx.Client(base_url="http://sandbox", transport=httpx.MockTransport(server))
    return Client("http://sandbox", "tok", retry=kw.pop("retry", FAST), http=http, **kw)


def test_an_infra_error_is_retried_with_the_same_request_id_until_it_is_answered() -> None:
    server = Server([error(503, "worker_lost", True), httpx.ConnectError("refused"), httpx.Response(200, json=EXEC_OK)])
    result = client(server).rollout("r1").exec(["echo", "hi"], timeout=5)
    assert (result.exit_code, result.stdout, result.ok) == (0, "hi\n", True)
    keys = {b["request_id"] for b in server.bodies()}
    assert len(server.seen) == 3 and len(keys) == 1  # three tries, one idempotency key
    assert server.bodies()[0]["argv"] == ["echo", "hi"] and server.seen[0].headers["authorization"] == "Bearer tok"


def test_retries_stop_at_the_policy_and_the_last_infra_error_is_raised() -> None:
    server = Server([error(503, "queue_timeout", True)] * 4)
    with pytest.raises(InfraError) as raised:
        client(server).rollout("r1").exec("true")
    assert (raised.value.reason, raised.value.status, len(server.seen)) == ("queue_timeout", 503, 4)


def test_errors_no_retry_can_fix_are_raised_at_once() -> None:
    for answer, kind, code in [
        (error(503, "sandbox_lost", False), InfraError, "sandbox_lost"),  # lost: discard, retrying cannot help
        (error(404, "file_not_found", False), RequestError, "file_not_found"),
        (error(400, "bad_request", False), RequestError, "bad_request"),
    ]:
        server = Server([answer])
        with pytest.raises(kind) as raised:
            client(server).rollout("r1").read_bytes("x")
        assert raised.value.code == code and len(server.seen) == 1


def test_a_call_still_running_is_waited_for_through_retries() -> None:
    server = Server([error(409, "call_in_progress", True), httpx.Response(200, json=EXEC_OK)])
    assert client(server).rollout("r1").exec("sleep 1").ok and len(server.seen) == 2


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff_s=0.1, max_backoff_s=5.0, jitter=0.0)
    slow = InfraError("x", code="queue_timeout", retryable=True)
    slow.retry_after = 3.0
    assert policy.delay(0, slow) == 3.0
    slow.retry_after = 60.0
    assert policy.delay(0, slow) == 5.0
    assert policy.delay(3, InfraError("x", code="internal", retryable=True)) == pytest.approx(0.8)
    assert not RetryPolicy(retry_transport=False).allows(InfraError("x", code="transport", retryable=True))


def test_a_server_without_the_trainer_api_is_refused_before_any_call() -> None:
    server = Server([], health={"status": "ok"})
    with pytest.raises(ServerTooOld, match="api_version"):
        client(server).rollout("r1").exec("true")
    assert server.seen == []
    missing_route = Server([error(404, "not_found", False)])
    with pytest.raises(ServerTooOld):
        client(missing_route, check_version=False).rollout("r1").exec("true")


def test_tools_files_and_grading_send_what_the_service_reads() -> None:
    answers = [
        httpx.Response(200, json={"type": "function_call_output", "call_id": "c", "id": "c", "output": "ok\n"}),
        httpx.Response(200, json={"path": "/workspace/a", "bytes": 3, "kind": "file", "request_id": "k"}),
        httpx.Response(200, content=b"abc"),
        httpx.Response(200, json={"score": 1.0}),
    ]
    server = Server(answers)
    rollout = client(server).rollout("r1", item={"environment": "repo"})
    assert rollout.shell("ls", timeout=3) == "ok\n"
    rollout.write_file("a", "abc", mode=0o755)
    assert rollout.read_bytes("a") == b"abc"
    assert rollout.grade({"output_text": "done"})["score"] == 1.0
    tool, put, get, grade = server.seen
    body = json.loads(tool.content)
    assert (tool.url.path, body["trace_id"], json.loads(body["arguments"])) == (
        "/v1/tools/shell",
        "r1",
        {"command": "ls", "timeout": 3},
    )
    assert body["item"] == {"environment": "repo"}
    assert (put.url.params["path"], put.url.params["mode"], put.content) == ("a", "755", b"abc")
    assert json.loads(put.headers["x-rollout-item"]) == {"environment": "repo"}
    assert (get.method, get.url.params["path"]) == ("GET", "a")
    assert json.loads(grade.content) == {
        "sample": {"output_text": "done"},
        "item": {"environment": "repo"},
        "trace_id": "r1",
    }


def test_a_rollout_block_releases_it_and_a_never_used_one_quietly() -> None:
    server = Server([httpx.Response(200, json=EXEC_OK), httpx.Response(200, json={"rollout_id": "r1"})])
    with client(server).rollout("r1") as rollout:
        rollout.exec("true")
    assert server.seen[-1].method == "DELETE"
    with client(Server([error(404, "rollout_not_found", False)])).rollout("r2"):
        pass


def test_the_async_client_retries_the_same_way() -> None:
    server = Server([error(503, "worker_lost", True), httpx.Response(200, json=EXEC_OK)])

    async def go() -> Any:
        http = httpx.AsyncClient(base_url="http://sandbox", transport=httpx.MockTransport(server))
        async with AsyncClient("http://sandbox", "tok", retry=FAST, http=http) as aclient:
            return await aclient.rollout("r1").exec("echo hi")

    assert asyncio.run(go()).stdout == "hi\n"
    assert len({b["request_id"] for b in server.bodies()}) == 1 and len(server.seen) == 2


def test_directories_travel_as_tar_and_a_hostile_archive_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "m.py").write_text("x = 1\n")
    (src / "top.txt").write_text("top\n")
    out = extract_tar(tar_directory(src), tmp_path / "out")
    assert (out / "pkg" / "m.py").read_text() == "x = 1\n" and (out / "top.txt").read_text() == "top\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises((SandboxError, tarfile.TarError)):
        extract_tar(buf.getvalue(), tmp_path / "out2")
    assert not (tmp_path / "escaped.txt").exists()


def test_a_tar_stream_knows_its_exact_size_before_its_first_byte(tmp_path: Path) -> None:
    src = tmp_path / "src"
    deep = src / ("long-directory-name-" * 6) / "x"  # past 100 characters: a PAX header
    deep.mkdir(parents=True)
    (deep / "data.bin").write_bytes(bytes(range(256)) * 41)
    (src / "empty.txt").write_bytes(b"")
    (src / "empty-dir").mkdir()
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    (src / "link").symlink_to("run.sh")
    stream = TarStream(src)
    pieces = list(stream.chunks(piece=1000))
    assert sum(map(len, pieces)) == stream.size and stream.size % tarfile.RECORDSIZE == 0
    out = extract_tar(iter(pieces), tmp_path / "out")  # unpacked piece by piece, as a download arrives
    assert (out / deep.relative_to(src) / "data.bin").read_bytes() == bytes(range(256)) * 41
    assert (out / "empty.txt").read_bytes() == b"" and (out / "empty-dir").is_dir()
    assert (out / "run.sh").stat().st_mode & 0o111 and (out / "link").readlink() == Path("run.sh")
