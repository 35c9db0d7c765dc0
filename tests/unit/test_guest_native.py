"""The native guest (sandbox/guest/native, Go): the guest contract tests of test_guest.py (and the
exec tests of test_guest_trainer_ops.py) run against the binary, a side-by-side comparison with
the Python guest on identical requests, and what only the native guest has to show.

The binary is built first by its own script (build.sh: offline, idempotent). A machine without
Go fails here, loudly: install Debian's golang-go (deploy/install.sh does).

The contract tests are the same functions, collected again in this module, where the fixture
`guest_argv` names the binary instead of guest.py. Those that cannot apply to the native guest
yet are listed in EXCLUDED with the reason (shown as skips), each with its native counterpart
where there is one.
"""

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
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import tests.unit.test_guest as contract
import tests.unit.test_guest_trainer_ops as trainer_ops
from sandbox.domain.classify import read_file_outcome
from sandbox.guest import guest_protocol
from sandbox.guest.guest_protocol import READ_FILE_STATUSES
from tests.unit.test_guest import USER, call, live_procs_with_arg, raw_call, start_server

NATIVE = Path(__file__).resolve().parents[2] / "sandbox" / "guest" / "native"
BUILD = NATIVE / "build.sh"
BINARY = NATIVE / "bin" / "sandbox-guest"


@pytest.fixture(scope="session")
def native_guest() -> Path:
    """The binary, built (or found up to date) by build.sh."""
    if shutil.which("go") is None:
        pytest.fail(
            "the native guest needs Go to build and `go` is not on PATH: "
            "install Debian's golang-go (`apt-get install golang-go`, or deploy/install.sh)",
            pytrace=False,
        )
    done = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"build.sh failed:\n{done.stdout}{done.stderr}"
    assert BINARY.is_file() and os.access(BINARY, os.X_OK)
    return BINARY


@pytest.fixture(scope="module")
def guest_argv(native_guest: Path) -> list[str]:
    """Overrides test_guest.py's: every contract test collected here runs the binary."""
    return [str(native_guest)]


# --- the contract tests, collected again ----------------------------------------------------------

# Test functions of test_guest.py that do not run here, and why. Each is a skip with its reason.
EXCLUDED = {
    "test_head_tail_buffer_streams_in_small_writes": (
        "in-process check of the Python class; the Go buffer has the same check in output_test.go (test_go_unit_tests)"
    ),
    "test_fork_failure_is_retried_then_reported_retryable": (
        "monkeypatches Python's subprocess.Popen; procs_test.go makes the Go start fail the same way "
        "(test_go_unit_tests), and test_pids_exhaustion_is_reported_and_survived provokes it for real"
    ),
    "test_a_reader_that_cannot_start_is_reported_pids_exhausted": (
        "monkeypatches Python's subprocess.Popen; see procs_test.go (test_go_unit_tests) and "
        "test_a_native_start_failure_maps_to_the_models_pids_exhausted"
    ),
    "test_a_request_no_thread_can_be_started_for_is_still_answered": (
        "Python threads only: the native guest serves each connection on a goroutine, which needs no "
        "new thread (no NO_THREAD case); test_pids_exhaustion_is_reported_and_survived checks it keeps "
        "answering with the pids limit used up"
    ),
    "test_every_read_file_status_the_guest_answers_is_the_models": (
        "host side only, no guest involved (runs in test_guest.py); test_protocol_constants_match checks "
        "the native statuses are the protocol's"
    ),
    "test_oom_evidence_needs_sigkill_and_a_counter_increase": (
        "monkeypatches the Python counter; shell_test.go replaces the Go one the same way (test_go_unit_tests)"
    ),
    "test_users_switch_through_setpriv_when_it_works_and_through_popen_otherwise": (
        "setpriv and Popen(user=) are the Python guest's two roads; the native guest switches in the "
        "child (SysProcAttr.Credential): test_native_switches_uid_gid_and_groups"
    ),
    "test_read_file_reads_as_the_user_when_root": (
        "drives the Python guest in-process; test_native_read_file_reads_as_the_user_when_root does the "
        "same through the binary"
    ),
}


def _skipped(name: str, reason: str) -> Any:
    @pytest.mark.skip(reason=f"not for the native guest: {reason}")
    def test() -> None:
        pass

    test.__name__ = name
    return test


