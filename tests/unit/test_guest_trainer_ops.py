"""The guest's trainer-API ops (exec, upload, download), run as a real process over its real socket,
driven by the worker's own clients (guest_client.py, guest_stream.py). test_guest_transfer.py has
the transfers in full: every status, the data, the trees they leave."""

from __future__ import annotations

import io
import json
import os
import tarfile
from typing import Any

import pytest

from sandbox.backends import guest_stream
from sandbox.backends.guest_client import call_guest
from sandbox.guest.guest_protocol import exec_request
from sandbox.guest.guest_protocol_stream import download_request, upload_request
from tests.unit.guest_process import HOME, USER, live_procs_with_arg, normalized, raw_call, run_once, wire


def run(g: dict[str, Any], argv: list[str] | None = None, command: str | None = None, **fields: Any) -> dict[str, Any]:
    fields = {"cwd": None, "env": {}, "timeout": 10, "output_cap": 65536, "merge_stderr": False, **fields}
    return call_guest(g["sock"], exec_request(argv, command, **fields), 30)


def up(g: dict[str, Any], path: str, kind: str, data: bytes, mode: int | None = None, size: int | None = None) -> Any:
    header = upload_request(path, kind, len(data) if size is None else size, mode, 10)  # type: ignore[arg-type]
    return guest_stream.upload(g["sock"], header, [data[i : i + 65536] for i in range(0, len(data), 65536)], 10)


def down(g: dict[str, Any], path: str, max_bytes: int = 1 << 30) -> tuple[dict[str, Any], bytes]:
    got: list[bytes] = []
    reply = guest_stream.download(g["sock"], download_request(path, max_bytes, 10), got.append, 10)
    return reply, b"".join(got)


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- exec -----------------------------------------------------------------------------------------


def test_exec_keeps_stdout_and_stderr_apart_or_merges_them_in_write_order(guest):
    r = run(guest, command="echo out; echo err >&2; echo out2; exit 3")
    assert (r["exit_code"], r["stdout"], r["stderr"], r["timed_out"]) == (3, "out\nout2\n", "err\n", False)
    assert (r["stdout_bytes"], r["stderr_bytes"]) == (9, 4)
    merged = run(guest, command="echo out; echo err >&2; echo out2", merge_stderr=True)
    assert (merged["stdout"], merged["stderr"]) == ("out\nerr\nout2\n", "")


def test_exec_argv_is_not_shell_interpreted_and_env_is_added_to_the_fixed_one(guest):
    r = run(guest, argv=["printf", "%s|", "$HOME; ls", "*"])
    assert r["stdout"] == "$HOME; ls|*|"
    r = run(guest, argv=["env"], env={"TRAINER_VAR": "v=1", "LANG": "C"})
    env = dict(line.split("=", 1) for line in r["stdout"].splitlines())
    assert env["TRAINER_VAR"] == "v=1" and env["LANG"] == "C" and env["PATH"].startswith("/usr/local/sbin")
    assert "GUEST_TEST_LEAK" not in env and "BASH_ENV" not in env  # nothing of the guest's own environment
    r = run(guest, argv=["no-such-program-x"])
    assert r["exit_code"] == 127 and "not found" in r["stderr"]


def test_exec_cwd_is_relative_to_the_workdir_and_a_missing_one_is_not_replaced(guest):
    (guest["workdir"] / "sub").mkdir(exist_ok=True)
    assert run(guest, argv=["pwd"], cwd="sub")["stdout"] == f"{guest['workdir']}/sub\n"
    r = run(guest, command="echo never", cwd="no/such/dir")
    assert r["exit_code"] == 1 and r["stdout"] == "" and "no/such/dir" in r["stderr"]


def test_exec_deadline_kills_the_group_and_nothing_survives_the_call(guest):
    r = run(guest, command="sleep 31.4159 & sleep 31.4159; echo never", timeout=0.5)
    assert (r["timed_out"], r["exit_code"], r["signal"]) == (True, None, 9)
    assert live_procs_with_arg("31.4159") == []
    r = run(guest, command="setsid sleep 27.1828 & echo started")
    assert r["exit_code"] == 0 and live_procs_with_arg("27.1828") == []


