#!/usr/bin/env python3
"""In-container agent that runs the rollout's `shell` and `read_file` tools.

Stdlib only: it is bind-mounted read-only into arbitrary sandbox images and
runs there as the container's main process, talking newline-delimited JSON to
the host worker over a unix socket (or once, through `docker exec`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import functools
import json
import math
import os
import pwd
import select
import signal
import socketserver
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

VERSION = 1
MAX_REQUEST = 4 * 1024 * 1024
MAX_OUTPUT_CAP = 16 * 1024 * 1024  # bounds the guest's memory whatever the client asks
MAX_FILE_READ = 64 * 1024 * 1024
BINARY_PROBE = 8192
CHUNK = 65536
EXIT_GRACE = 0.1  # how long background children may keep the pipe open after bash exits
KILL_BOUND = 2.0
START_RETRY = 1.0
DEFAULT_TIMEOUT = 60.0
DEFAULT_CAP = 65536
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RETRYABLE = (errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE)
# subprocess's own cwd= would chdir while still root (before the uid switch), so the
# command's directory is entered as the target user, falling back to home, then /.
CD_THEN_RUN = 'cd -- "$1" 2>/dev/null || cd -- "$HOME" 2>/dev/null || cd /; exec bash -c "$2"'
SETPRIV_PATHS = ("/usr/bin/setpriv", "/bin/setpriv")
OOM_FILES = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


class BadRequest(Exception):
    """A request the client got wrong; answered with {"error": ...}."""


class HeadTailBuffer:
    """Keeps the first and last bytes of a stream so huge outputs use bounded memory."""

    def __init__(self, cap: int) -> None:
        self.head_cap = max(0, cap) // 2
        self.tail_cap = max(0, cap) - self.head_cap
        self.head, self.tail, self.total = bytearray(), bytearray(), 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data and self.tail_cap:
            self.tail += data[-self.tail_cap :]
            excess = len(self.tail) - self.tail_cap
            if excess > 0:
                del self.tail[:excess]

    @property
    def dropped(self) -> int:
        return self.total - len(self.head) - len(self.tail)

    def text(self) -> str:
        """Assemble before decoding so a character cut at the seam becomes one U+FFFD."""
        middle = f"\n[... {self.dropped} bytes omitted ...]\n".encode() if self.dropped else b""
        return bytes(self.head + middle + self.tail).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Identity:
    """Who commands run as; uid None means 'as the guest itself' (no switching)."""

    name: str
    home: str
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] | None = None
    # argv prefix that switches to uid/gid/groups after exec (util-linux setpriv), or empty:
    # then Popen switches users itself, which costs a full fork of this process (below).
    switch: tuple[str, ...] = ()


def resolve_identity(user: str | None) -> Identity:
    """Only root can switch users; otherwise run as ourselves (tests, `docker exec -u`)."""
    if user and os.getuid() == 0:
        pw = pwd.getpwnam(user)
        groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
        switch = setpriv_prefix(pw.pw_uid, pw.pw_gid, groups)
        return Identity(pw.pw_name, pw.pw_dir or "/", pw.pw_uid, pw.pw_gid, groups, switch)
    try:
        pw = pwd.getpwuid(os.getuid())
        return Identity(pw.pw_name, pw.pw_dir or "/")
    except KeyError:
        return Identity(os.environ.get("USER", "unknown"), os.environ.get("HOME", "/"))


@functools.lru_cache(maxsize=8)
def setpriv_prefix(uid: int, gid: int, groups: tuple[int, ...]) -> tuple[str, ...]:
    """`setpriv ... --` that switches to the user, if this image has one that works; else ().

    Why: CPython starts a child with vfork only when it need not switch users itself;
    otherwise it forks, copying this process's page tables and making every page it
    touches afterwards fault once. Measured in a sandbox container: 4.8-5.4 ms of CPU per
    `echo` request with Popen(user=...), 3.5-4.5 ms with vfork + setpriv.
    Busybox's setpriv has no --reuid, and an image may lack setpriv: probe, do not trust
    the name. The probe checks the switch really happened.
    """
    args = [
        f"--reuid={uid}",
        f"--regid={gid}",
        "--groups=" + ",".join(map(str, groups)) if groups else "--clear-groups",
    ]
    # What the switched process says about itself; cat starts far faster than python.
    show = (
        ["/bin/cat", "/proc/self/status"]
        if os.access("/bin/cat", os.X_OK)
        else [sys.executable, "-S", "-c", SHOW_STATUS]
    )
    for path in SETPRIV_PATHS:
        if not os.access(path, os.X_OK):
            continue
        try:
            probe = subprocess.run([path, *args, "--", *show], capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0 and _status_shows(probe.stdout, uid, gid, groups):
            return (path, *args, "--")
    return ()


SHOW_STATUS = "import sys; sys.stdout.write(open('/proc/self/status').read())"


def _status_shows(status: bytes, uid: int, gid: int, groups: tuple[int, ...]) -> bool:
    """/proc/self/status of a process running as exactly uid, gid and groups (real, effective, saved, fs)."""
    fields = {}
    for line in status.decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return (
        fields.get("Uid") == [str(uid)] * 4
        and fields.get("Gid") == [str(gid)] * 4
        and sorted(fields.get("Groups", [])) == sorted(map(str, groups))
    )


def warm_up(workdir: str, user: str | None) -> None:
    """Run one command the way requests will, before taking any.

    The user switch is probed, and bash and its libraries are read once through this
    container's own filesystem: a warm container's first call is then as fast as the
    rest, instead of each of a burst's first calls paying for it.
    """
    with contextlib.suppress(Exception):  # a real problem shows on the real request
        run_shell({"command": "true", "timeout": 10}, workdir, resolve_identity(user))


def read_oom_count() -> int | None:
    """The cgroup's oom_kill counter (v2 or v1); None when no cgroup file is readable."""
    for path in OOM_FILES:
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, found by scanning /proc."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            fields = data[data.rindex(b")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                found.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def kill_group(pgid: int) -> None:
    """SIGKILL a group until it is empty; loops because a fork bomb keeps forking."""
    end = time.monotonic() + KILL_BOUND
    while True:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
        if not group_members(pgid) or time.monotonic() > end:
            return
        time.sleep(0.005)


