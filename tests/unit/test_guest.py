"""The guest (the native binary, sandbox/guest/native) as a whole: its build, the protocol's
constants, serving and once mode, malformed requests, users, descriptors and the pids limit. The
ops have files of their own: test_guest_shell.py, test_guest_read_file.py,
test_guest_trainer_ops.py (exec), test_guest_transfer.py (upload, download) and
test_guest_run_tests.py. Pieces that are hard to provoke for real (a failing fork, the OOM counter,
the head + tail buffer in small writes) are checked by the Go tests beside the sources, which
test_go_unit_tests runs."""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sandbox.domain.classify import read_file_outcome
from sandbox.guest import guest_protocol
from sandbox.guest.guest_protocol import READ_FILE_STATUSES
from tests.unit.guest_process import (
    BUILD,
    NATIVE,
    call,
    live_procs_with_arg,
    normalized,
    raw_call,
    run_once,
    start_server,
    wire,
    world_readable_dir,
)

# --- the binary and its build ---------------------------------------------------------------------


def test_the_build_is_static_and_idempotent(native_guest: Path):
    data = native_guest.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # 64-bit ELF
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 0x20)[0], *struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    assert 3 not in types and 2 not in types  # no PT_INTERP, no PT_DYNAMIC: static, no libc
    mtime = native_guest.stat().st_mtime_ns
    again = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=120, check=True)
    assert again.stdout.strip().startswith("[native-guest] up to date") and again.stdout.count("\n") == 1
    assert native_guest.stat().st_mtime_ns == mtime