def test_exec_caps_each_stream_head_and_tail(guest):
    r = run(
        guest, command="head -c 5000 /dev/zero | tr '\\0' a; head -c 3000 /dev/zero | tr '\\0' b >&2", output_cap=100
    )
    assert (r["stdout_bytes"], r["stdout_truncated_bytes"], r["stderr_truncated_bytes"]) == (5000, 4900, 2900)
    assert r["stdout"].startswith("a" * 50) and "[... 4900 bytes omitted ...]" in r["stdout"]


def test_exec_is_served_by_once_mode_and_the_stream_ops_are_not(tmp_path, native_guest):
    payload = exec_request(["echo", "from once"], None, timeout=5, output_cap=100)
    reply = json.loads(run_once(json.dumps(payload).encode(), tmp_path).stdout.splitlines()[-1])
    assert reply["stdout"] == "from once\n"
    stream = json.dumps(upload_request("x", "file", 1, None, 5)).encode()
    assert "serve mode only" in json.loads(run_once(stream, tmp_path).stdout.splitlines()[-1])["error"]


def test_a_malformed_exec_is_an_error_reply(guest):
    assert "exactly one" in call_guest(guest["sock"], {"op": "exec"}, 10)["error"]
    assert "'env'" in call_guest(guest["sock"], {"op": "exec", "command": "ls", "env": {"A=B": "x"}}, 10)["error"]