for _name, _value in vars(contract).items():
    if _name.startswith("test_") and callable(_value):
        globals()[_name] = _skipped(_name, EXCLUDED[_name]) if _name in EXCLUDED else _value
assert set(EXCLUDED) <= {n for n in vars(contract) if n.startswith("test_")}, "EXCLUDED names a test that is gone"
guest = contract.guest  # the module fixtures, here with this module's guest_argv
files = contract.files


# test_guest_trainer_ops.py: the exec tests run here; upload and download are not implemented by the
# native guest yet, and one test hard-codes the Python guest's command line.
TRAINER_EXCLUDED = {
    "test_exec_is_served_by_the_once_mode_fallback_too": (
        "runs guest.py by path; test_native_once_mode_serves_exec_and_refuses_stream_ops is its native twin"
    ),
    "test_upload_writes_a_file_with_its_parents_and_mode_and_download_reads_it_back": "upload/download: not yet",
    "test_upload_of_a_tar_unpacks_into_a_directory_and_download_tars_it_again": "upload/download: not yet",
    "test_a_failed_upload_says_why_in_the_writers_own_words": "upload: not implemented by the native guest yet",
    "test_an_upload_that_ends_short_is_a_failure_not_a_success": "upload: not implemented by the native guest yet",
    "test_failed_downloads_send_nothing_to_keep": "upload/download: not implemented by the native guest yet",
}
assert set(TRAINER_EXCLUDED) <= {n for n in vars(trainer_ops) if n.startswith("test_")}


class TestTrainerOps:
    """test_guest_trainer_ops.py's tests against a native guest of their own (their workdir use
    would clash with the contract tests' files)."""

    @pytest.fixture(scope="class")
    @classmethod
    def guest(cls, tmp_path_factory: pytest.TempPathFactory, guest_argv: list[str]):
        base = tmp_path_factory.mktemp("native-trainer")
        workdir = base / "workspace"
        workdir.mkdir()
        proc = start_server(base / "run" / "guest.sock", workdir, base / "guest.log", guest_argv)
        yield {"sock": base / "run" / "guest.sock", "workdir": workdir}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


for _name, _value in vars(trainer_ops).items():
    if _name.startswith("test_") and callable(_value):
        _test = _skipped(_name, TRAINER_EXCLUDED[_name]) if _name in TRAINER_EXCLUDED else _value
        setattr(TestTrainerOps, _name, staticmethod(_test))


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


def test_ping_reports_the_protocol_version(guest):
    assert call(guest["sock"], {"op": "ping"})["version"] == guest_protocol.VERSION


# --- the two guests side by side ------------------------------------------------------------------


def _normalize(reply: bytes) -> bytes:
    """A reply without what differs by nature: the guest's pid, durations."""
    reply = re.sub(rb'"pid":\d+', b'"pid":0', reply)
    return re.sub(rb'"duration_ms":[0-9.e+-]+', b'"duration_ms":0', reply)


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory, native_guest: Path):
    """The Python guest and the native one, serving the same workdir."""
    base = tmp_path_factory.mktemp("both")
    workdir = base / "workspace"
    workdir.mkdir()
    w = workdir
    (w / "five.txt").write_bytes(b"one\ntwo\nthree\nfour\nfive")
    (w / "empty.txt").write_bytes(b"")
    (w / "blob.bin").write_bytes(b"ELF\x00\x01\x02" + b"x" * 100)
    (w / "long.txt").write_bytes(b"".join(b"line %05d\n" % i for i in range(1, 2001)))
    (w / "late_nul.txt").write_bytes(b"a\n" * 5000 + b"\x00\n")
    (w / "utf8.txt").write_bytes(
        "\u00e9t\u00e9\n\u2028\u00e9\n\xff\xfe bad \xe2\x82\n".encode("utf-8", "surrogatepass")
    )
    (w / "latin1.txt").write_bytes(b"caf\xe9\n\xe2\x82A\n\xf0\x9f\x98\n\xed\xa0\x80\n")
    (w / "sub").mkdir()
    os.mkfifo(w / "pipe")
    os.symlink("loop", w / "loop")
    servers = {
        "python": start_server(base / "py.sock", workdir, base / "py.log"),
        "native": start_server(base / "go.sock", workdir, base / "go.log", [str(native_guest)]),
    }
    yield {"python": base / "py.sock", "native": base / "go.sock", "workdir": workdir}
    for proc in servers.values():
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


