"""E2B's own SDK (PyPI `e2b`, pinned) against this service's E2B-compatible API, unmodified,
pointed here by its settings only (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY): sync and async
clients, commands (foreground, background, streamed callbacks, timeouts, kill), files, the
sandbox's timeout, kill, and an infrastructure fault in the middle of a session.

docs/e2b-compatibility.md has the table of every SDK call these tests back.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    CommandExitException,
    FileType,
    NotFoundException,
    Sandbox,
    SandboxException,
    TimeoutException,
)
from e2b.exceptions import SandboxNotRunningException, SandboxUnreachableException

from tests.stack import RedisServer, Stack, wait_until

pytestmark = pytest.mark.integration


def point_e2b_at(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The only change E2B code needs: its connection settings."""
    monkeypatch.setenv("E2B_API_URL", f"{stack.base}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{stack.base}/e2b/envd")
    monkeypatch.setenv("E2B_API_KEY", stack.token)
    monkeypatch.delenv("E2B_DEBUG", raising=False)


@pytest.fixture()
def e2b_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    point_e2b_at(stack, monkeypatch)
    return stack


@pytest.fixture()
def sandbox(e2b_env: Stack) -> Iterator[Sandbox]:
    sbx = Sandbox.create(timeout=300, metadata={"suite": "e2b"}, envs={"SANDBOX_WIDE": "everywhere"})
    try:
        yield sbx
    finally:
        sbx.kill()


def test_create_is_a_rollout_with_its_container_records_and_metrics(e2b_env: Stack) -> None:
    created_before = e2b_env.metric("sandbox_e2b_sandboxes_total", {"event": "created"})
    sbx = Sandbox.create(timeout=120, metadata={"run": "r1"})
    try:
        rollout = e2b_env.http.get(f"/v1/rollouts/{sbx.sandbox_id}").json()
        assert rollout["state"] == "ready" and rollout["environment"] == "default"
        assert len(e2b_env.containers_of(sbx.sandbox_id)) == 1
        info = sbx.get_info()
        assert (info.sandbox_id, info.template_id, info.metadata) == (sbx.sandbox_id, "base", {"run": "r1"})
        assert 115 <= (info.end_at - info.started_at).total_seconds() <= 121
        assert sbx.sandbox_id in [s.sandbox_id for s in Sandbox.list().next_items()]
        assert sbx.is_running()
        assert e2b_env.metric("sandbox_e2b_sandboxes_total", {"event": "created"}) == created_before + 1
    finally:
        assert sbx.kill() is True
    assert not sbx.is_running()
    assert e2b_env.http.get(f"/v1/rollouts/{sbx.sandbox_id}").json()["state"] == "released"
    assert Sandbox.kill(sbx.sandbox_id) is False  # already gone: E2B's answer is False, not an error
    with pytest.raises(SandboxException):
        Sandbox.get_info(sbx.sandbox_id)


def test_commands_run_with_exit_codes_envs_cwd_and_are_the_rollouts_calls(sandbox: Sandbox, e2b_env: Stack) -> None:
    result = sandbox.commands.run("echo out; echo err >&2; echo $SANDBOX_WIDE $MINE; pwd", envs={"MINE": "mine"})
    assert (result.exit_code, result.stdout, result.stderr) == (0, "out\neverywhere mine\n/workspace\n", "err\n")
    assert sandbox.commands.run("pwd; id -un", cwd="/tmp").stdout == "/tmp\nsandbox\n"
    with pytest.raises(CommandExitException) as failed:
        sandbox.commands.run("echo partial; exit 3")
    assert (failed.value.exit_code, failed.value.stdout) == (3, "partial\n")
    trajectory = e2b_env.http.get(f"/v1/rollouts/{sandbox.sandbox_id}/trajectory").json()
    commands = [c for c in trajectory["calls"] if c["tool"] == "exec" and c["source"] == "agent"]
    assert len(commands) == 3, trajectory
    stdout, stderr = "out\neverywhere mine\n/workspace\n", "err\n"
    assert commands[0]["output_bytes"] == len(stdout) + len(stderr)  # both streams, as the guest counted