def test_go_unit_tests(native_guest: Path):
    """gofmt, go vet and the Go tests (*_test.go beside the sources), offline as the build."""
    done = subprocess.run([str(BUILD), "test"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def go_constants() -> dict[str, Any]:
    """The constants of protocol.go (integers, floats, strings), read from its source."""
    found: dict[str, Any] = {}
    for line in (NATIVE / "protocol.go").read_text().splitlines():
        m = re.match(r"\s*(\w+)\s*=\s*([^/]+?)\s*(//.*)?$", line)
        if m and re.fullmatch(r'[0-9.* ]+|"[^"]*"', m.group(2)):
            found[m.group(1)] = eval(m.group(2))  # literals and products of literals only
    return found


def test_protocol_constants_match():
    go = go_constants()
    pairs = {
        "Version": "VERSION",
        "OpPing": "OP_PING",
        "OpShell": "OP_SHELL",
        "OpReadFile": "OP_READ_FILE",
        "OpRunTests": "OP_RUN_TESTS",
        "OpExec": "OP_EXEC",
        "MaxRequest": "MAX_REQUEST",
        "DefaultTimeout": "DEFAULT_TIMEOUT",
        "DefaultCap": "DEFAULT_CAP",
        "MaxOutputCap": "MAX_OUTPUT_CAP",
        "MaxFileRead": "MAX_FILE_READ",
        "BinaryProbe": "BINARY_PROBE",
        "ReadFileTimeout": "READ_FILE_TIMEOUT",
    }
    for go_name, py_name in pairs.items():
        assert go[go_name] == getattr(guest_protocol, py_name), go_name
    statuses = {v for k, v in go.items() if k.startswith("Status")}
    assert statuses == set(READ_FILE_STATUSES)


# --- how the host side reads the guest's replies ----------------------------------------------------


def test_every_read_file_status_the_guest_answers_is_the_models():
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


def test_a_reader_that_cannot_start_maps_to_the_models_pids_exhausted():
    """The reply procs_test.go checks the guest gives when it cannot start a reader."""
    reply = {
        "error": "could not start reading f.txt: [Errno 11] Resource temporarily unavailable",
        "retryable": True,
        "pids_exhausted": True,
    }
    assert read_file_outcome(reply, "f.txt")[:2] == ("model_error", "pids_exhausted")


# --- serving ---------------------------------------------------------------------------------------


def test_ping_and_socket_permissions(guest):
    resp = call(guest["sock"], {"op": "ping"})
    assert resp == {"ok": True, "version": guest_protocol.VERSION, "pid": guest["proc"].pid}
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
    threads = [
        threading.Thread(target=lambda: results.append(call(guest["sock"], {"op": "shell", "command": "sleep 0.6"})))
        for _ in range(5)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started < 2.0
    assert [r["exit_code"] for r in results] == [0] * 5


# --- malformed requests, in full --------------------------------------------------------------------


def error(message: str) -> dict[str, Any]:
    return {"error": message}


NO_JSON = error("request is not valid JSON")
PING = {"ok": True, "version": guest_protocol.VERSION, "pid": 0}
TIMEOUT_NUMBER, TIMEOUT_POSITIVE = error("'timeout' must be a finite number"), error("'timeout' must be positive")
CAP = error("'output_cap' must be a non-negative integer")
NUL = error("'command' and 'cwd' must not contain NUL characters")
READ_PATH = error("read_file needs a non-empty string 'path' without NUL characters")
EXEC_ONE = error("exec needs exactly one of 'argv' (a list of strings) and 'command' (a string)")
ARGV = error("'argv' must be a non-empty list of strings without NUL characters")
ENV = error("'env' must map names (no '=' or NUL) to strings (no NUL)")


def shell_done(output: str) -> dict[str, Any]:
    return {
        "exit_code": 0,
        "signal": None,
        "timed_out": False,
        "oom_killed": False,
        "output": output,
        "output_bytes": len(output),
        "truncated_bytes": 0,
        "duration_ms": 0,
    }


# (what is sent: a request or raw bytes, the reply). Raw bytes without a newline: the write side shut.
MALFORMED: list[tuple[dict[str, Any] | bytes, dict[str, Any]]] = [
    (b"this is not json\n", NO_JSON),
    (b"[1, 2]\n", error("request must be a JSON object")),
    (b"\xff\xfe\n", NO_JSON),
    (b"\xef\xbb\xbf" + b'{"op": "ping", "x": 1}\n', PING),  # a UTF-8 BOM is skipped, unknown fields too
    (b'{"op": "ping"} {"op": "ping"}\n', NO_JSON),
    (b'{"op": "ping", "no": "newline, the write side shut"}', PING),
    (b"\n", NO_JSON),
    (b'{"op": "shell", "command": "echo a"}\nignored after the line\n', shell_done("a\n")),
    (b'{"op": "ping", "pad": "' + b"x" * (4 * 1024 * 1024 + 10) + b'"}\n', error("request too large (limit 4 MiB)")),
    ({"op": "frobnicate"}, error("unknown op: frobnicate")),
    ({"op": None}, error("unknown op: None")),
    ({"op": 3.5}, error("unknown op: 3.5")),
    ({"op": ["a", 1, None, True, {"k": "it's"}]}, error("unknown op: ['a', 1, None, True, {'k': \"it's\"}]")),
    ({"nop": "ping"}, error("unknown op: None")),
    ({"op": "shell"}, error("shell needs a string 'command'")),
    ({"op": "shell", "command": 3}, error("shell needs a string 'command'")),
    ({"op": "shell", "command": "true", "timeout": "soon"}, TIMEOUT_NUMBER),
    ({"op": "shell", "command": "true", "timeout": 0}, TIMEOUT_POSITIVE),
    ({"op": "shell", "command": "true", "timeout": -1.5}, TIMEOUT_POSITIVE),
    ({"op": "shell", "command": "true", "timeout": True}, TIMEOUT_NUMBER),
    ({"op": "shell", "command": "true", "output_cap": -1}, CAP),
    ({"op": "shell", "command": "true", "output_cap": 1.0}, CAP),
    ({"op": "shell", "command": "true", "output_cap": False}, CAP),
    ({"op": "shell", "command": "true", "cwd": 3}, error("'cwd' must be a string or null")),
    ({"op": "shell", "command": "true", "cwd": 0}, shell_done("")),  # falsy: the workdir
    ({"op": "shell", "command": "a\u0000b"}, NUL),
    ({"op": "shell", "command": "true", "cwd": "a\u0000"}, NUL),
    ({"op": "read_file", "path": 3}, READ_PATH),
    ({"op": "read_file", "path": ""}, READ_PATH),
    ({"op": "read_file", "path": "x\u0000"}, READ_PATH),
    ({"op": "read_file", "path": "five.txt", "start_line": "1"}, error("'start_line' must be an integer or null")),
    ({"op": "read_file", "path": "five.txt", "end_line": 1.0}, error("'end_line' must be an integer or null")),
    ({"op": "read_file", "path": "five.txt", "start_line": True}, error("'start_line' must be an integer or null")),
    ({"op": "read_file", "path": "five.txt", "output_cap": -5}, CAP),
    ({"op": "exec"}, EXEC_ONE),
    ({"op": "exec", "argv": ["ls"], "command": "ls"}, EXEC_ONE),
    ({"op": "exec", "argv": []}, ARGV),
    ({"op": "exec", "argv": "ls"}, ARGV),
    ({"op": "exec", "argv": ["ls", 1]}, ARGV),
    ({"op": "exec", "command": ["ls"]}, error("'command' must be a string without NUL characters")),
    ({"op": "exec", "command": "ls", "env": {"A=B": "x"}}, ENV),
    ({"op": "exec", "command": "ls", "env": {"": "x"}}, ENV),
    ({"op": "exec", "command": "ls", "env": {"A": 1}}, ENV),
    ({"op": "exec", "command": "ls", "env": "A=B"}, ENV),
    ({"op": "exec", "command": "ls", "merge_stderr": 1}, error("'merge_stderr' must be true or false")),
    ({"op": "exec", "command": "ls", "cwd": ["x"]}, error("'cwd' must be a string without NUL characters, or null")),
    ({"op": "exec", "command": "ls", "timeout": 0}, TIMEOUT_POSITIVE),
]


def test_malformed_requests_are_answered_in_full(guest):
    for request, expected in MALFORMED:
        line = request if isinstance(request, bytes) else wire(request)
        reply = raw_call(guest["sock"], line, shut=not line.endswith(b"\n"))
        assert normalized(reply) == wire(expected), line[:300]
    assert call(guest["sock"], {"op": "ping"})["ok"] is True


# --- once mode and lifecycle -----------------------------------------------------------------------


def test_once_mode(tmp_path, native_guest):
    done = run_once(
        json.dumps({"op": "shell", "command": "echo hi; exit 4", "timeout": 5, "output_cap": 100}).encode(),
        tmp_path,
    )
    assert done.returncode == 0 and done.stdout.count("\n") == 1
    resp = json.loads(done.stdout)
    assert resp["output"] == "hi\n" and resp["exit_code"] == 4
    ping = run_once(b'{"op": "ping"}', tmp_path)
    assert json.loads(ping.stdout)["ok"] is True
    unknown = run_once(b'{"op": "nope"}', tmp_path)
    assert unknown.returncode == 0 and json.loads(unknown.stdout) == {"error": "unknown op: nope"}
    bad = run_once(b"{not json", tmp_path)
    assert bad.returncode != 0 and "error" in json.loads(bad.stdout)


@pytest.mark.skipif(os.getuid() != 0, reason="switching users needs root")
def test_once_mode_switches_user_when_root(tmp_path, native_guest):
    nobody = pwd.getpwnam("nobody")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # root may enter it, nobody may not: the cwd is entered as nobody
    done = run_once(
        json.dumps(
            {"op": "shell", "command": "id -u; id -g; echo $USER $HOME; pwd", "timeout": 5, "cwd": str(private)}
        ).encode(),
        tmp_path,
        user="nobody",
    )
    uid, gid, user, home, cwd = json.loads(done.stdout)["output"].split()
    assert (uid, gid, user, home) == (str(nobody.pw_uid), str(nobody.pw_gid), "nobody", nobody.pw_dir)
    assert cwd in (nobody.pw_dir, "/")


def test_sigterm_exits_cleanly_and_stale_socket_is_replaced(tmp_path, native_guest):
    sock = tmp_path / "guest.sock"
    sock.write_text("stale leftover")
    proc = start_server(sock, tmp_path, tmp_path / "log")
    assert stat.S_ISSOCK(sock.stat().st_mode)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0


ONCE: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (
        {"op": "shell", "command": "echo hi; echo err >&2; exit 4", "timeout": 5, "output_cap": 100},
        {**shell_done("hi\nerr\n"), "exit_code": 4},
    ),
    (
        {"op": "read_file", "path": "f.txt", "start_line": 2},
        {"status": "ok", "content": "b\n", "total_lines": 2, "output_bytes": 2, "truncated_bytes": 0, "message": ""},
    ),
    (
        {"op": "exec", "argv": ["sh", "-c", "echo o; echo e >&2"]},
        {
            "exit_code": 0,
            "signal": None,
            "timed_out": False,
            "oom_killed": False,
            "stdout": "o\n",
            "stderr": "e\n",
            "stdout_bytes": 2,
            "stderr_bytes": 2,
            "stdout_truncated_bytes": 0,
            "stderr_truncated_bytes": 0,
            "duration_ms": 0,
        },
    ),
    ({"op": "nope"}, error("unknown op: nope")),
    (
        {"op": "upload", "path": "x", "kind": "file", "size": 1},
        error("upload streams its bytes on a connection of its own: serve mode only"),
    ),
    ({"op": "download", "path": "x"}, error("download streams its bytes on a connection of its own: serve mode only")),
    ({"op": "ping"}, PING),
]


def test_once_mode_answers_in_full(tmp_path: Path, native_guest: Path):
    (tmp_path / "f.txt").write_text("a\nb\n")
    for request, expected in ONCE:
        done = run_once(json.dumps(request).encode(), tmp_path)
        assert (done.returncode, done.stderr) == (0, ""), request
        assert normalized(done.stdout.encode()) == wire(expected), request
    for bad in ("{not json", "!!!", "W10="):  # not JSON, not base64, not an object
        arg = bad if bad != "{not json" else base64.b64encode(bad.encode()).decode()
        refused = subprocess.run([str(native_guest), "once", arg, "--workdir", str(tmp_path)], capture_output=True)
        assert refused.returncode == 2 and refused.stdout.count(b"\n") == 1
        assert json.loads(refused.stdout)["error"].startswith("could not decode the request: ")


def test_sigint_too_ends_the_server_cleanly(tmp_path: Path, native_guest: Path):
    sock = tmp_path / "guest.sock"
    proc = start_server(sock, tmp_path, tmp_path / "log")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=5) == 0 and not sock.exists()


def test_commands_do_not_inherit_the_guests_descriptors(tmp_path: Path, native_guest: Path):
    """ForkExec passes on whatever is not close-on-exec, so the guest marks what it inherited."""
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        cmd = [str(native_guest), "once", base64.b64encode(b'{"op": "shell", "command": "ls /proc/self/fd"}').decode()]
        done = subprocess.run([*cmd, "--workdir", str(tmp_path)], capture_output=True, pass_fds=(w,), timeout=20)
    finally:
        os.close(r)
        os.close(w)
    assert json.loads(done.stdout)["output"].split() == ["0", "1", "2", "3"]  # 3: ls's own listing


# --- users and the pids limit -----------------------------------------------------------------------


@pytest.mark.skipif(os.getuid() != 0, reason="switching users needs root")
def test_users_switch_uid_gid_and_groups(native_guest: Path):
    nobody = pwd.getpwnam("nobody")
    workdir = world_readable_dir("guest-switch-")
    try:
        done = run_once(
            json.dumps(
                {"op": "shell", "command": "id -u; id -g; id -G; grep -E '^(Uid|Gid)' /proc/self/status"}
            ).encode(),
            workdir,
            user="nobody",
        )
        out = json.loads(done.stdout)["output"].split()
        uid, gid = str(nobody.pw_uid), str(nobody.pw_gid)
        assert out[:3] == [uid, gid, gid]
        assert out[3:] == ["Uid:", uid, uid, uid, uid, "Gid:", gid, gid, gid, gid]  # real, effective, saved, fs
        missing = run_once(b'{"op": "shell", "command": "id"}', workdir, user="no-such-user-x")
        assert json.loads(missing.stdout) == {"error": "no such user: no-such-user-x"}
    finally:
        shutil.rmtree(workdir)


@pytest.mark.skipif(os.getuid() != 0, reason="setting up an unprivileged guest needs root")
def test_pids_exhaustion_is_reported_and_survived(native_guest: Path):
    """The guest as an unprivileged user under a small process limit (RLIMIT_NPROC counts its
    threads too, as a container's pids limit does): a command uses the limit up; meanwhile a ping
    is answered, a shell call and a read_file get pids_exhausted errors after retrying for ~1 s,
    and the guest (whose Go runtime aborts if it cannot make a thread it needs) lives on."""
    if any(pwd.getpwuid(os.stat(f"/proc/{p}").st_uid).pw_name == "nobody" for p in os.listdir("/proc") if p.isdigit()):
        pytest.skip("processes of nobody already run here: the limit would count them")
    base = world_readable_dir("native-pids-")
    os.chown(base, pwd.getpwnam("nobody").pw_uid, -1)
    (base / "f.txt").write_text("x\n")
    sock = base / "run" / "guest.sock"
    limit = 40
    cmd = ["prlimit", f"--nproc={limit}", "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    log = base / "guest.log"
    proc = subprocess.Popen(
        [*cmd, str(native_guest), "serve", "--socket", str(sock), "--workdir", str(base)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        bomb: dict[str, Any] = {}
        # python3, not a bash loop: bash retries a failed fork for many seconds. It holds the
        # limit until the test is done with it (the file `release` appears), 20 s at most.
        release = base / "release"
        fill = (
            "python3 -c 'import os, time\n"
            "for _ in range(100):\n"
            "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
            '    if pid == 0:\n        os.execvp("sleep", ["sleep", "43.21"])\n'
            "end = time.time() + 20\n"
            f'while not os.path.exists("{release}") and time.time() < end:\n    time.sleep(0.05)\n'
            'print("held")\''
        )
        holder = threading.Thread(
            target=lambda: bomb.update(call(sock, {"op": "shell", "command": fill, "timeout": 25}, timeout=40))
        )
        holder.start()
        time.sleep(1.5)  # the limit is used up by now
        assert holder.is_alive()
        assert call(sock, {"op": "ping"})["ok"] is True
        started = time.monotonic()
        refused = call(sock, {"op": "shell", "command": "echo hi"})
        assert 0.9 < time.monotonic() - started < 3.5
        assert refused["error"].startswith("could not start the command: [Errno 11] ")
        assert refused["retryable"] is True and refused["pids_exhausted"] is True
        unread = call(sock, {"op": "read_file", "path": "f.txt"})
        assert unread["error"].startswith("could not start reading f.txt: ") and unread["pids_exhausted"] is True
        burst: list[dict[str, Any]] = []  # many at once: still no thread the guest cannot make
        requests = [{"op": "exec", "argv": ["true"]}] * 12 + [{"op": "ping"}] * 4
        threads = [threading.Thread(target=lambda r=r: burst.append(call(sock, r))) for r in requests]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.get("pids_exhausted", r.get("ok")) for r in burst] == [True] * 16, burst
        assert holder.is_alive()
        release.touch()
        holder.join()
        assert bomb["output"] == "held\n" and bomb["exit_code"] == 0
        assert live_procs_with_arg("43.21") == []
        assert call(sock, {"op": "shell", "command": "echo back"})["output"] == "back\n"
        assert proc.poll() is None, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0, log.read_text()
        shutil.rmtree(base)


def test_commands_start_with_no_signal_ignored_whatever_the_guest_inherited(tmp_path: Path, native_guest: Path):
    """An ignored signal survives exec: a guest handed SIGINT and SIGHUP ignored (a shell's
    background job, a test harness) must not hand them on to the model's commands."""
    request = base64.b64encode(json.dumps({"op": "shell", "command": "grep SigIgn /proc/self/status"}).encode())

    def ignore_some() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    done = subprocess.run(
        [str(native_guest), "once", request.decode(), "--workdir", str(tmp_path)],
        preexec_fn=ignore_some,
        capture_output=True,
        text=True,
    )
    assert json.loads(done.stdout)["output"] == "SigIgn:\t0000000000000000\n"