def _lines(*requests: Any) -> list[bytes]:
    return [r if isinstance(r, bytes) else json.dumps(r).encode() + b"\n" for r in requests]


SAME_REPLIES = {
    "shell": _lines(
        {"op": "shell", "command": "seq 1 200000; printf '\\303\\251\\377 end \\342\\202'", "output_cap": 1001},
        {"op": "shell", "command": "head -c 3000000 /dev/zero | tr '\\0' y", "output_cap": 16 * 1024 * 1024 + 5},
        {"op": "shell", "command": "printf '\\303\\251\\303\\251\\303\\251\\303\\251'", "output_cap": 3},
        {"op": "shell", "command": "echo out; echo err >&2; exit 3"},
        {"op": "shell", "command": "printf 'ctl \\001\\033\\b\\f\\t\\r\\n \" \\\\ < > & \\342\\200\\250 \\177'"},
        {"op": "shell", "command": "kill -TERM $$"},
        {"op": "shell", "command": "sleep 5", "timeout": 0.3},
        {"op": "shell", "command": "sleep 0.2 & echo bg", "timeout": 10},
        {"op": "shell", "command": "env; pwd; cat; umask; ulimit -n; ls /proc/self/fd; cat /proc/self/oom_score_adj"},
        {
            "op": "shell",
            "command": "grep -E '^(Sig(Ign|Blk)|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Groups)' /proc/self/status",
        },
        {"op": "shell", "command": "pwd; echo $PWD", "cwd": "sub"},
        {"op": "shell", "command": "pwd", "cwd": "/no/such/dir"},
        {"op": "shell", "command": "pwd", "cwd": ""},
        {"op": "shell", "command": "exit 300"},
        {"op": "shell", "command": "echo x", "output_cap": 0},
        {"op": "shell", "command": "echo x", "output_cap": 10**30},
        {"op": "shell", "command": "echo x", "timeout": 10**3, "cwd": None, "extra": [1, 2]},
    ),
    "read_file": _lines(
        {"op": "read_file", "path": "five.txt"},
        {"op": "read_file", "path": "five.txt", "start_line": 2, "end_line": 3},
        {"op": "read_file", "path": "five.txt", "end_line": 2},
        {"op": "read_file", "path": "five.txt", "start_line": 4, "end_line": None},
        {"op": "read_file", "path": "five.txt", "start_line": 5, "end_line": 99},
        {"op": "read_file", "path": "five.txt", "start_line": 4, "end_line": 2},
        {"op": "read_file", "path": "five.txt", "start_line": 0, "end_line": 3},
        {"op": "read_file", "path": "five.txt", "start_line": 6},
        {"op": "read_file", "path": "five.txt", "start_line": -(10**30), "end_line": 10**30},
        {"op": "read_file", "path": "five.txt", "start_line": 10**30},
        {"op": "read_file", "path": "empty.txt", "start_line": 1},
        {"op": "read_file", "path": "empty.txt", "start_line": 3, "end_line": 2},
        {"op": "read_file", "path": "long.txt", "start_line": 2, "end_line": 1999, "output_cap": 22},
        {"op": "read_file", "path": "long.txt", "start_line": 1500, "output_cap": 101},
        {"op": "read_file", "path": "late_nul.txt", "start_line": 5000, "end_line": 5001},
        {"op": "read_file", "path": "utf8.txt"},
        {"op": "read_file", "path": "latin1.txt"},
        {"op": "read_file", "path": "src/x.py"},
        {"op": "read_file", "path": "sub"},
        {"op": "read_file", "path": "blob.bin"},
        {"op": "read_file", "path": "/dev/null"},
        {"op": "read_file", "path": "pipe"},
        {"op": "read_file", "path": "/proc/self/mem"},
        {"op": "read_file", "path": "/proc/self/status", "start_line": 1, "end_line": 1},
        {"op": "read_file", "path": "/proc/self/cmdline"},
        {"op": "read_file", "path": "loop"},
        {"op": "read_file", "path": "five.txt/x"},
        {"op": "read_file", "path": "sub/../five.txt", "start_line": 1, "end_line": 1},
    ),
    "exec": _lines(
        {"op": "exec", "command": "echo out; echo err >&2; echo out2; exit 3"},
        {"op": "exec", "command": "echo out; echo err >&2; echo out2", "merge_stderr": True},
        {"op": "exec", "argv": ["printf", "%s|", "$HOME; ls", "*"]},
        # No BASH_ENV here: what the Python guest does with a trainer's BASH_ENV depends on whether
        # its own directory is world-searchable (guest_shell.py), so the two differ by install place.
        {"op": "exec", "argv": ["env"], "env": {"ZED": "1", "PATH": "/bin:/usr/bin", "A_VAR": "v=1"}},
        {"op": "exec", "argv": ["no-such-program-x"]},
        {"op": "exec", "argv": ["pwd"], "cwd": "sub"},
        {"op": "exec", "command": "echo never", "cwd": "no/such/dir"},
        {"op": "exec", "command": "sleep 5 & sleep 5", "timeout": 0.3},
        {
            "op": "exec",
            "command": "head -c 5000 /dev/zero | tr '\\0' a; head -c 3000 /dev/zero | tr '\\0' b >&2",
            "output_cap": 101,
        },
        {"op": "exec", "command": "ls /proc/self/fd; cat /proc/self/oom_score_adj", "env": [], "merge_stderr": 0},
    ),
    "errors": _lines(
        b"this is not json\n",
        b"[1, 2]\n",
        b"\xff\xfe\n",
        b"\xef\xbb\xbf" + b'{"op": "ping", "x": 1}\n',
        b'{"op": "ping"} {"op": "ping"}\n',
        b'{"op": "ping", "no": "newline, the write side shut"}',
        b"\n",
        b'{"op": "shell", "command": "echo a"}\nignored after the line\n',
        b'{"op": "ping", "pad": "' + b"x" * (4 * 1024 * 1024 + 10) + b'"}\n',
        {"op": "frobnicate"},
        {"op": None},
        {"op": 3.5},
        {"op": ["a", 1, None, True, {"k": "it's"}]},
        {"nop": "ping"},
        {"op": "shell"},
        {"op": "shell", "command": 3},
        {"op": "shell", "command": "true", "timeout": "soon"},
        {"op": "shell", "command": "true", "timeout": 0},
        {"op": "shell", "command": "true", "timeout": -1.5},
        {"op": "shell", "command": "true", "timeout": True},
        {"op": "shell", "command": "true", "output_cap": -1},
        {"op": "shell", "command": "true", "output_cap": 1.0},
        {"op": "shell", "command": "true", "output_cap": False},
        {"op": "shell", "command": "true", "cwd": 3},
        {"op": "shell", "command": "true", "cwd": 0},
        {"op": "shell", "command": "a\u0000b"},
        {"op": "shell", "command": "true", "cwd": "a\u0000"},
        {"op": "read_file", "path": 3},
        {"op": "read_file", "path": ""},
        {"op": "read_file", "path": "x\u0000"},
        {"op": "read_file", "path": "five.txt", "start_line": "1"},
        {"op": "read_file", "path": "five.txt", "end_line": 1.0},
        {"op": "read_file", "path": "five.txt", "start_line": True},
        {"op": "read_file", "path": "five.txt", "output_cap": -5},
        {"op": "exec"},
        {"op": "exec", "argv": ["ls"], "command": "ls"},
        {"op": "exec", "argv": []},
        {"op": "exec", "argv": "ls"},
        {"op": "exec", "argv": ["ls", 1]},
        {"op": "exec", "command": ["ls"]},
        {"op": "exec", "command": "ls", "env": {"A=B": "x"}},
        {"op": "exec", "command": "ls", "env": {"": "x"}},
        {"op": "exec", "command": "ls", "env": {"A": 1}},
        {"op": "exec", "command": "ls", "env": "A=B"},
        {"op": "exec", "command": "ls", "merge_stderr": 1},
        {"op": "exec", "command": "ls", "cwd": ["x"]},
        {"op": "exec", "command": "ls", "timeout": 0},
    ),
}