def has_exited(pid: int) -> bool:
    """Peek without reaping: a zombie leader keeps its pgid from being reused."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def start_command(command: str, cwd: str, ident: Identity) -> subprocess.Popen[bytes]:
    """Start bash in its own group; retry EAGAIN (pids limit exhausted) for ~1 s."""
    env = {
        "PATH": PATH,
        "HOME": ident.home,
        "USER": ident.name,
        "LOGNAME": ident.name,
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "SHELL": "/bin/bash",
    }
    # One bash started in the directory is enough when anyone may enter it (the usual
    # workspace): Popen enters it before dropping to the user, as a root that has no
    # DAC_OVERRIDE, so that only works for world-searchable paths. Otherwise a wrapper shell
    # enters it as the user and execs a second bash (about 1 ms more per call).
    argv, start_dir = (
        (["bash", "-c", command], cwd)
        if _world_searchable(cwd)
        else (["bash", "-c", CD_THEN_RUN, "bash", cwd, command], "/")
    )
    switch: dict[str, Any] = (
        {} if ident.switch else {"user": ident.uid, "group": ident.gid, "extra_groups": ident.groups}
    )
    end = time.monotonic() + START_RETRY
    while True:
        try:
            return subprocess.Popen(
                [*ident.switch, *argv],
                cwd=start_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                process_group=0,
                **switch,
            )
        except OSError as exc:
            if start_dir != "/" and exc.errno in (errno.EACCES, errno.ENOENT, errno.ENOTDIR):
                argv, start_dir = ["bash", "-c", CD_THEN_RUN, "bash", cwd, command], "/"  # changed meanwhile
                continue
            if exc.errno not in RETRYABLE or time.monotonic() >= end:
                raise
            time.sleep(0.05)


def _world_searchable(path: str) -> bool:
    """True when every directory from / down to `path` lets anyone enter it."""
    current = "/"
    for part in [p for p in os.path.normpath(path).split("/") if p]:
        current = os.path.join(current, part)
        try:
            st = os.stat(current)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode) or not st.st_mode & stat.S_IXOTH:
            return False
    return True


def pump(proc: subprocess.Popen[bytes], buf: HeadTailBuffer, deadline: float) -> bool:
    """Copy output into buf until bash exits and the pipe closes; True if the deadline hit."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    poller = select.poll()  # not select(): fds can exceed 1024 with many connections
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    exited_at: float | None = None
    eof = False
    nap = 0.001
    while True:
        now = time.monotonic()
        if exited_at is None and has_exited(proc.pid):
            exited_at = now
        if exited_at is not None and (eof or now >= exited_at + EXIT_GRACE):
            return False
        if exited_at is None and now >= deadline:
            return True
        limit = (exited_at + EXIT_GRACE if exited_at is not None else deadline) - now
        if eof:  # stdout closed but bash still running: just wait for it
            time.sleep(min(limit, nap))
            nap = min(nap * 2, 0.05)
            continue
        if poller.poll(max(0.0, min(limit, 0.05)) * 1000):
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                continue
            if data:
                buf.write(data)
            else:
                eof = True
                poller.unregister(fd)