def test_output_reaches_the_callbacks_and_a_background_command_can_be_waited_for_or_killed(
    sandbox: Sandbox,
) -> None:
    seen: list[str] = []
    sandbox.commands.run("printf 'a\\nb\\n'; echo e >&2", on_stdout=seen.append, on_stderr=seen.append)
    assert "".join(seen).count("a\nb\n") == 1 and "e\n" in seen
    waited = sandbox.commands.run("sleep 1; echo bg-done", background=True)
    assert waited.wait().stdout == "bg-done\n"
    long = sandbox.commands.run("sleep 60; echo never", background=True)
    assert [p.pid for p in sandbox.commands.list()] == [long.pid]
    assert sandbox.commands.kill(long.pid) is True
    started = time.monotonic()
    with pytest.raises(CommandExitException) as killed:
        long.wait()
    assert time.monotonic() - started < 30 and killed.value.exit_code == -1 and "killed" in (killed.value.error or "")
    assert sandbox.commands.kill(long.pid) is False  # gone: E2B's answer for an unknown pid


def test_a_command_past_its_timeout_is_a_timeout_and_the_sandbox_carries_on(sandbox: Sandbox) -> None:
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 30", timeout=2)
    assert sandbox.commands.run("echo still-here").stdout == "still-here\n"


def test_files_write_read_list_stat_move_remove(sandbox: Sandbox) -> None:
    info = sandbox.files.write("/workspace/dir/a.txt", "hello\n")
    assert (info.name, info.path) == ("a.txt", "/workspace/dir/a.txt")
    assert sandbox.files.read("/workspace/dir/a.txt") == "hello\n"
    payload = bytes(range(256)) * 64
    sandbox.files.write("rel/blob.bin", payload)  # relative: the workspace's
    assert bytes(sandbox.files.read("/workspace/rel/blob.bin", format="bytes")) == payload
    written = sandbox.files.write_files(
        [{"path": "/workspace/m/1.txt", "data": "1"}, {"path": "/workspace/m/2.txt", "data": "2"}]
    )
    assert sorted(w.path for w in written) == ["/workspace/m/1.txt", "/workspace/m/2.txt"]
    listed = {e.name: e for e in sandbox.files.list("/workspace")}
    assert {"dir", "rel", "m"} <= set(listed) and listed["dir"].type == FileType.DIR
    deep = {e.path for e in sandbox.files.list("/workspace/m", depth=2)}
    assert deep == {"/workspace/m/1.txt", "/workspace/m/2.txt"}
    entry = sandbox.files.get_info("/workspace/dir/a.txt")
    assert (entry.type, entry.size, entry.owner) == (FileType.FILE, 6, "sandbox")
    assert sandbox.files.exists("/workspace/dir/a.txt") and not sandbox.files.exists("/workspace/nope")
    assert sandbox.files.make_dir("/workspace/new/deeper") is True
    assert sandbox.files.make_dir("/workspace/new/deeper") is False  # already there
    moved = sandbox.files.rename("/workspace/dir/a.txt", "/workspace/moved/b.txt")
    assert moved.path == "/workspace/moved/b.txt" and sandbox.commands.run("cat moved/b.txt").stdout == "hello\n"
    sandbox.files.remove("/workspace/moved")
    assert not sandbox.files.exists("/workspace/moved/b.txt")
    with pytest.raises(NotFoundException):
        sandbox.files.read("/workspace/never-written")
    with pytest.raises(SandboxException):  # the sandbox user may not write there: the caller's problem
        sandbox.files.write("/etc/owned-by-root", "x")


def test_a_sandbox_ends_at_its_timeout_and_then_is_not_running(e2b_env: Stack) -> None:
    timed_out = {"event": "timed_out"}
    before = e2b_env.metric("sandbox_e2b_sandboxes_total", timed_out, source="worker")  # the reaper's count
    sbx = Sandbox.create(timeout=2)
    assert sbx.commands.run("echo alive").stdout == "alive\n"
    wait_until(lambda: not sbx.is_running(), timeout_s=30)
    with pytest.raises(SandboxNotRunningException):
        sbx.commands.run("echo late")
    # The reaper (every second here) ends the rollout and removes its container.
    assert wait_until(
        lambda: e2b_env.http.get(f"/v1/rollouts/{sbx.sandbox_id}").json()["state"] == "expired", timeout_s=30
    )
    assert wait_until(lambda: not e2b_env.containers_of(sbx.sandbox_id), timeout_s=30)
    assert e2b_env.metric("sandbox_e2b_sandboxes_total", timed_out, source="worker") == before + 1