@pytest.mark.parametrize("group", sorted(SAME_REPLIES))
def test_both_guests_answer_alike(both, group: str):
    """Byte for byte, pids and durations aside, on the same requests and the same files."""
    for line in SAME_REPLIES[group]:
        replies = {}
        for name in ("python", "native"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(30)
                s.connect(str(both[name]))
                s.sendall(line)
                if not line.endswith(b"\n"):
                    s.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            replies[name] = _normalize(b"".join(chunks))
        assert replies["native"] == replies["python"], line[:300]


def test_both_guests_answer_alike_in_once_mode(tmp_path: Path, native_guest: Path):
    (tmp_path / "f.txt").write_text("a\nb\n")
    payloads = [
        {"op": "shell", "command": "echo hi; echo err >&2; exit 4", "timeout": 5, "output_cap": 100},
        {"op": "read_file", "path": "f.txt", "start_line": 2},
        {"op": "exec", "argv": ["sh", "-c", "echo o; echo e >&2"]},
        {"op": "nope"},
        {"op": "upload", "path": "x", "kind": "file", "size": 1},
        {"op": "download", "path": "x"},
        {"op": "ping"},
    ]
    for payload in payloads:
        arg = base64.b64encode(json.dumps(payload).encode()).decode()
        done = {
            name: subprocess.run(
                [*argv, "once", arg, "--user", USER, "--workdir", str(tmp_path)], capture_output=True, timeout=30
            )
            for name, argv in (("python", contract.PYTHON_GUEST), ("native", [str(native_guest)]))
        }
        assert done["native"].returncode == done["python"].returncode == 0
        assert _normalize(done["native"].stdout) == _normalize(done["python"].stdout), payload
    for bad in ("{not json", "!!!", "W10="):  # not JSON, not base64, not an object
        arg = bad if bad != "{not json" else base64.b64encode(bad.encode()).decode()
        native = subprocess.run([str(native_guest), "once", arg, "--workdir", str(tmp_path)], capture_output=True)
        assert native.returncode == 2 and native.stdout.count(b"\n") == 1
        assert json.loads(native.stdout)["error"].startswith("could not decode the request: ")


# --- what only the native guest has to show ---------------------------------------------------------


def test_ops_still_to_come_are_answered_not_implemented(guest):
    sock = guest["sock"]
    tests = call(sock, {"op": "run_tests", "command": "true"})
    assert tests == {"error": "run_tests is not implemented by the native guest yet"}
    assert call(sock, {"op": "download", "path": "x"}) == {
        "error": "download is not implemented by the native guest yet"
    }
    # An upload's bytes follow its line: they are read, so the client gets the answer, not a reset.
    header = json.dumps({"op": "upload", "path": "x", "kind": "file", "size": 300_000}).encode() + b"\n"
    reply = raw_call(sock, header + b"z" * 300_000)
    assert json.loads(reply) == {"error": "upload is not implemented by the native guest yet"}
    assert call(sock, {"op": "ping"})["ok"] is True


def test_native_once_mode_serves_exec_and_refuses_stream_ops(tmp_path: Path, native_guest: Path):
    def once(payload: dict[str, Any]) -> dict[str, Any]:
        arg = base64.b64encode(json.dumps(payload).encode()).decode()
        cmd = [str(native_guest), "once", arg, "--user", USER, "--workdir", str(tmp_path)]
        return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])

    assert (
        once({"op": "exec", "argv": ["echo", "from once"], "timeout": 5, "output_cap": 100})["stdout"] == "from once\n"
    )
    assert "serve mode only" in once({"op": "upload", "path": "x", "kind": "file", "size": 1})["error"]


