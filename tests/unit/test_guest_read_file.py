"""The guest's read_file op: line ranges, statuses, truncation and decoding, the file opened by a
reader process as the user, run as a real process over its real unix socket."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.guest_process import call, normalized, raw_call, run_once, wire, world_readable_dir


def read(
    g: dict[str, Any], path: str, start: int | None = None, end: int | None = None, cap: int = 65536
) -> dict[str, Any]:
    return call(g["sock"], {"op": "read_file", "path": path, "start_line": start, "end_line": end, "output_cap": cap})


# --- read_file ------------------------------------------------------------------------------------


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


@pytest.mark.skipif(os.getuid() != 0, reason="switching users needs root")
def test_read_file_reads_as_the_user_when_root(native_guest: Path):
    workdir = world_readable_dir("guest-read-")
    try:
        (workdir / "secret").write_text("root only\n")
        (workdir / "secret").chmod(0o600)
        (workdir / "public").write_text("one\ntwo\n")
        (workdir / "public").chmod(0o644)
        os.symlink(workdir / "secret", workdir / "link")

        def read_as(user: str, path: str, **fields: Any) -> dict[str, Any]:
            payload = json.dumps({"op": "read_file", "path": path, **fields}).encode()
            return json.loads(run_once(payload, workdir, user=user).stdout)

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


# --- replies in full, byte for byte ---------------------------------------------------------------


def text(content: str, total: int, output_bytes: int | None = None, truncated: int = 0) -> dict[str, Any]:
    size = len(content.encode()) if output_bytes is None else output_bytes
    return {
        "status": "ok",
        "content": content,
        "total_lines": total,
        "output_bytes": size,
        "truncated_bytes": truncated,
        "message": "",
    }


def refused(status: str, message: str, total: int = 0) -> dict[str, Any]:
    return {
        "status": status,
        "content": "",
        "total_lines": total,
        "output_bytes": 0,
        "truncated_bytes": 0,
        "message": message,
    }


def invalid(first: Any, last: Any, path: str = "five.txt", total: int = 5) -> dict[str, Any]:
    return refused("invalid_range", f"invalid line range {first}-{last}: {path} has {total} lines", total)


BINARY_FILE = "binary file (NUL byte in the first 8 KiB): "
STATUS_LINES = len(Path("/proc/self/status").read_text().splitlines())  # the same for every process
READS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"path": "five.txt"}, text("one\ntwo\nthree\nfour\nfive", 5)),
    ({"path": "five.txt", "start_line": 2, "end_line": 3}, text("two\nthree\n", 5)),
    ({"path": "five.txt", "end_line": 2}, text("one\ntwo\n", 5)),
    ({"path": "five.txt", "start_line": 4, "end_line": None}, text("four\nfive", 5)),
    ({"path": "five.txt", "start_line": 5, "end_line": 99}, text("five", 5)),
    ({"path": "five.txt", "start_line": 4, "end_line": 2}, invalid(4, 2)),
    ({"path": "five.txt", "start_line": 0, "end_line": 3}, invalid(0, 3)),
    ({"path": "five.txt", "start_line": 6}, invalid(6, "end")),
    ({"path": "five.txt", "start_line": -(10**30), "end_line": 10**30}, invalid(-(10**30), 10**30)),
    ({"path": "five.txt", "start_line": 10**30}, invalid(10**30, "end")),
    ({"path": "empty.txt", "start_line": 1}, text("", 0)),
    ({"path": "empty.txt", "start_line": 3, "end_line": 2}, invalid(3, 2, "empty.txt", 0)),
    (
        {"path": "long.txt", "start_line": 2, "end_line": 1999, "output_cap": 22},
        text("line 00002\n\n[... 21956 bytes omitted ...]\nline 01999\n", 2000, 21978, 21956),
    ),
    (
        {"path": "long.txt", "start_line": 1500, "output_cap": 101},
        text(
            "line 01500\nline 01501\nline 01502\nline 01503\nline 0\n[... 5410 bytes omitted ...]\n"
            " 01996\nline 01997\nline 01998\nline 01999\nline 02000\n",
            2000,
            5511,
            5410,
        ),
    ),
    ({"path": "late_nul.txt", "start_line": 5000, "end_line": 5001}, text("a\n\x00\n", 5001)),
    # U+2028 and a C1 control as they are; invalid UTF-8: each bad sequence one U+FFFD
    ({"path": "utf8.txt"}, text("\u00e9t\u00e9\n\u2028\u00e9\n\u00ff\u00fe bad \u00e2\u0082\n", 3)),
    ({"path": "latin1.txt"}, text("caf\ufffd\n\ufffdA\n\ufffd\n\ufffd\ufffd\ufffd\n", 4, 17)),
    ({"path": "src/x.py"}, refused("not_found", "no such file: src/x.py")),
    ({"path": "sub"}, refused("is_a_directory", "is a directory: sub")),
    ({"path": "blob.bin"}, refused("binary", BINARY_FILE + "blob.bin")),
    ({"path": "/dev/null"}, refused("not_a_regular_file", "not a regular file: /dev/null")),
    ({"path": "pipe"}, refused("not_a_regular_file", "not a regular file: pipe")),
    ({"path": "/proc/self/mem"}, refused("unreadable", "could not read /proc/self/mem: Input/output error")),
    ({"path": "/proc/self/status", "start_line": 1, "end_line": 1}, text("Name:\tcat\n", STATUS_LINES)),
    ({"path": "/proc/self/cmdline"}, refused("binary", BINARY_FILE + "/proc/self/cmdline")),
    ({"path": "loop"}, refused("unreadable", "could not read loop: Too many levels of symbolic links")),
    ({"path": "five.txt/x"}, refused("not_found", "no such file: five.txt/x")),
    ({"path": "sub/../five.txt", "start_line": 1, "end_line": 1}, text("one\n", 5)),
]


def test_read_file_replies_in_full(guest, files):
    (files / "long.txt").write_bytes(b"".join(b"line %05d\n" % i for i in range(1, 2001)))
    (files / "late_nul.txt").write_bytes(b"a\n" * 5000 + b"\x00\n")
    (files / "utf8.txt").write_bytes(
        "\u00e9t\u00e9\n\u2028\u00e9\n\xff\xfe bad \xe2\x82\n".encode("utf-8", "surrogatepass")
    )
    (files / "latin1.txt").write_bytes(b"caf\xe9\n\xe2\x82A\n\xf0\x9f\x98\n\xed\xa0\x80\n")
    if not (files / "loop").is_symlink():
        os.symlink("loop", files / "loop")
    for fields, expected in READS:
        request = {"op": "read_file", **fields}
        assert normalized(raw_call(guest["sock"], wire(request))) == wire(expected), request
