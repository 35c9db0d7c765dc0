"""The guest's read_file op: selected lines of a text file, with statuses an agent can act on.

Part of the guest executor (guest.py); stdlib only. The protocol: guest_protocol.py.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:  # imported as part of sandbox.guest (and by mypy)
    from .guest_common import CHUNK, BadRequest, HeadTailBuffer, int_field
    from .guest_procs import RETRYABLE, Identity, forget, has_exited, spawn
    from .guest_protocol import (
        BINARY_PROBE,
        DEFAULT_CAP,
        MAX_FILE_READ,
        MAX_OUTPUT_CAP,
        READ_FILE_TIMEOUT,
        ErrorReply,
        ReadFileReply,
        ReadFileRequest,
        ReadFileStatus,
    )
else:  # a top-level module, imported by guest.py from its own directory
    from guest_common import CHUNK, BadRequest, HeadTailBuffer, int_field
    from guest_procs import RETRYABLE, Identity, forget, has_exited, spawn
    from guest_protocol import (
        BINARY_PROBE,
        DEFAULT_CAP,
        MAX_FILE_READ,
        MAX_OUTPUT_CAP,
        READ_FILE_TIMEOUT,
        ErrorReply,
        ReadFileReply,
        ReadFileRequest,
        ReadFileStatus,
    )

# The file is read by a program running as the sandbox user, started the way commands are
# (setpriv and vfork when it works), so the kernel checks the user's permissions, symlinks
# and /proc included: the guest itself never opens the file. cat when the image has one,
# else this interpreter, saying what went wrong the way cat does.
CAT = next((p for p in ("/bin/cat", "/usr/bin/cat") if os.access(p, os.X_OK)), None)
PY_CAT = """import os, sys
try:
    fd = os.open(sys.argv[2], os.O_RDONLY | os.O_NOCTTY)
    while data := os.read(fd, 65536):
        sys.stdout.buffer.write(data)
except OSError as exc:
    sys.stderr.write(f"cat: {sys.argv[2]}: {exc.strerror}\\n")
    sys.exit(1)
"""
READER_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}  # C: the reader's messages in English
# The reader's error (strerror, last on its stderr line) -> the status it means.
ERROR_STATUSES: dict[str, ReadFileStatus] = {
    "Permission denied": "permission_denied",
    "Operation not permitted": "permission_denied",
    "No such file or directory": "not_found",
    "Not a directory": "not_found",
    "Is a directory": "is_a_directory",
    "No such device or address": "not_a_regular_file",
}


def file_result(
    status: ReadFileStatus, message: str = "", buf: HeadTailBuffer | None = None, total_lines: int = 0
) -> ReadFileReply:
    return {
        "status": status,
        "content": buf.text() if buf else "",
        "total_lines": total_lines,
        "output_bytes": buf.total if buf else 0,
        "truncated_bytes": buf.dropped if buf else 0,
        "message": message,
    }


def special_file(path: str) -> bool:
    """A device, FIFO or socket: answered without being opened (a FIFO would block, a device
    may act on open). Only its type is learnt here, as the guest; all else as the user."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False  # the reader, as the user, says what is wrong
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def start_reader(path: str, ident: Identity) -> subprocess.Popen[bytes]:
    argv = [CAT, "--", path] if CAT else [sys.executable, "-S", "-c", PY_CAT, "--", path]
    return spawn(argv, ident, cwd="/", env=READER_ENV, stderr=subprocess.PIPE)