def ran(
    stdout: str,
    stderr: str = "",
    exit_code: int | None = 0,
    signal: int | None = None,
    timed_out: bool = False,
    truncated: tuple[int, int] = (0, 0),
    sizes: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """An exec reply (duration normalized); sizes are the streams' own unless given."""
    out_bytes, err_bytes = sizes or (len(stdout.encode()), len(stderr.encode()))
    return {
        "exit_code": exit_code,
        "signal": signal,
        "timed_out": timed_out,
        "oom_killed": False,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_bytes": out_bytes,
        "stderr_bytes": err_bytes,
        "stdout_truncated_bytes": truncated[0],
        "stderr_truncated_bytes": truncated[1],
        "duration_ms": 0,
    }


def exec_cases(w: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(request, the reply it gets) with the workdir w. No BASH_ENV among the env: the guest's own
    (its OOM-score script) is what a command gets, test_guest_shell.py shows."""
    env = (
        f"SHELL=/bin/bash\nZED=1\nA_VAR=v=1\nPWD={w}\nLOGNAME={USER}\nHOME={HOME}\nLANG=C.UTF-8\nTERM=dumb\n"
        f"USER={USER}\nSHLVL=0\nPATH=/bin:/usr/bin\nOLDPWD=/\n"
    )
    a_head, a_tail, b_head, b_tail = "a" * 50, "a" * 51, "b" * 50, "b" * 51
    return [
        ({"op": "exec", "command": "echo out; echo err >&2; echo out2; exit 3"}, ran("out\nout2\n", "err\n", 3)),
        (
            {"op": "exec", "command": "echo out; echo err >&2; echo out2", "merge_stderr": True},
            ran("out\nerr\nout2\n"),
        ),
        ({"op": "exec", "argv": ["printf", "%s|", "$HOME; ls", "*"]}, ran("$HOME; ls|*|")),
        ({"op": "exec", "argv": ["env"], "env": {"ZED": "1", "PATH": "/bin:/usr/bin", "A_VAR": "v=1"}}, ran(env)),
        (
            {"op": "exec", "argv": ["no-such-program-x"]},
            ran("", "bash: line 1: exec: no-such-program-x: not found\n", 127),
        ),
        ({"op": "exec", "argv": ["pwd"], "cwd": "sub"}, ran(f"{w}/sub\n")),
        (
            {"op": "exec", "command": "echo never", "cwd": "no/such/dir"},
            ran("", f"bash: line 1: cd: {w}/no/such/dir: No such file or directory\n", 1),
        ),
        ({"op": "exec", "command": "sleep 5 & sleep 5", "timeout": 0.3}, ran("", "", None, 9, True)),
        (
            {
                "op": "exec",
                "command": "head -c 5000 /dev/zero | tr '\\0' a; head -c 3000 /dev/zero | tr '\\0' b >&2",
                "output_cap": 101,
            },
            ran(
                f"{a_head}\n[... 4899 bytes omitted ...]\n{a_tail}",
                f"{b_head}\n[... 2899 bytes omitted ...]\n{b_tail}",
                truncated=(4899, 2899),
                sizes=(5000, 3000),
            ),
        ),
        (
            {"op": "exec", "command": "ls /proc/self/fd; cat /proc/self/oom_score_adj", "env": [], "merge_stderr": 0},
            ran("0\n1\n2\n3\n1000\n"),  # an empty list for env, 0 for false: accepted
        ),
    ]


def test_exec_replies_in_full(guest):
    (guest["workdir"] / "sub").mkdir(exist_ok=True)
    for request, expected in exec_cases(str(guest["workdir"])):
        assert normalized(raw_call(guest["sock"], wire(request))) == wire(expected), request


# --- upload and download --------------------------------------------------------------------------


def test_upload_writes_a_file_with_its_parents_and_mode_and_download_reads_it_back(guest):
    data = os.urandom(300_000)
    reply = up(guest, "deep/er/blob.bin", "file", data, mode=0o750)
    target = guest["workdir"] / "deep" / "er" / "blob.bin"
    assert reply == {"status": "ok", "path": str(target), "bytes": len(data), "message": ""}
    assert target.read_bytes() == data and target.stat().st_mode & 0o7777 == 0o750
    got_reply, got = down(guest, "deep/er/blob.bin")
    assert (got_reply["status"], got_reply["kind"], got_reply["bytes"], got) == ("ok", "file", len(data), data)


def test_upload_of_a_tar_unpacks_into_a_directory_and_download_tars_it_again(guest):
    files = {"pkg/__init__.py": b"X = 1\n", "pkg/run.sh": b"#!/bin/sh\necho hi\n", "README": b"readme\n"}
    assert up(guest, "tree", "tar", tar_of(files))["status"] == "ok"
    root = guest["workdir"] / "tree"
    assert (root / "pkg" / "run.sh").read_bytes() == files["pkg/run.sh"] and os.access(root / "pkg" / "run.sh", os.X_OK)
    reply, data = down(guest, "tree")
    assert (reply["status"], reply["kind"]) == ("ok", "directory")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert got == files


@pytest.mark.parametrize(
    "path, kind, data, status",
    [
        ("tree", "file", b"x", "is_a_directory"),
        ("deep/er/blob.bin/below", "file", b"x", "not_a_directory"),
        ("bad-tar", "tar", b"not a tar at all" * 100, "invalid_archive"),
    ],
)
def test_a_failed_upload_says_why_in_the_writers_own_words(guest, path: str, kind: str, data: bytes, status: str):
    up(guest, "tree", "tar", tar_of({"a": b"1"}))
    up(guest, "deep/er/blob.bin", "file", b"1")
    reply = up(guest, path, kind, data)
    assert reply["status"] == status and reply["message"]


def test_an_upload_that_ends_short_is_a_failure_not_a_success(guest):
    reply = up(guest, "short.txt", "file", b"12345", size=10)
    assert reply["status"] == "failed" and "5 of 10 bytes" in reply["message"]


def test_failed_downloads_send_nothing_to_keep(guest):
    assert down(guest, "no/such/file")[0]["status"] == "not_found"
    up(guest, "big.bin", "file", b"z" * 100_000)
    reply, _ = down(guest, "big.bin", max_bytes=50_000)
    assert reply["status"] == "too_large"
    os.mkfifo(guest["workdir"] / "fifo")
    assert down(guest, "fifo")[0]["status"] == "not_a_regular_file"  # never opened: it would block
    assert "'path'" in down(guest, "")[0]["error"]  # a bad request comes alone, without frames
