"""The trainer API on the real stack: exec and files through the routes and through the SDK (sync
and async), the agent/trainer split of budgets and grades, and a retried call that never runs twice
across a real fault (the API killed mid-call)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import tarfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollout_sandbox import AsyncClient, Client, InfraError, RequestError, RetryPolicy
from tests.stack import Stack

pytestmark = pytest.mark.integration


def rid(tag: str) -> str:
    return f"tr-{tag}-{uuid.uuid4().hex[:8]}"


def exec_(stack: Stack, rollout: str, **body: Any) -> httpx.Response:
    return stack.http.post(f"/v1/rollouts/{rollout}/exec", json=body)


def sdk(stack: Stack, **kw: Any) -> Client:
    return Client(stack.base, stack.token, **kw)


def test_exec_keeps_streams_apart_runs_as_the_user_and_leaves_nothing_behind(stack: Stack) -> None:
    r = rid("exec")
    got = exec_(stack, r, command="id -un; echo oops >&2; sleep 41.3 & exit 4", env={"X": "1"})
    assert got.status_code == 200, got.text
    body = got.json()
    assert (body["exit_code"], body["stdout"], body["stderr"]) == (4, "sandbox\n", "oops\n")
    assert (body["outcome"], body["reason"], body["source"]) == ("model_error", "nonzero_exit", "agent")
    assert got.headers["x-sandbox-exit-code"] == "4"
    ps = exec_(stack, r, argv=["sh", "-c", "ps -eo args | grep -c '[s]leep 41.3'"], source="trainer").json()
    assert ps["stdout"] == "0\n"  # the background sleep died with its call
    env = exec_(stack, r, argv=["sh", "-c", 'echo "$X:$PWD"'], env={"X": "set"}, cwd="/tmp").json()
    assert env["stdout"] == "set:/tmp\n"
    slow = exec_(stack, r, command="sleep 10", timeout=1).json()
    assert (slow["timed_out"], slow["exit_code"], slow["reason"]) == (True, None, "timeout")
    bad = exec_(stack, r, command="ls", argv=["ls"])
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "bad_request")


def test_a_request_id_is_answered_once_and_never_runs_twice(stack: Stack) -> None:
    r = rid("idem")
    first = exec_(stack, r, command="echo run >> /tmp/runs; wc -l < /tmp/runs", request_id="once")
    again = exec_(stack, r, command="echo run >> /tmp/runs; wc -l < /tmp/runs", request_id="once")
    assert first.json() == again.json() and first.json()["stdout"] == "1\n"
    other = exec_(stack, r, command="wc -l < /tmp/runs", source="trainer").json()
    assert other["stdout"] == "1\n"
    clash = stack.shell(r, "true", call_id="once")  # the key of an exec is no tool call's
    assert (clash.status_code, clash.json()["error"]["code"]) == (409, "call_id_conflict")


def test_files_go_in_and_out_as_the_sandbox_user_with_clear_errors(stack: Stack) -> None:
    r = rid("files")
    base = f"/v1/rollouts/{r}/files"
    item = {"X-Rollout-Item": '{"environment": "yaml-demo"}'}
    first = stack.http.get(base, params={"path": "hello.txt"}, headers=item)  # the first call provisions it
    assert (first.status_code, first.content) == (200, b"from the yaml file\n")
    put = stack.http.put(base, params={"path": "bin/tool.sh", "mode": "750"}, content=b"#!/bin/sh\necho tool\n")
    assert put.json()["path"] == "/workspace/bin/tool.sh"
    stat = exec_(stack, r, command="stat -c '%U %a' bin/tool.sh bin; bin/tool.sh", source="trainer").json()
    assert stat["stdout"] == "sandbox 750\nsandbox 755\ntool\n"
    tree = io.BytesIO()
    with tarfile.open(fileobj=tree, mode="w") as tar:
        for name, data in {"pkg/a.py": b"A = 1\n", "pkg/sub/b.py": b"B = 2\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    unpacked = stack.http.put(base, params={"path": "src"}, content=tree.getvalue(),
                              headers={"Content-Type": "application/x-tar"})  # fmt: skip
    assert unpacked.status_code == 200, unpacked.text
    back = stack.http.get(base, params={"path": "src"})
    assert (back.headers["content-type"], back.headers["x-sandbox-kind"]) == ("application/x-tar", "directory")
    with tarfile.open(fileobj=io.BytesIO(back.content)) as tar:
        assert {m.name for m in tar.getmembers() if m.isfile()} == {"./pkg/a.py", "./pkg/sub/b.py"}
    errors = {
        "missing": stack.http.get(base, params={"path": "nope.txt"}),
        "unreadable": stack.http.get(base, params={"path": "/etc/shadow"}),
        "unwritable": stack.http.put(base, params={"path": "/etc/evil"}, content=b"x"),
        "directory": stack.http.put(base, params={"path": "src"}, content=b"x"),
        "not_tar": stack.http.put(
            base, params={"path": "t"}, content=b"junk" * 300, headers={"Content-Type": "application/x-tar"}
        ),
        "disk_full": stack.http.put(base, params={"path": "/dev/shm/fill"}, content=b"\0" * (65 * 1024 * 1024)),
    }
    codes = {k: (v.status_code, v.json()["error"]["code"]) for k, v in errors.items()}
    assert codes == {
        "missing": (404, "file_not_found"),
        "unreadable": (403, "permission_denied"),
        "unwritable": (403, "permission_denied"),
        "directory": (409, "is_a_directory"),
        "not_tar": (400, "invalid_archive"),
        "disk_full": (413, "no_space"),  # the sandbox's 64 MiB /dev/shm: its own disk, not ours
    }
    assert stack.http.get(base, params={"path": "a\x00b"}).status_code == 400
    sources = {(c["tool"], c["source"]) for c in stack.http.get(f"/v1/rollouts/{r}/trajectory").json()["calls"]}
    assert sources == {("download", "trainer"), ("upload", "trainer"), ("exec", "trainer")}


def test_an_upload_over_the_limit_is_refused_before_its_bytes_are_read(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.api_port), timeout=10) as s:
        s.sendall(
            f"PUT /v1/rollouts/{rid('big')}/files?path=x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {stack.token}\r\n"
            f"Content-Length: {10**12}\r\n\r\n".encode()
        )
        answer = b""
        while b"payload_too_large" not in answer and (chunk := s.recv(4096)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"payload_too_large" in answer


def test_trainer_calls_spend_no_budget_and_graders_count_only_the_agents(stack: Stack) -> None:
    name = f"budget-{uuid.uuid4().hex[:6]}"
    assert stack.put_environment(name, {"max_tool_calls": 2}).status_code == 200
    r = rid("budget")
    item = {"environment": name, "grader": "file_f1", "reference_files": ["a.py"]}
    with sdk(stack) as client:
        rollout = client.rollout(r, item=item)
        for i in range(3):
            assert rollout.exec(f"echo setup {i}", source="trainer").ok
        rollout.write_file("a.py", "x = 1\n")
        assert rollout.exec("cat a.py").stdout == "x = 1\n"
        assert rollout.shell("ls") == "a.py\n"
        spent = rollout.exec("echo one too many")
        assert (spent.exit_code, spent.reason) == (None, "budget_exhausted") and "budget" in spent.stderr
        graded = rollout.grade({"output_json": ["a.py"]})
    assert graded["score"] == 1.0 and graded["tool_calls"] == 3  # cat, ls and the refused one; no setup


def test_the_sdk_moves_trees_and_files_both_ways(stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    blobs = {f"data/{i}.bin": os.urandom(200_000 + i) for i in range(20)}
    for rel, data in blobs.items():
        (src / rel).write_bytes(data)
    (src / "run.sh").write_text("#!/bin/sh\nls data | wc -l\n")
    (src / "run.sh").chmod(0o755)
    with sdk(stack) as client, client.rollout(rid("sdk")) as rollout:
        assert rollout.upload_dir(src, "proj")["kind"] == "tar"
        assert rollout.exec(["./run.sh"], cwd="proj").stdout == "20\n"
        rollout.write_file("proj/note.txt", "héllo\n")
        assert rollout.read_text("proj/note.txt") == "héllo\n"
        assert rollout.read_file("proj/note.txt") == "héllo\n"  # the model's read_file tool
        out = rollout.download_dir("proj", tmp_path / "out")
        assert all((out / rel).read_bytes() == data for rel, data in blobs.items())
        with pytest.raises(RequestError) as missing:
            rollout.read_bytes("proj/absent")
        assert (missing.value.status, missing.value.code) == (404, "file_not_found")
        assert client.provision([rid("burst"), rid("burst")])[0]["state"] in ("provisioning", "ready")


def test_the_async_sdk_runs_many_rollouts_at_once(stack: Stack) -> None:
    async def one(client: AsyncClient, i: int) -> tuple[str, str]:
        async with client.rollout(rid(f"async{i}")) as rollout:
            await rollout.write_file("n.txt", str(i))
            result = await rollout.exec(["cat", "n.txt"])
            return result.stdout, await rollout.read_text("n.txt")

    async def main() -> list[tuple[str, str]]:
        async with AsyncClient(stack.base, stack.token) as client:
            return await asyncio.gather(*(one(client, i) for i in range(6)))

    assert asyncio.run(main()) == [(str(i), str(i)) for i in range(6)]


def test_a_lost_sandbox_is_an_infra_error_the_sdk_does_not_retry(stack: Stack) -> None:
    with sdk(stack) as client:
        rollout = client.rollout(rid("lost"))
        rollout.exec("true")
        (container,) = stack.containers_of(rollout.id)
        container.remove(force=True)
        with pytest.raises(InfraError) as lost:
            rollout.exec("true")
        assert (lost.value.reason, lost.value.retryable) == ("sandbox_lost", False)
        assert rollout.info()["infra_tainted"] is True  # discard it: never a 0 for training


def test_a_call_retried_across_an_api_crash_runs_once(stack: Stack) -> None:
    """The API dies while the command runs (its answer is lost); the SDK retries with the same
    request_id until a new API answers, and gets the one run's result from the service's record."""
    retry = RetryPolicy(attempts=40, backoff_s=0.2, max_backoff_s=0.5)
    sent: list[bytes] = []
    http = httpx.Client(base_url=stack.base, event_hooks={"request": [lambda req: sent.append(req.content)]})
    with sdk(stack, retry=retry, http=http) as client:
        rollout = client.rollout(rid("crash"))
        rollout.exec("true")  # provisioned before the fault
        outcome: dict[str, Any] = {}

        def call() -> None:
            try:
                outcome["result"] = rollout.exec("sleep 3; echo ran >> /tmp/ran; wc -l < /tmp/ran", timeout=30)
            except Exception as exc:  # reported below
                outcome["error"] = exc

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(1.0)  # the command is running in the sandbox now
        assert stack.api_proc is not None
        os.killpg(stack.api_proc.pid, signal.SIGKILL)
        stack.api_proc.wait(timeout=10)
        try:
            time.sleep(0.5)
        finally:
            stack.start_api()
            stack.wait_ready()
        caller.join(timeout=90)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["result"].stdout == "1\n"
        assert rollout.exec("wc -l < /tmp/ran", source="trainer").stdout == "1\n"
        runs = [c for c in rollout.trajectory()["calls"] if c["tool"] == "exec" and "sleep 3" in str(c["arguments"])]
        assert len(runs) == 1
        tries = [body for body in sent if b"sleep 3" in body]
        assert len(tries) >= 2 and len(set(tries)) == 1  # retried, each time with the same request_id


def test_transfers_go_straight_to_the_hosts_data_port_and_through_the_store_without_one(
    stack: Stack, redis_server: Any, tmp_path: Path
) -> None:
    """The worker advertises its data port; an upload of unknown length, and a stack whose workers
    have no data port, go through the store instead, with the same answers."""
    assert stack.redis.hget(f"{stack.prefix}:host:testhost", "data_addr").startswith("127.0.0.1:")
    data = os.urandom(3 * 1024 * 1024 + 7)
    r = rid("chunked")

    def moved(s: Stack, direction: str, via: str) -> float:
        return s.metric("sandbox_transfer_bytes_total", {"direction": direction, "via": via})

    before = {(d, v): moved(stack, d, v) for d in ("upload", "download") for v in ("direct", "store")}
    sized = stack.http.put(f"/v1/rollouts/{r}/files", params={"path": "s.bin"}, content=data)
    chunked = stack.http.put(f"/v1/rollouts/{r}/files", params={"path": "c.bin"}, content=iter([data[:5], data[5:]]))
    assert sized.status_code == chunked.status_code == 200 and chunked.json()["bytes"] == len(data)
    assert stack.http.get(f"/v1/rollouts/{r}/files", params={"path": "c.bin"}).content == data
    after = {key: moved(stack, *key) - value for key, value in before.items()}
    assert after == {
        ("upload", "direct"): len(data),  # its length known: straight to the data port
        ("upload", "store"): len(data),  # no Content-Length: through Redis, whole, first
        ("download", "direct"): len(data),
        ("download", "store"): 0,
    }
    portless = Stack(redis_server.url, SANDBOX_WORKER_DATA_HOST="")
    try:
        portless.start()
        (src := tmp_path / "t").mkdir()
        (src / "x.bin").write_bytes(data)
        with Client(portless.base, portless.token) as client, client.rollout(rid("portless")) as rollout:
            rollout.upload_dir(src, "t")
            assert rollout.read_bytes("t/x.bin") == data
            assert (rollout.download_dir("t", tmp_path / "back") / "x.bin").read_bytes() == data
            with pytest.raises(RequestError) as missing:
                rollout.read_bytes("t/none")
            assert missing.value.code == "file_not_found"
        assert portless.redis.hget(f"{portless.prefix}:host:testhost", "data_addr") == ""
        assert moved(portless, "upload", "store") > len(data) and moved(portless, "download", "store") > len(data)
        assert moved(portless, "upload", "direct") == moved(portless, "download", "direct") == 0
        assert list(portless.redis.scan_iter(f"{portless.prefix}:xfer:*")) == []  # nothing left behind
    finally:
        portless.close()