def pipe_reader(fd: int, deadline: float) -> Callable[[int], bytes]:
    """os.read on the reader's pipe that raises TimeoutError at the deadline instead of blocking."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def read(size: int) -> bytes:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if poller.poll(left * 1000):
                return os.read(fd, size)

    return read


def select_lines(read: Callable[[int], bytes], buf: HeadTailBuffer, first: int, last: float) -> tuple[int, bool, bool]:
    """Stream the file once: copy lines first..last into buf, count all lines.

    Returns (total_lines, saw_nul_in_probe, hit_read_limit).
    """
    line, offset, ends_with_newline = 1, 0, True
    while offset < MAX_FILE_READ:
        chunk = read(min(CHUNK, MAX_FILE_READ - offset))
        if not chunk:
            break
        if offset < BINARY_PROBE and b"\0" in chunk[: BINARY_PROBE - offset]:
            return 0, True, False
        offset += len(chunk)
        ends_with_newline = chunk.endswith(b"\n")
        newlines = chunk.count(b"\n")
        if first <= line and line + newlines <= last:
            buf.write(chunk)
        elif line <= last and line + newlines >= first:
            pos = 0
            for piece in chunk.split(b"\n"):
                end = pos + len(piece) + 1
                if first <= line <= last:
                    buf.write(chunk[pos:end])
                pos, line = end, line + 1
            line -= 1
            continue
        line += newlines
    total = line - 1 if ends_with_newline else line
    return total, False, offset >= MAX_FILE_READ and bool(read(1))


def read_file(req: ReadFileRequest, workdir: str, ident: Identity) -> ReadFileReply | ErrorReply:
    """Return selected lines of a text file, read as the user, with statuses the agent can act on."""
    shown = req.get("path")
    if not isinstance(shown, str) or not shown or "\0" in shown:
        raise BadRequest("read_file needs a non-empty string 'path' without NUL characters")
    start, end = req.get("start_line"), req.get("end_line")
    for name, value in (("start_line", start), ("end_line", end)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise BadRequest(f"'{name}' must be an integer or null")
    cap = min(int_field(req, "output_cap", DEFAULT_CAP), MAX_OUTPUT_CAP)
    path = os.path.join(workdir, shown)
    if special_file(path):
        return file_result("not_a_regular_file", f"not a regular file: {shown}")
    try:
        proc = start_reader(path, ident)
    except OSError as exc:
        return {
            "error": f"could not start reading {shown}: {exc}",
            "retryable": exc.errno in RETRYABLE,
            "pids_exhausted": exc.errno == errno.EAGAIN,
        }
    buf = HeadTailBuffer(cap)
    first = start if start is not None else 1
    last = end if end is not None else math.inf
    assert proc.stdout is not None and proc.stderr is not None
    total, binary, clipped, timed_out = 0, False, False, True
    try:
        total, binary, clipped = select_lines(
            pipe_reader(proc.stdout.fileno(), time.monotonic() + READ_FILE_TIMEOUT), buf, first, last
        )
        timed_out = False
    except TimeoutError:
        pass
    finally:
        rc = finish_reader(proc, early=binary or clipped or timed_out)
        err = proc.stderr.read(4096).decode("utf-8", "replace").strip()
        proc.stderr.close()
    if binary:
        return file_result("binary", f"binary file (NUL byte in the first 8 KiB): {shown}")
    if timed_out:
        return file_result("unreadable", f"could not read {shown}: no end after {READ_FILE_TIMEOUT:g} s")
    if rc != 0 and not clipped:
        return reader_failed(shown, err, rc)
    note = f" (only the first {MAX_FILE_READ // 2**20} MiB were read)" if clipped else ""
    if first < 1 or last < first or (first > total and total > 0):
        wanted = f"{start if start is not None else 1}-{end if end is not None else 'end'}"
        return file_result(
            "invalid_range", f"invalid line range {wanted}: {shown} has {total} lines{note}", total_lines=total
        )
    return file_result("ok", note.strip(" ()"), buf, total)


def finish_reader(proc: subprocess.Popen[bytes], *, early: bool) -> int:
    """Wait for the reader; kill it first if we stopped reading before its end (or it hangs)."""
    assert proc.stdout is not None
    proc.stdout.close()
    rc: int | None = None
    if not early:  # it wrote its end, so it is exiting
        with contextlib.suppress(subprocess.TimeoutExpired):
            rc = proc.wait(timeout=2)
    if rc is None:
        if not has_exited(proc.pid):  # os.kill, not proc.kill(): never signal a reaped pid
            os.kill(proc.pid, signal.SIGKILL)
        rc = proc.wait()
    forget(proc)
    return rc


def reader_failed(shown: str, err: str, rc: int) -> ReadFileReply:
    """The status of a failed read, from the reader's own words ("cat: PATH: strerror")."""
    reason = err.splitlines()[-1].rpartition(": ")[2] if err else ""
    status = ERROR_STATUSES.get(reason, "unreadable")
    if status == "permission_denied":
        return file_result(status, f"permission denied: {shown}")
    if status == "not_found":
        return file_result(status, f"no such file: {shown}")
    if status == "is_a_directory":
        return file_result(status, f"is a directory: {shown}")
    if status == "not_a_regular_file":
        return file_result(status, f"not a regular file: {shown}")
    why = reason or (f"the reader was killed by signal {-rc}" if rc < 0 else f"the reader failed (exit {rc})")
    return file_result("unreadable", f"could not read {shown}: {why}")