def test_set_timeout_extends_the_sandbox(e2b_env: Stack) -> None:
    sbx = Sandbox.create(timeout=3)
    try:
        sbx.set_timeout(120)
        time.sleep(5)
        assert sbx.is_running() and sbx.commands.run("echo extended").stdout == "extended\n"
    finally:
        sbx.kill()


def test_the_async_client(e2b_env: Stack) -> None:
    async def session() -> None:
        sbx = await AsyncSandbox.create(timeout=120)
        try:
            chunks: list[str] = []
            result = await sbx.commands.run("echo async-out", on_stdout=chunks.append)
            assert (result.exit_code, "".join(chunks)) == (0, "async-out\n")
            await sbx.files.write("/workspace/async.txt", "a")
            assert await sbx.files.read("/workspace/async.txt") == "a"
            handle = await sbx.commands.run("sleep 1; echo later", background=True)
            assert (await handle.wait()).stdout == "later\n"
            assert await sbx.is_running()
        finally:
            await sbx.kill()

    asyncio.run(session())


def test_bad_input_and_unsupported_calls_get_errors_the_sdk_raises(sandbox: Sandbox, e2b_env: Stack) -> None:
    with pytest.raises(SandboxException, match="no environment named"):
        Sandbox.create(template=f"no-such-template-{uuid.uuid4().hex[:6]}")
    with pytest.raises(SandboxException, match="stdin"):
        sandbox.commands.run("cat", background=True, stdin=True)
    with pytest.raises(SandboxException, match="pause is not supported"):
        sandbox.beta_pause()
    # envd's requests carry the sandbox's own access token (from create or connect); no other passes.
    for token in ("not-the-token", None):
        headers = {"e2b-sandbox-id": sandbox.sandbox_id, **({"x-access-token": token} if token else {})}
        r = httpx.post(f"{e2b_env.base}/e2b/envd/process.Process/List", headers=headers, json={})
        assert (r.status_code, r.json()["code"]) == (401, "unauthenticated")
    r = httpx.post(f"{e2b_env.base}/e2b/v2/sandboxes", headers={"x-api-key": "not-a-token"}, json={})
    assert (r.status_code, r.json()["code"]) == (401, 401)