def drain(fd: int, buf: HeadTailBuffer) -> None:
    """Collect what is still sitting in the pipe after the kill, without ever blocking."""
    end = time.monotonic() + 0.05
    while time.monotonic() < end:
        try:
            data = os.read(fd, CHUNK)
        except OSError:
            return
        if not data:
            return
        buf.write(data)


def run_shell(req: dict[str, Any], workdir: str, ident: Identity) -> dict[str, Any]:
    """Run one command in its own process group and leave nothing of that group behind."""
    command = req.get("command")
    if not isinstance(command, str):
        raise BadRequest("shell needs a string 'command'")
    timeout = number_field(req, "timeout", DEFAULT_TIMEOUT)
    if timeout <= 0:
        raise BadRequest("'timeout' must be positive")
    cap = min(int_field(req, "output_cap", DEFAULT_CAP), MAX_OUTPUT_CAP)
    cwd = req.get("cwd") or workdir
    if not isinstance(cwd, str):
        raise BadRequest("'cwd' must be a string or null")
    if "\0" in command or "\0" in cwd:
        raise BadRequest("'command' and 'cwd' must not contain NUL characters")
    oom_before = read_oom_count()
    started = time.monotonic()
    try:
        proc = start_command(command, os.path.join(workdir, cwd), ident)  # relative: to workdir
    except OSError as exc:
        # EAGAIN from fork means the container's pids limit is used up, by the model's
        # own processes (nothing else runs there): the host side treats it as theirs.
        return {
            "error": f"could not start the command: {exc}",
            "retryable": exc.errno in RETRYABLE,
            "pids_exhausted": exc.errno == errno.EAGAIN,
        }
    buf = HeadTailBuffer(cap)
    assert proc.stdout is not None
    try:
        timed_out = pump(proc, buf, started + timeout)
    finally:
        if not has_exited(proc.pid):  # os.kill, not proc.kill(): that would reap first
            os.kill(proc.pid, signal.SIGKILL)  # in case bash moved itself out of its group
        kill_group(proc.pid)
        drain(proc.stdout.fileno(), buf)
        proc.stdout.close()
        rc = proc.wait()
    sig = -rc if rc < 0 else None
    oom_after = read_oom_count()
    oom = (
        sig == signal.SIGKILL
        and not timed_out
        and oom_before is not None
        and oom_after is not None
        and oom_after > oom_before
    )
    return {
        "exit_code": None if timed_out or rc < 0 else rc,
        "signal": int(signal.SIGKILL) if timed_out else sig,
        "timed_out": timed_out,
        "oom_killed": oom,
        "output": buf.text(),
        "output_bytes": buf.total,
        "truncated_bytes": buf.dropped,
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
    }


def file_result(
    status: str, message: str = "", buf: HeadTailBuffer | None = None, total_lines: int = 0
) -> dict[str, Any]:
    return {
        "status": status,
        "content": buf.text() if buf else "",
        "total_lines": total_lines,
        "output_bytes": buf.total if buf else 0,
        "truncated_bytes": buf.dropped if buf else 0,
        "message": message,
    }