def test_sigint_too_ends_the_server_cleanly(tmp_path: Path, guest_argv: list[str]):
    sock = tmp_path / "guest.sock"
    proc = start_server(sock, tmp_path, tmp_path / "log", guest_argv)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=5) == 0 and not sock.exists()


def test_commands_do_not_inherit_the_guests_descriptors(tmp_path: Path, guest_argv: list[str]):
    """Popen closes every descriptor but the child's own; ForkExec passes on what is not
    close-on-exec, so the guest marks what it inherited."""
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        cmd = [*guest_argv, "once", base64.b64encode(b'{"op": "shell", "command": "ls /proc/self/fd"}').decode()]
        done = subprocess.run([*cmd, "--workdir", str(tmp_path)], capture_output=True, pass_fds=(w,), timeout=20)
    finally:
        os.close(r)
        os.close(w)
    assert json.loads(done.stdout)["output"].split() == ["0", "1", "2", "3"]  # 3: ls's own listing


def _world_readable_dir(prefix: str) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix=prefix))  # not under pytest's 0700 tmp
    workdir.chmod(0o755)
    return workdir


@pytest.mark.skipif(os.getuid() != 0, reason="switching users needs root")
def test_native_switches_uid_gid_and_groups(guest_argv: list[str]):
    nobody = pwd.getpwnam("nobody")
    workdir = _world_readable_dir("native-switch-")
    try:
        done = contract.run_once(
            json.dumps(
                {"op": "shell", "command": "id -u; id -g; id -G; grep -E '^(Uid|Gid)' /proc/self/status"}
            ).encode(),
            workdir,
            user="nobody",
            argv=guest_argv,
        )
        out = json.loads(done.stdout)["output"].split()
        uid, gid = str(nobody.pw_uid), str(nobody.pw_gid)
        assert out[:3] == [uid, gid, gid]
        assert out[3:] == ["Uid:", uid, uid, uid, uid, "Gid:", gid, gid, gid, gid]  # real, effective, saved, fs
        missing = contract.run_once(
            b'{"op": "shell", "command": "id"}', workdir, user="no-such-user-x", argv=guest_argv
        )
        assert json.loads(missing.stdout) == {"error": "no such user: no-such-user-x"}
    finally:
        shutil.rmtree(workdir)


