"""Tests for the in-container guest, run as a real process over its real unix socket."""

from __future__ import annotations

import base64
import errno
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

GUEST = Path(__file__).resolve().parents[2] / "sandbox" / "guest" / "guest.py"
USER = pwd.getpwuid(os.getuid()).pw_name
# The guest's command line up to its mode. The tests below take it from the fixture
# `guest_argv`; test_guest_native.py runs them against the native guest by overriding it.
PYTHON_GUEST = [sys.executable, str(GUEST)]


@pytest.fixture(scope="module")
def guest_argv() -> list[str]:
    return PYTHON_GUEST


def start_server(sock: Path, workdir: Path, log: Path, argv: list[str] = PYTHON_GUEST) -> subprocess.Popen[bytes]:
    env = dict(os.environ, GUEST_TEST_LEAK="leaked")
    proc = subprocess.Popen(
        [*argv, "serve", "--socket", str(sock), "--user", USER, "--workdir", str(workdir)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if call(sock, {"op": "ping"}).get("ok"):
                return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise AssertionError("guest did not come up: " + log.read_text())


def raw_call(sock: Path, payload: bytes, timeout: float = 30) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(payload)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def call(sock: Path, request: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    reply = raw_call(sock, json.dumps(request).encode() + b"\n", timeout)
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1
    return json.loads(reply)


def live_procs_with_arg(arg: str) -> list[int]:
    """Non-zombie processes whose argv contains arg (unique sleep lengths mark each test)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        if arg.encode() in argv and "State:\tZ" not in status:
            found.append(int(name))
    return found


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, guest_argv: list[str]):
    base = tmp_path_factory.mktemp("guest")
    workdir = base / "workspace"
    workdir.mkdir()
    sock = base / "run" / "guest.sock"  # parent does not exist yet: the guest creates it
    proc = start_server(sock, workdir, base / "guest.log", guest_argv)
    yield {"sock": sock, "workdir": workdir, "proc": proc}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0


def shell(
    g: dict[str, Any], command: str, timeout: float = 10, cap: int = 65536, cwd: str | None = None
) -> dict[str, Any]:
    return call(g["sock"], {"op": "shell", "command": command, "timeout": timeout, "output_cap": cap, "cwd": cwd})


def read(
    g: dict[str, Any], path: str, start: int | None = None, end: int | None = None, cap: int = 65536
) -> dict[str, Any]:
    return call(g["sock"], {"op": "read_file", "path": path, "start_line": start, "end_line": end, "output_cap": cap})


# --- server basics ---------------------------------------------------------------------


def test_ping_and_socket_permissions(guest):
    resp = call(guest["sock"], {"op": "ping"})
    assert resp == {"ok": True, "version": 1, "pid": guest["proc"].pid}
    assert stat.S_IMODE(guest["sock"].stat().st_mode) == 0o600
    assert stat.S_IMODE(guest["sock"].parent.stat().st_mode) == 0o700


def test_malformed_requests_get_errors_and_server_survives(guest):
    sock = guest["sock"]
    assert "error" in json.loads(raw_call(sock, b"this is not json\n"))
    assert "error" in json.loads(raw_call(sock, b"[1, 2]\n"))
    assert "error" in json.loads(raw_call(sock, b"\xff\xfe\n"))
    assert call(sock, {"op": "frobnicate"}) == {"error": "unknown op: frobnicate"}
    assert "error" in call(sock, {"op": "shell"})
    assert "error" in call(sock, {"op": "shell", "command": "true", "timeout": "soon"})
    assert "error" in call(sock, {"op": "read_file", "path": 3})
    big = b'{"op": "ping", "pad": "' + b"x" * (4 * 1024 * 1024 + 10) + b'"}\n'
    assert "too large" in json.loads(raw_call(sock, big))["error"]
    with socket.socket(socket.AF_UNIX) as s:  # connect and vanish
        s.connect(str(sock))
    with socket.socket(socket.AF_UNIX) as s:  # ask for work, then vanish before the answer
        s.connect(str(sock))
        s.sendall(json.dumps({"op": "shell", "command": "sleep 0.2; echo x"}).encode() + b"\n")
    time.sleep(0.4)
    assert guest["proc"].poll() is None
    assert call(sock, {"op": "ping"})["ok"] is True


def test_requests_are_served_concurrently(guest):
    results: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: results.append(shell(guest, "sleep 0.6"))) for _ in range(5)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started < 2.0
    assert [r["exit_code"] for r in results] == [0] * 5


# --- shell -----------------------------------------------------------------------------


def test_echo_and_exit_code(guest):
    resp = shell(guest, "echo hello")
    assert resp["output"] == "hello\n" and resp["exit_code"] == 0
    assert resp["signal"] is None and resp["timed_out"] is False and resp["oom_killed"] is False
    assert resp["output_bytes"] == 6 and resp["truncated_bytes"] == 0
    assert isinstance(resp["duration_ms"], float)
    assert shell(guest, "exit 7")["exit_code"] == 7


def test_stdout_and_stderr_interleave_in_write_order(guest):
    resp = shell(guest, "for i in 1 2 3; do echo out$i; echo err$i >&2; done")
    assert resp["output"] == "out1\nerr1\nout2\nerr2\nout3\nerr3\n"


def test_killed_by_signal(guest):
    resp = shell(guest, "kill -TERM $$")
    assert resp["exit_code"] is None and resp["signal"] == 15 and resp["timed_out"] is False


def test_clean_environment_cwd_and_stdin(guest):
    home = pwd.getpwnam(USER).pw_dir
    out = shell(guest, "env; pwd; cat; echo done")["output"]
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert "GUEST_TEST_LEAK" not in env
    assert env["HOME"] == home and env["USER"] == USER and env["LOGNAME"] == USER
    assert env["LANG"] == "C.UTF-8" and env["TERM"] == "dumb" and env["SHELL"] == "/bin/bash"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert out.splitlines()[-2:] == [str(guest["workdir"]), "done"]  # cat got EOF at once
    assert shell(guest, "pwd", cwd="/tmp")["output"] == "/tmp\n"
    (guest["workdir"] / "pkg").mkdir(exist_ok=True)
    assert shell(guest, "pwd", cwd="pkg")["output"] == f"{guest['workdir']}/pkg\n"
    missing = shell(guest, "pwd", cwd="/no/such/dir")
    assert missing["output"] == home + "\n" and missing["exit_code"] == 0


def test_head_tail_truncation(guest):
    cmd = "printf 'a%.0s' $(seq 60); printf 'm%.0s' $(seq 100); printf 'z%.0s' $(seq 40)"
    resp = shell(guest, cmd, cap=51)
    assert resp["output"] == "a" * 25 + "\n[... 149 bytes omitted ...]\n" + "z" * 26
    assert resp["output_bytes"] == 200 and resp["truncated_bytes"] == 149
    exact = shell(guest, cmd, cap=200)
    assert exact["output"] == "a" * 60 + "m" * 100 + "z" * 40 and exact["truncated_bytes"] == 0


def test_truncation_inside_a_utf8_character(guest):
    resp = shell(guest, "printf '\\303\\251\\303\\251\\303\\251\\303\\251'", cap=3)  # éééé
    assert resp["output"] == "\ufffd\n[... 5 bytes omitted ...]\n\u00e9"
    assert resp["output_bytes"] == 8 and resp["truncated_bytes"] == 5


def test_timeout_kills_the_whole_group(guest):
    started = time.monotonic()
    resp = shell(guest, "sleep 41.01 & sleep 41.01", timeout=1)
    elapsed = time.monotonic() - started
    assert resp["timed_out"] is True and resp["exit_code"] is None and resp["signal"] == 9
    assert 0.9 < elapsed < 3.0
    assert live_procs_with_arg("41.01") == []


def test_background_child_does_not_hold_the_request(guest):
    started = time.monotonic()
    resp = shell(guest, "sleep 41.02 & echo hi", timeout=30)
    assert time.monotonic() - started < 1.5
    assert resp["output"] == "hi\n" and resp["exit_code"] == 0 and resp["timed_out"] is False
    assert live_procs_with_arg("41.02") == []


def test_spawn_storm_is_fully_killed(guest):
    # Self-limiting (spawners stop after ~3 s, sleeps expire) so a regression cannot run away.
    storm = "f() { e=$((SECONDS+3)); while [ $SECONDS -lt $e ]; do sleep 41.03 & done; }"
    resp = shell(guest, storm + "; f & f & f", timeout=0.5)
    assert resp["timed_out"] is True
    assert live_procs_with_arg("41.03") == []


def test_huge_output_keeps_guest_memory_small(guest):
    resp = shell(guest, "head -c 50000000 /dev/zero | tr '\\0' x", timeout=30, cap=10000)
    assert resp["output_bytes"] == 50_000_000
    assert resp["truncated_bytes"] == 50_000_000 - 10000
    assert resp["output"] == "x" * 5000 + "\n[... 49990000 bytes omitted ...]\n" + "x" * 5000
    status = Path(f"/proc/{guest['proc'].pid}/status").read_text()
    peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    assert peak_kb < 60 * 1024


def guest_zombie_children(g: dict[str, Any]) -> list[int]:
    """Zombies whose parent is the guest: adopted orphans it failed to reap."""
    found = []
    for name in os.listdir("/proc"):
        try:
            stat_line = Path(f"/proc/{name}/stat").read_bytes()
        except (OSError, ValueError):
            continue
        fields = stat_line[stat_line.rindex(b")") + 2 :].split()
        if fields[0] == b"Z" and int(fields[1]) == g["proc"].pid:
            found.append(int(name))
    return found


def test_setsid_escapees_are_killed_when_their_call_returns(guest):
    escape = "setsid sleep 41.05 >/dev/null 2>&1 </dev/null & (setsid sleep 41.05 </dev/null >/dev/null 2>&1 &)"
    resp = shell(guest, escape + "; sleep 0.2; echo started")
    assert resp["output"] == "started\n" and resp["exit_code"] == 0
    assert live_procs_with_arg("41.05") == []
    assert guest_zombie_children(guest) == []


def test_cleanup_after_a_call_spares_a_parallel_call(guest):
    results: dict[str, dict[str, Any]] = {}
    slow = threading.Thread(
        target=lambda: results.update(slow=shell(guest, "setsid sleep 0.8 & p=$!; sleep 1; wait $p; echo done $?"))
    )
    slow.start()
    time.sleep(0.3)
    results["quick"] = shell(guest, "setsid sleep 41.06 >/dev/null 2>&1 </dev/null & sleep 0.1; echo quick")
    assert slow.is_alive()  # the quick call's cleanup ran while the slow one was running
    slow.join()
    assert results["quick"]["output"] == "quick\n"
    assert results["slow"]["output"] == "done 0\n"  # its own setsid child was not killed
    assert live_procs_with_arg("41.06") == []


def test_commands_are_the_oom_killers_first_choice_and_bash_env_is_gone(guest):
    out = shell(guest, "cat /proc/self/oom_score_adj /proc/$$/oom_score_adj; env")["output"].splitlines()
    assert out[:2] == ["1000", "1000"]
    assert not [line for line in out if line.startswith("BASH_ENV=")]
    assert Path(f"/proc/{guest['proc'].pid}/oom_score_adj").read_text().strip() != "1000"


# --- read_file -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(guest):
    w = guest["workdir"]
    (w / "five.txt").write_bytes(b"one\ntwo\nthree\nfour\nfive")  # no final newline
    (w / "empty.txt").write_bytes(b"")
    (w / "blob.bin").write_bytes(b"ELF\x00\x01\x02" + b"x" * 100)
    (w / "sub").mkdir()
    os.mkfifo(w / "pipe")
    return w


def test_read_whole_file_and_ranges(guest, files):
    full = read(guest, "five.txt")
    assert full == {
        "status": "ok",
        "content": "one\ntwo\nthree\nfour\nfive",
        "total_lines": 5,
        "output_bytes": 23,
        "truncated_bytes": 0,
        "message": "",
    }
    assert read(guest, "five.txt", 2, 3)["content"] == "two\nthree\n"
    assert read(guest, "five.txt", 4)["content"] == "four\nfive"
    assert read(guest, "five.txt", None, 2)["content"] == "one\ntwo\n"
    assert read(guest, "five.txt", 5, 99)["content"] == "five"
    assert read(guest, str(files / "five.txt"), 1, 1)["content"] == "one\n"
    empty = read(guest, "empty.txt", 1)
    assert empty["status"] == "ok" and empty["content"] == "" and empty["total_lines"] == 0


def test_read_invalid_ranges(guest, files):
    for start, end in [(4, 2), (6, None), (0, 3)]:
        resp = read(guest, "five.txt", start, end)
        assert resp["status"] == "invalid_range" and resp["content"] == ""
        assert resp["total_lines"] == 5 and "5 lines" in resp["message"]


def test_read_statuses(guest, files):
    missing = read(guest, "src/x.py")
    assert missing["status"] == "not_found" and "src/x.py" in missing["message"]
    assert read(guest, "sub")["status"] == "is_a_directory"
    assert read(guest, "blob.bin")["status"] == "binary"
    assert read(guest, "/dev/null")["status"] == "not_a_regular_file"
    started = time.monotonic()
    assert read(guest, "pipe")["status"] == "not_a_regular_file"  # and it must not block
    assert time.monotonic() - started < 2


def test_read_proc_file(guest):
    resp = read(guest, "/proc/self/status", 1, 1)
    assert resp["status"] == "ok" and resp["content"].startswith("Name:")
    assert resp["total_lines"] > 5


def test_the_file_is_opened_by_a_reader_process_not_by_the_guest(guest):
    # /proc/self is whoever opens the path: the reader (cat), never the guest itself.
    assert read(guest, "/proc/self/status", 1, 1)["content"] == "Name:\tcat\n"
    assert read(guest, "/proc/self/cmdline")["status"] == "binary"  # cat's NUL-separated argv


def test_a_read_error_is_a_status_never_an_error_reply(guest, files):
    mem = read(guest, "/proc/self/mem")
    assert mem["status"] == "unreadable" and mem["content"] == ""
    assert mem["message"] == "could not read /proc/self/mem: Input/output error"
    os.symlink("loop", files / "loop")
    assert read(guest, "loop")["message"] == "could not read loop: Too many levels of symbolic links"
    assert read(guest, "five.txt/x")["status"] == "not_found"


def test_read_truncates_with_the_same_marker(guest, files):
    (files / "long.txt").write_bytes(b"".join(b"line %05d\n" % i for i in range(1, 2001)))
    resp = read(guest, "long.txt", 2, 1999, cap=22)
    assert resp["total_lines"] == 2000
    assert resp["output_bytes"] == 1998 * 11 and resp["truncated_bytes"] == 1998 * 11 - 22
    assert resp["content"] == ("line 00002\n\n[... 21956 bytes omitted ...]\nline 01999\n")


def test_read_nul_after_probe_window_is_text(guest, files):
    (files / "late_nul.txt").write_bytes(b"a\n" * 5000 + b"\x00\n")
    resp = read(guest, "late_nul.txt", 5000, 5000)
    assert resp["status"] == "ok" and resp["content"] == "a\n" and resp["total_lines"] == 5001


# --- in-process checks of pieces that are hard to provoke for real ----------------------


GUEST_SIBLINGS = ("guest_shell", "guest_files", "guest_procs", "guest_common", "guest_protocol")


class GuestNamespace:
    """guest.py and the sibling modules it imports, seen as the one module the guest once was.

    A name is read from the first module that has it. Setting it (monkeypatch) overrides it
    in every module that has it, so the guest's own code uses the override; deleting it
    (monkeypatch's undo) puts the modules' own values back.
    """

    def __init__(self, modules: list[Any]) -> None:
        object.__setattr__(self, "_modules", modules)
        object.__setattr__(self, "_saved", {})

    def __getattr__(self, name: str) -> Any:
        for module in self._modules:
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        owners = [module for module in self._modules if hasattr(module, name)]
        if not owners:
            raise AttributeError(name)
        for module in owners:
            self._saved.setdefault((module, name), getattr(module, name))
            setattr(module, name, value)

    def __delattr__(self, name: str) -> None:
        for (module, saved_name), value in list(self._saved.items()):
            if saved_name == name:
                setattr(module, name, value)
                del self._saved[module, name]


def load_guest_module():
    for name in GUEST_SIBLINGS:  # loaded afresh each time, like guest.py itself
        sys.modules.pop(name, None)
    spec = importlib.util.spec_from_file_location("sandbox_guest_under_test", GUEST)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # imports its siblings from its own directory
    return GuestNamespace([module, *(sys.modules[name] for name in GUEST_SIBLINGS)])


def test_head_tail_buffer_streams_in_small_writes():
    g = load_guest_module()
    buf = g.HeadTailBuffer(10)
    for byte in b"0123456789abcdefghij":
        buf.write(bytes([byte]))
    assert buf.total == 20 and buf.dropped == 10
    assert buf.text() == "01234\n[... 10 bytes omitted ...]\nfghij"
    assert len(buf.head) + len(buf.tail) == 10


def test_fork_failure_is_retried_then_reported_retryable(monkeypatch):
    g = load_guest_module()
    calls = []

    def failing_popen(*args, **kwargs):
        calls.append(kwargs["cwd"])
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(g.subprocess, "Popen", failing_popen)
    started = time.monotonic()
    resp = g.handle({"op": "shell", "command": "true", "timeout": 5}, "/", None)
    assert 0.9 < time.monotonic() - started < 3
    assert resp["retryable"] is True
    assert resp["error"].startswith("could not start the command: ")
    assert len(calls) > 5


def test_a_reader_that_cannot_start_is_reported_pids_exhausted(monkeypatch, tmp_path):
    from sandbox.domain.classify import read_file_outcome

    g = load_guest_module()
    (tmp_path / "f.txt").write_text("x\n")

    def failing_popen(*args, **kwargs):
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(g.subprocess, "Popen", failing_popen)
    resp = g.handle({"op": "read_file", "path": "f.txt"}, str(tmp_path), None)
    assert resp["error"].startswith("could not start reading f.txt: ")
    assert resp["retryable"] is True and resp["pids_exhausted"] is True
    assert read_file_outcome(resp, "f.txt")[:2] == ("model_error", "pids_exhausted")


def test_a_request_no_thread_can_be_started_for_is_still_answered(monkeypatch, tmp_path):
    g = load_guest_module()
    sock = tmp_path / "g.sock"
    server = g.GuestServer(str(sock), str(tmp_path), None)
    clients = []
    try:
        for request in ({"op": "shell", "command": "echo hi"}, {"op": "ping"}):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.settimeout(10)
            client.connect(str(sock))
            client.sendall(json.dumps(request).encode() + b"\n")
            clients.append(client)

        def no_thread(self):
            raise RuntimeError("can't start new thread")

        with monkeypatch.context() as m:
            m.setattr(threading.Thread, "start", no_thread)
            server.handle_request()
            server.handle_request()
        replies = [json.loads(client.makefile("rb").readline()) for client in clients]
    finally:
        server.server_close()
        for client in clients:
            client.close()
    assert replies[0]["pids_exhausted"] is True and replies[0]["retryable"] is True
    assert "could not start a thread" in replies[0]["error"]
    assert replies[1]["ok"] is True


def test_every_read_file_status_the_guest_answers_is_the_models():
    from sandbox.domain.classify import read_file_outcome
    from sandbox.guest.guest_protocol import READ_FILE_STATUSES

    for status in READ_FILE_STATUSES:
        reply = {"status": status, "content": "", "total_lines": 0, "output_bytes": 0, "truncated_bytes": 0}
        outcome, _, text = read_file_outcome({**reply, "message": ""}, "p.txt")
        assert outcome == ("ok" if status == "ok" else "model_error"), status
    unreadable = {**reply, "status": "unreadable", "message": "could not read /proc/self/mem: Input/output error"}
    assert read_file_outcome(unreadable, "/proc/self/mem") == (
        "model_error",
        "unreadable_file",
        "read_file: could not read /proc/self/mem: Input/output error",
    )


def test_oom_evidence_needs_sigkill_and_a_counter_increase(monkeypatch, tmp_path):
    g = load_guest_module()
    counter = iter(range(100))
    monkeypatch.setattr(g, "read_oom_count", lambda: next(counter))
    req = {"op": "shell", "command": "kill -KILL $$", "timeout": 5}
    assert g.handle(req, str(tmp_path), None)["oom_killed"] is True
    assert g.handle(dict(req, command="exit 1"), str(tmp_path), None)["oom_killed"] is False
    timed_out = g.handle(dict(req, command="sleep 5", timeout=0.2), str(tmp_path), None)
    assert timed_out["timed_out"] is True and timed_out["oom_killed"] is False
    monkeypatch.setattr(g, "read_oom_count", lambda: 3)  # counter unchanged
    assert g.handle(req, str(tmp_path), None)["oom_killed"] is False


# --- once mode and lifecycle -----------------------------------------------------------


def run_once(
    payload: bytes, workdir: Path, user: str = USER, argv: list[str] = PYTHON_GUEST
) -> subprocess.CompletedProcess[str]:
    arg = base64.b64encode(payload).decode()
    return subprocess.run(
        [*argv, "once", arg, "--user", user, "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_once_mode(tmp_path, guest_argv):
    done = run_once(
        json.dumps({"op": "shell", "command": "echo hi; exit 4", "timeout": 5, "output_cap": 100}).encode(),
        tmp_path,
        argv=guest_argv,
    )
    assert done.returncode == 0 and done.stdout.count("\n") == 1
    resp = json.loads(done.stdout)
    assert resp["output"] == "hi\n" and resp["exit_code"] == 4
    ping = run_once(b'{"op": "ping"}', tmp_path, argv=guest_argv)
    assert json.loads(ping.stdout)["ok"] is True
    unknown = run_once(b'{"op": "nope"}', tmp_path, argv=guest_argv)
    assert unknown.returncode == 0 and json.loads(unknown.stdout) == {"error": "unknown op: nope"}
    bad = run_once(b"{not json", tmp_path, argv=guest_argv)
    assert bad.returncode != 0 and "error" in json.loads(bad.stdout)


@pytest.mark.skipif(os.getuid() != 0, reason="switching users needs root")
def test_once_mode_switches_user_when_root(tmp_path, guest_argv):
    nobody = pwd.getpwnam("nobody")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # root may enter it, nobody may not: the cwd is entered as nobody
    done = run_once(
        json.dumps(
            {"op": "shell", "command": "id -u; id -g; echo $USER $HOME; pwd", "timeout": 5, "cwd": str(private)}
        ).encode(),
        tmp_path,
        user="nobody",
        argv=guest_argv,
    )
    uid, gid, user, home, cwd = json.loads(done.stdout)["output"].split()
    assert (uid, gid, user, home) == (str(nobody.pw_uid), str(nobody.pw_gid), "nobody", nobody.pw_dir)
    assert cwd in (nobody.pw_dir, "/")


def test_sigterm_exits_cleanly_and_stale_socket_is_replaced(tmp_path, guest_argv):
    sock = tmp_path / "guest.sock"
    sock.write_text("stale leftover")
    proc = start_server(sock, tmp_path, tmp_path / "log", guest_argv)
    assert stat.S_ISSOCK(sock.stat().st_mode)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0


@pytest.mark.skipif(os.getuid() != 0, reason="switching users needs root")
def test_users_switch_through_setpriv_when_it_works_and_through_popen_otherwise(monkeypatch, tmp_path):
    g = load_guest_module()
    nobody = pwd.getpwnam("nobody")
    ident = g.resolve_identity("nobody")
    assert ident.switch and ident.switch[0] in g.SETPRIV_PATHS  # this Debian host has util-linux setpriv
    fallback = g.Identity(ident.name, ident.home, ident.uid, ident.gid, ident.groups)  # no setpriv: Popen(user=)
    for who in (ident, fallback):
        done = g.run_shell({"command": "id -u; id -g; id -G"}, "/", who)
        assert done["output"].split() == [str(nobody.pw_uid), str(nobody.pw_gid), str(nobody.pw_gid)], who
    # A setpriv that runs the program without switching (like busybox's, which has no
    # --reuid) fails the probe, so commands never run as root by mistake.
    fake = tmp_path / "setpriv"
    fake.write_text('#!/bin/sh\nwhile [ "$1" != "--" ]; do shift; done; shift; exec "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setattr(g, "SETPRIV_PATHS", (str(fake),))
    g.setpriv_prefix.cache_clear()
    assert g.setpriv_prefix(nobody.pw_uid, nobody.pw_gid, (nobody.pw_gid,)) == ()


@pytest.mark.skipif(os.getuid() != 0, reason="switching users needs root")
def test_read_file_reads_as_the_user_when_root():
    g = load_guest_module()
    workdir = Path(tempfile.mkdtemp(prefix="guest-read-"))  # not under pytest's 0700 tmp
    try:
        workdir.chmod(0o755)
        (workdir / "secret").write_text("root only\n")
        (workdir / "secret").chmod(0o600)
        (workdir / "public").write_text("one\ntwo\n")
        (workdir / "public").chmod(0o644)
        os.symlink(workdir / "secret", workdir / "link")
        for path in ("secret", "link"):
            resp = g.handle({"op": "read_file", "path": path}, str(workdir), "nobody")
            assert (resp["status"], resp["content"]) == ("permission_denied", ""), resp
            assert resp["message"] == f"permission denied: {path}"
        assert g.handle({"op": "read_file", "path": "public", "start_line": 2}, str(workdir), "nobody")["content"] == (
            "two\n"
        )
        root = g.handle({"op": "read_file", "path": "secret"}, str(workdir), "root")
        assert root["content"] == "root only\n"  # the same file, read as a user who may
    finally:
        shutil.rmtree(workdir)