def open_regular(path: str, shown: str) -> int | dict[str, Any]:
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


def read_file(req: dict[str, Any], workdir: str) -> dict[str, Any]:
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
    if isinstance(opened, dict):
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


def number_field(req: dict[str, Any], name: str, default: float) -> float:
    value = req.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"'{name}' must be a finite number")
    return float(value)


def int_field(req: dict[str, Any], name: str, default: int) -> int:
    value = req.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"'{name}' must be a non-negative integer")
    return value


def handle(req: Any, workdir: str, user: str | None) -> dict[str, Any]:
    """Dispatch one decoded request; every failure becomes an {"error": ...} answer."""
    try:
        if not isinstance(req, dict):
            raise BadRequest("request must be a JSON object")
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "version": VERSION, "pid": os.getpid()}
        if op == "shell":
            try:
                ident = resolve_identity(user)
            except KeyError:
                return {"error": f"no such user: {user}"}
            return run_shell(req, workdir, ident)
        if op == "read_file":
            return read_file(req, workdir)
        raise BadRequest(f"unknown op: {op}")
    except BadRequest as exc:
        return {"error": str(exc)}
    except Exception as exc:  # never let one request take the server down
        return {"error": f"internal error: {type(exc).__name__}: {exc}"}


def encode(resp: dict[str, Any]) -> bytes:
    return json.dumps(resp, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class Handler(socketserver.StreamRequestHandler):
    """One JSON line in, one JSON line out, then close."""

    timeout = 60  # a client that never finishes its request must not pin a thread forever

    def handle(self) -> None:
        server: GuestServer = self.server  # type: ignore[assignment]
        try:
            line = self.rfile.readline(MAX_REQUEST + 1)
            if not line:
                return
            if len(line) > MAX_REQUEST:
                resp: dict[str, Any] = {"error": "request too large (limit 4 MiB)"}
            else:
                try:
                    req = json.loads(line)
                except (ValueError, RecursionError):
                    resp = {"error": "request is not valid JSON"}
                else:
                    resp = handle(req, server.workdir, server.user)
            self.wfile.write(encode(resp))
        except OSError:
            pass  # client went away or timed out; nothing to answer


class GuestServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = 512

    def __init__(self, path: str, workdir: str, user: str | None) -> None:
        self.workdir, self.user = workdir, user
        super().__init__(path, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        print(f"guest: error while serving a request: {sys.exc_info()[1]!r}", file=sys.stderr)


def serve(sock_path: str, workdir: str, user: str | None) -> int:
    """Bind the socket privately (0600) and serve until SIGTERM."""
    parent = os.path.dirname(os.path.abspath(sock_path))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    if os.path.lexists(sock_path):
        os.unlink(sock_path)
    warm_up(workdir, user)  # before the socket exists: ready means fast from the first call
    old_umask = os.umask(0o177)  # no window where the socket is group/world accessible
    try:
        server = GuestServer(sock_path, workdir, user)
    finally:
        os.umask(old_umask)
    os.chmod(sock_path, 0o600)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        with contextlib.suppress(OSError):
            os.unlink(sock_path)
    return 0


def once(encoded: str, workdir: str, user: str | None) -> int:
    """`docker exec` fallback: exit non-zero only when the request itself is undecodable."""
    try:
        req = json.loads(base64.b64decode(encoded, validate=True))
        if not isinstance(req, dict):
            raise ValueError("not an object")
    except (ValueError, RecursionError) as exc:
        sys.stdout.buffer.write(encode({"error": f"could not decode the request: {exc}"}))
        return 2
    sys.stdout.buffer.write(encode(handle(req, workdir, user)))
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--user", default=None, help="run commands as this user (root only)")
    common.add_argument("--workdir", default="/workspace")
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    serve_p = sub.add_parser("serve", parents=[common])
    serve_p.add_argument("--socket", required=True)
    once_p = sub.add_parser("once", parents=[common])
    once_p.add_argument("request", help="base64 of the request JSON")
    args = parser.parse_args(argv)
    if args.mode == "serve":
        return serve(args.socket, args.workdir, args.user)
    return once(args.request, args.workdir, args.user)


if __name__ == "__main__":
    sys.exit(main())