@pytest.mark.skipif(os.getuid() != 0, reason="switching users needs root")
def test_native_read_file_reads_as_the_user_when_root(guest_argv: list[str]):
    workdir = _world_readable_dir("native-read-")
    try:
        (workdir / "secret").write_text("root only\n")
        (workdir / "secret").chmod(0o600)
        (workdir / "public").write_text("one\ntwo\n")
        (workdir / "public").chmod(0o644)
        os.symlink(workdir / "secret", workdir / "link")

        def read_as(user: str, path: str, **fields: Any) -> dict[str, Any]:
            payload = json.dumps({"op": "read_file", "path": path, **fields}).encode()
            return json.loads(contract.run_once(payload, workdir, user=user, argv=guest_argv).stdout)

        for path in ("secret", "link"):
            resp = read_as("nobody", path)
            assert (resp["status"], resp["content"], resp["message"]) == (
                "permission_denied",
                "",
                f"permission denied: {path}",
            )
        assert read_as("nobody", "public", start_line=2)["content"] == "two\n"
        assert read_as("root", "secret")["content"] == "root only\n"  # the same file, read as a user who may
    finally:
        shutil.rmtree(workdir)


def test_a_native_start_failure_maps_to_the_models_pids_exhausted():
    """The reply procs_test.go checks the Go guest gives, as the host side reads it."""
    reply = {
        "error": "could not start reading f.txt: [Errno 11] Resource temporarily unavailable",
        "retryable": True,
        "pids_exhausted": True,
    }
    assert read_file_outcome(reply, "f.txt")[:2] == ("model_error", "pids_exhausted")


@pytest.mark.skipif(os.getuid() != 0, reason="setting up an unprivileged guest needs root")
def test_pids_exhaustion_is_reported_and_survived(native_guest: Path):
    """The guest as an unprivileged user under a small process limit (RLIMIT_NPROC counts its
    threads too, as a container's pids limit does): a command uses the limit up; meanwhile a ping
    is answered, a shell call and a read_file get pids_exhausted errors after retrying for ~1 s,
    and the guest (whose Go runtime aborts if it cannot make a thread it needs) lives on."""
    if any(pwd.getpwuid(os.stat(f"/proc/{p}").st_uid).pw_name == "nobody" for p in os.listdir("/proc") if p.isdigit()):
        pytest.skip("processes of nobody already run here: the limit would count them")
    base = _world_readable_dir("native-pids-")
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


def test_socket_is_private_from_the_first_moment(guest):
    assert stat.S_IMODE(guest["sock"].stat().st_mode) == 0o600
    assert stat.S_IMODE(guest["sock"].parent.stat().st_mode) == 0o700
