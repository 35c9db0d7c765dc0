"""The guest's upload and download ops: bytes in and out of the sandbox, as the user.

Part of the guest executor (guest.py); stdlib only. The protocol: guest_protocol_stream.py.

The guest never opens the user's files itself. A small program started the way commands are
(cat, tar; python3's tarfile where the image has no GNU tar), in a process group of its own
and swept like one, does the writing or reading: the user's permissions, symlinks and disk
limit mean what they mean to the model's own shell, and whatever it creates is the user's.
The guest only pipes the bytes between the connection and that program.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import stat
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:  # imported as part of sandbox.guest (and by mypy)
    from .guest_common import BadRequest, HeadTailBuffer, int_field, number_field
    from .guest_procs import Identity, forget, has_exited, kill_group, spawn, sweep
    from .guest_protocol_stream import (
        FRAME_MAX,
        MAX_DOWNLOAD,
        OP_UPLOAD,
        TRANSFER_TIMEOUT,
        DownloadReply,
        DownloadStatus,
        UploadReply,
        frame_header,
    )
    from .guest_shell import OOM_FIRST, PATH
else:  # a top-level module, imported by guest.py from its own directory
    from guest_common import BadRequest, HeadTailBuffer, int_field, number_field
    from guest_procs import Identity, forget, has_exited, kill_group, spawn, sweep
    from guest_protocol_stream import (
        FRAME_MAX,
        MAX_DOWNLOAD,
        OP_UPLOAD,
        TRANSFER_TIMEOUT,
        DownloadReply,
        DownloadStatus,
        UploadReply,
        frame_header,
    )
    from guest_shell import OOM_FIRST, PATH

TAR_PATHS = ("/bin/tar", "/usr/bin/tar")
F_SETPIPE_SZ = 1031  # Linux: a 1 MiB pipe moves a stream in fewer, larger reads
# $1 the path; $2 the mode in octal or "". Missing parents are made, as the user.
WRITE_FILE = 'd=${1%/*}; mkdir -p -- "${d:-/}" && cat > "$1" && { [ -z "$2" ] || chmod -- "$2" "$1"; }'
# --no-overwrite-dir: a directory that exists keeps its owner and mode (tar would try to
# set the archive's, and fail on one the user does not own, e.g. the workspace's parent).
UNTAR_GNU = 'mkdir -p -- "$1" && cd -- "$1" && exec "$2" -x -f - --no-overwrite-dir --no-same-owner'
UNTAR_PY = 'mkdir -p -- "$1" && cd -- "$1" && exec python3 -S -c "$2"'
PY_UNTAR = """import sys, tarfile
kw = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as t:
    t.extractall(".", **kw)
"""
CAT = 'exec cat -- "$1"'
TAR_GNU = 'cd -- "$1" && exec "$2" -c -f - .'
TAR_PY = 'cd -- "$1" && exec python3 -S -c "$2"'
PY_TAR = """import os, sys, tarfile
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as t:
    for name in sorted(os.listdir(".")):
        t.add(name)