def test_an_infra_fault_mid_session_is_an_unavailability_the_sdk_retries_and_is_counted_as_infra(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's worker goes away mid-session: commands and files raise the SDK's
    SandboxUnreachableException (E2B users retry on it), metrics count infra failures, and once
    the worker is back the same sandbox carries on."""
    s = Stack(redis_server.url, SANDBOX_TIMEOUTS__QUEUE_S="2", SANDBOX_TIMEOUTS__REPLY_SLACK_S="1")
    try:
        s.start()
        point_e2b_at(s, monkeypatch)
        sbx = Sandbox.create(timeout=300)
        assert sbx.commands.run("echo before > state.txt").exit_code == 0
        infra_before = s.metric("sandbox_e2b_requests_total", {"plane": "envd", "result": "infra_error"})
        s.stop_worker()
        with pytest.raises(SandboxUnreachableException):
            sbx.commands.run("echo during")
        with pytest.raises(SandboxUnreachableException):
            sbx.files.read("/workspace/state.txt")
        assert s.metric("sandbox_e2b_requests_total", {"plane": "envd", "result": "infra_error"}) >= infra_before + 2
        assert (
            s.metric("sandbox_tool_calls_total", {"tool": "exec", "outcome": "infra_error", "reason": "queue_timeout"})
            >= 1
        )
        s.start_worker()
        s.wait_ready()
        # /readyz goes by the host's registration, which the stopped worker left fresh: the new
        # worker may still be starting (seconds on a loaded machine), and a call waits only 2 s
        # here. Retry as an E2B user does on SandboxUnreachableException.
        deadline = time.monotonic() + 60
        while True:
            try:
                assert sbx.files.read("/workspace/state.txt") == "before\n"
                break
            except SandboxUnreachableException:
                assert time.monotonic() < deadline, "the restarted worker never took the call"
                time.sleep(0.5)
        assert sbx.commands.run("echo after").stdout == "after\n"
        sbx.kill()
    finally:
        s.close()


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/e2b/v2/sandboxes", b"not json", 400),
        ("POST", "/e2b/v2/sandboxes", b"[1, 2]", 400),
        ("POST", "/e2b/v2/sandboxes", b'{"templateID": 7}', 400),
        ("POST", "/e2b/v2/sandboxes", b'{"timeout": -1}', 400),
        ("POST", "/e2b/v2/sandboxes", b'{"timeout": 1e400}', 400),
        ("POST", "/e2b/v2/sandboxes", b'{"timeout": 100000}', 400),
        ("POST", "/e2b/v2/sandboxes", b'{"metadata": {"k": 1}}', 400),
        ("POST", "/e2b/v2/sandboxes", b'{"envVars": "x"}', 400),
        ("POST", "/e2b/v2/sandboxes", b'{"templateID": "../../etc"}', 404),
        ("GET", "/e2b/sandboxes/%00nul", b"", 404),
        ("POST", "/e2b/sandboxes/nope/timeout", b'{"timeout": "x"}', 400),
        ("DELETE", "/e2b/sandboxes/nope", b"", 404),
        ("POST", "/e2b/v3/templates", b"{}", 400),
    ],
)
def test_malformed_control_plane_requests_get_e2b_shaped_4xx(
    e2b_env: Stack, method: str, path: str, body: bytes, status: int
) -> None:
    r = httpx.request(method, f"{e2b_env.base}{path}", headers={"x-api-key": e2b_env.token}, content=body)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["code"], int) and r.json()["message"]


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/process.Process/Start", b"\x00\x00\x00\x00\x05{bad}", "invalid_argument"),
        ("/process.Process/Start", b"\x00", "invalid_argument"),
        ("/process.Process/Start", b"\x01\x00\x00\x00\x02{}", "unimplemented"),
        ("/process.Process/Start", b'\x00\x00\x00\x00\x0e{"process": 1}', "invalid_argument"),
        ("/process.Process/SendSignal", b'{"process": {"pid": "x"}}', "invalid_argument"),
        ("/process.Process/SendSignal", b'{"process": {"pid": 99999}}', "not_found"),
        ("/process.Process/Nope", b"{}", "unimplemented"),
        ("/filesystem.Filesystem/Stat", b'{"path": ""}', "invalid_argument"),
        ("/filesystem.Filesystem/Stat", b"[]", "invalid_argument"),
        ("/filesystem.Filesystem/ListDir", b'{"path": "/", "depth": -3}', "invalid_argument"),
        ("/filesystem.Filesystem/ListDir", b'{"path": "/etc/hostname"}', "invalid_argument"),
        ("/filesystem.Filesystem/Move", b'{"source": "/nope", "destination": "/tmp/x"}', "not_found"),
        ("/filesystem.Filesystem/WatchDir", b"{}", "unimplemented"),
    ],
)
def test_malformed_envd_requests_get_connect_errors_never_5xx_or_a_crash(
    sandbox: Sandbox, e2b_env: Stack, path: str, body: bytes, code: str
) -> None:
    """The model's arguments and a sloppy client's bodies are their problem: a Connect error the
    SDK maps to its exceptions, never an infra error (which would count as the service's)."""
    headers = {
        "e2b-sandbox-id": sandbox.sandbox_id,
        "x-access-token": sandbox._envd_access_token or "",
        "content-type": "application/connect+json" if path.endswith("Start") else "application/json",
    }
    r = httpx.post(f"{e2b_env.base}/e2b/envd{path}", headers=headers, content=body)
    assert r.status_code < 500 or code == "unimplemented", r.text
    assert r.json()["code"] == code, r.text
