"""The guest's read_file op: selected lines of a text file, with statuses an agent can act on.

Part of the guest executor (guest.py); stdlib only. The protocol: guest_protocol.py.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:  # imported as part of sandbox.guest (and by mypy)
    from .guest_common import CHUNK, BadRequest, HeadTailBuffer, int_field
    from .guest_protocol import (
        BINARY_PROBE,
        DEFAULT_CAP,
        MAX_FILE_READ,
        MAX_OUTPUT_CAP,
        ErrorReply,
        ReadFileReply,
        ReadFileRequest,
        ReadFileStatus,
    )
else:  # a top-level module, imported by guest.py from its own directory
    from guest_common import CHUNK, BadRequest, HeadTailBuffer, int_field
    from guest_protocol import (
        BINARY_PROBE,
        DEFAULT_CAP,
        MAX_FILE_READ,
        MAX_OUTPUT_CAP,
        ErrorReply,
        ReadFileReply,
        ReadFileRequest,
        ReadFileStatus,
    )


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


def open_regular(path: str, shown: str) -> int | ReadFileReply:
    """Classify before reading: stat first so devices are never opened, O_NONBLOCK for FIFOs."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            return file_result("is_a_directory", f"is a directory: {shown}")
        if not stat.S_ISREG(st.st_mode):
            return file_result("not_a_regular_file", f"not a regular file: {shown}")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return file_result("permission_denied", f"permission denied: {shown}")
        if exc.errno == errno.ENXIO:
            return file_result("not_a_regular_file", f"not a regular file: {shown}")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return file_result("not_found", f"no such file: {shown}")
        return file_result("not_found", f"cannot open {shown}: {exc.strerror}")
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between stat and open
        os.close(fd)
        return file_result("not_a_regular_file", f"not a regular file: {shown}")
    return fd


def select_lines(fd: int, buf: HeadTailBuffer, first: int, last: float) -> tuple[int, bool, bool]:
    """Stream the file once: copy lines first..last into buf, count all lines.

    Returns (total_lines, saw_nul_in_probe, hit_read_limit).
    """
    line, offset, ends_with_newline = 1, 0, True
    while offset < MAX_FILE_READ:
        chunk = os.read(fd, min(CHUNK, MAX_FILE_READ - offset))
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
    return total, False, offset >= MAX_FILE_READ and bool(os.read(fd, 1))


def read_file(req: ReadFileRequest, workdir: str) -> ReadFileReply | ErrorReply:
    """Return selected lines of a text file, with statuses the agent can act on."""
    shown = req.get("path")
    if not isinstance(shown, str) or not shown or "\0" in shown:
        raise BadRequest("read_file needs a non-empty string 'path' without NUL characters")
    start, end = req.get("start_line"), req.get("end_line")
    for name, value in (("start_line", start), ("end_line", end)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise BadRequest(f"'{name}' must be an integer or null")
    cap = min(int_field(req, "output_cap", DEFAULT_CAP), MAX_OUTPUT_CAP)
    opened = open_regular(os.path.join(workdir, shown), shown)
    if not isinstance(opened, int):
        return opened
    buf = HeadTailBuffer(cap)
    first = start if start is not None else 1
    last = end if end is not None else math.inf
    try:
        total, binary, clipped = select_lines(opened, buf, first, last)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return file_result("permission_denied", f"permission denied: {shown}")
        return {"error": f"could not read {shown}: {exc.strerror}"}
    finally:
        os.close(opened)
    if binary:
        return file_result("binary", f"binary file (NUL byte in the first 8 KiB): {shown}")
    note = f" (only the first {MAX_FILE_READ // 2**20} MiB were read)" if clipped else ""
    if first < 1 or last < first or (first > total and total > 0):
        wanted = f"{start if start is not None else 1}-{end if end is not None else 'end'}"
        return file_result(
            "invalid_range", f"invalid line range {wanted}: {shown} has {total} lines{note}", total_lines=total
        )
    return file_result("ok", note.strip(" ()"), buf, total)