"""
# The writer's or reader's own words (LC_ALL=C: English, plain quotes) -> the status, most
# telling first: a full disk also makes tar complain about every member after it.
MESSAGE_STATUSES: tuple[tuple[str, str], ...] = (
    ("No space left on device", "no_space"),
    ("Disk quota exceeded", "no_space"),
    ("File too large", "no_space"),
    ("Permission denied", "permission_denied"),
    ("Operation not permitted", "permission_denied"),
    ("Is a directory", "is_a_directory"),
    ("Not a directory", "not_a_directory"),
    ("File exists", "not_a_directory"),
    ("does not look like a tar archive", "invalid_archive"),
    ("Unexpected EOF in archive", "invalid_archive"),
    ("ReadError", "invalid_archive"),
    ("No such file or directory", "not_found"),
)


@functools.lru_cache(maxsize=1)
def gnu_tar() -> str | None:
    """The image's GNU tar, or None (busybox's lacks --no-overwrite-dir; python3 then stands in)."""
    for path in TAR_PATHS:
        if not os.access(path, os.X_OK):
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([path, "--version"], capture_output=True, timeout=10, env={"LC_ALL": "C"}).stdout
            if b"GNU tar" in out:
                return path
    return None


def helper_env(ident: Identity) -> dict[str, str]:
    return {"PATH": PATH, "HOME": ident.home, "USER": ident.name, "LOGNAME": ident.name, "LC_ALL": "C"}


def start_helper(script: str, args: list[str], ident: Identity, *, stdin: int, stderr: int) -> subprocess.Popen[bytes]:
    """bash -c SCRIPT as the user, first for the OOM killer like every command, on record."""
    argv = ["bash", "-c", OOM_FIRST + script, "bash", *args]
    return spawn(argv, ident, cwd="/", env=helper_env(ident), stderr=stderr, stdin=stdin)


class Watchdog:
    """Kills a helper's group at the deadline; `fired` says whether it did."""

    def __init__(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        self.fired = False
        self._proc = proc
        self._timer = threading.Timer(max(timeout, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        kill_group(self._proc.pid)

    def cancel(self) -> None:
        self._timer.cancel()


class Collector:
    """Reads a pipe to its end in a thread, keeping its head and tail (a helper's messages)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.buf = HeadTailBuffer(4096)
        self._stream = stream
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while data := self._stream.read1(65536):  # type: ignore[attr-defined]
                self.buf.write(data)

    def text(self) -> str:
        self._thread.join(2.0)
        return self.buf.text().strip()


def finish(proc: subprocess.Popen[bytes], ident: Identity, deadline: float) -> int:
    """Wait for the helper until the deadline, then leave nothing of it (or of the user's) behind."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
    if not has_exited(proc.pid):
        with contextlib.suppress(OSError):
            os.kill(proc.pid, 9)
    kill_group(proc.pid)
    rc = proc.wait()
    forget(proc)
    sweep(ident)
    return rc


def status_of(message: str, default: str = "failed") -> str:
    for words, status in MESSAGE_STATUSES:
        if words in message:
            return status
    return default


def _fields(req: dict[str, Any], workdir: str) -> tuple[str, str, float]:
    path = req.get("path")
    if not isinstance(path, str) or not path or "\0" in path:
        raise BadRequest("'path' must be a non-empty string without NUL characters")
    timeout = number_field(req, "timeout", TRANSFER_TIMEOUT)
    if timeout <= 0:
        raise BadRequest("'timeout' must be positive")
    return path, os.path.normpath(os.path.join(workdir, path)), timeout


def write_line(wfile: Any, reply: Mapping[str, Any]) -> None:
    wfile.write(json.dumps(reply, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")


# --- upload -----------------------------------------------------------------------------------


def serve_upload(req: dict[str, Any], rfile: Any, wfile: Any, workdir: str, ident: Identity) -> None:
    """Read the request's `size` bytes into a writer running as the user; answer one line."""
    _, target, timeout = _fields(req, workdir)
    kind, size, mode = req.get("kind"), req.get("size"), req.get("mode")
    if kind not in ("file", "tar"):
        raise BadRequest("'kind' must be 'file' or 'tar'")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest("'size' must be a non-negative integer")
    if mode is not None and (isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777):
        raise BadRequest("'mode' must be an integer from 0 to 0o7777, or null")
    deadline = time.monotonic() + timeout
    if kind == "file":
        script, args = WRITE_FILE, [target, format(mode, "o") if mode is not None else ""]
    elif gnu_tar():
        script, args = UNTAR_GNU, [target, str(gnu_tar())]
    else:
        script, args = UNTAR_PY, [target, PY_UNTAR]
    try:
        proc = start_helper(script, args, ident, stdin=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        _discard(rfile, size, deadline)
        write_line(wfile, _upload_reply("failed", target, size, f"could not start the writer: {exc}"))
        return
    assert proc.stdin is not None and proc.stdout is not None
    messages = Collector(proc.stdout)
    watchdog = Watchdog(proc, timeout)
    received, writing, broken = 0, True, ""
    try:
        while received < size and time.monotonic() < deadline:
            data = rfile.read1(min(FRAME_MAX, size - received))
            if not data:
                break  # the client stopped sending: what arrived is not the whole thing
            received += len(data)
            if writing:
                try:
                    proc.stdin.write(data)
                except (BrokenPipeError, ValueError):
                    writing = False  # the writer failed (or the deadline killed it); keep reading
    except OSError as exc:  # the client went away, or stalled past the socket's timeout
        broken = f": {exc}"
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        rc = finish(proc, ident, deadline)
        watchdog.cancel()
    text = messages.text()
    if watchdog.fired or (received < size and time.monotonic() >= deadline):
        status, message = "timed_out", f"not done within {timeout:g} s"
    elif received < size:
        status, message = "failed", f"the stream ended after {received} of {size} bytes{broken}"
    elif rc != 0:
        status, message = status_of(text), text or f"the writer failed (exit {rc})"
    else:
        status, message = "ok", ""
    write_line(wfile, _upload_reply(status, target, received, message))


def _upload_reply(status: str, target: str, received: int, message: str) -> UploadReply:
    return {"status": status, "path": target, "bytes": received, "message": message}  # type: ignore[typeddict-item]


def _discard(rfile: Any, size: int, deadline: float) -> None:
    """Read what the client sends, so that it gets to read the answer."""
    left = size
    with contextlib.suppress(OSError):
        while left > 0 and time.monotonic() < deadline:
            data = rfile.read1(min(FRAME_MAX, left))
            if not data:
                return
            left -= len(data)


# --- download ---------------------------------------------------------------------------------


def serve_download(req: dict[str, Any], wfile: Any, workdir: str, ident: Identity) -> None:
    """Send the file's bytes, or the directory as a tar stream, in frames; then one reply line."""
    _, target, timeout = _fields(req, workdir)
    limit = int_field(req, "max_bytes", MAX_DOWNLOAD)
    deadline = time.monotonic() + timeout
    try:
        mode = os.stat(target).st_mode  # the type only; the reader, as the user, says what else is wrong
    except OSError:
        mode = stat.S_IFREG
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        wfile.write(frame_header(0))
        write_line(wfile, _download_reply("not_a_regular_file", "file", 0, f"not a regular file: {target}"))
        return
    kind = "directory" if stat.S_ISDIR(mode) else "file"
    if kind == "file":
        script, args = CAT, [target]
    elif gnu_tar():
        script, args = TAR_GNU, [target, str(gnu_tar())]
    else:
        script, args = TAR_PY, [target, PY_TAR]
    try:
        proc = start_helper(script, args, ident, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as exc:
        wfile.write(frame_header(0))
        write_line(wfile, _download_reply("failed", kind, 0, f"could not start the reader: {exc}"))
        return
    assert proc.stdout is not None and proc.stderr is not None
    messages = Collector(proc.stderr)
    watchdog = Watchdog(proc, timeout)
    sent, too_large = 0, False
    fd = proc.stdout.fileno()
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, FRAME_MAX)
    try:
        while data := os.read(fd, FRAME_MAX):
            if sent + len(data) > limit:
                too_large = True
                kill_group(proc.pid)
                break
            wfile.write(frame_header(len(data)) + data)  # OSError: the client went away
            sent += len(data)
        wfile.write(frame_header(0))
    finally:
        proc.stdout.close()
        rc = finish(proc, ident, deadline)
        watchdog.cancel()
    text = messages.text()
    if too_large:
        status, message = "too_large", f"{target} is larger than {limit} bytes"
    elif watchdog.fired:
        status, message = "timed_out", f"not done within {timeout:g} s"
    elif rc != 0 and not (kind == "directory" and rc == 1):  # tar's 1: a file changed while read
        status = status_of(text)
        status = status if status in ("not_found", "permission_denied") else "failed"
        message = text or f"the reader failed (exit {rc})"
    else:
        status, message = "ok", ""
    write_line(wfile, _download_reply(status, kind, sent, message))


def _download_reply(status: DownloadStatus | str, kind: str, sent: int, message: str) -> DownloadReply:
    return {"status": status, "kind": kind, "bytes": sent, "message": message}  # type: ignore[typeddict-item]


def serve_stream(req: dict[str, Any], rfile: Any, wfile: Any, workdir: str, ident: Identity) -> None:
    """An upload or a download on this connection; a bad request is answered with an error line."""
    try:
        if req.get("op") == OP_UPLOAD:
            serve_upload(req, rfile, wfile, workdir, ident)
        else:
            serve_download(req, wfile, workdir, ident)
    except BadRequest as exc:
        write_line(wfile, {"error": str(exc)})
