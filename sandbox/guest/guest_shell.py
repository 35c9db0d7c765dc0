"""The guest's shell op: who commands run as, starting them, their process groups, output.

Part of the guest executor (guest.py); stdlib only. The protocol: guest_protocol.py.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import pwd
import select
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:  # imported as part of sandbox.guest (and by mypy)
    from .guest_common import CHUNK, BadRequest, HeadTailBuffer, int_field, number_field
    from .guest_protocol import (
        DEFAULT_CAP,
        DEFAULT_TIMEOUT,
        MAX_OUTPUT_CAP,
        OP_SHELL,
        ErrorReply,
        ShellReply,
        ShellRequest,
    )
else:  # a top-level module, imported by guest.py from its own directory
    from guest_common import CHUNK, BadRequest, HeadTailBuffer, int_field, number_field
    from guest_protocol import (
        DEFAULT_CAP,
        DEFAULT_TIMEOUT,
        MAX_OUTPUT_CAP,
        OP_SHELL,
        ErrorReply,
        ShellReply,
        ShellRequest,
    )

EXIT_GRACE = 0.1  # how long background children may keep the pipe open after bash exits
KILL_BOUND = 2.0
START_RETRY = 1.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RETRYABLE = (errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE)
# subprocess's own cwd= would chdir while still root (before the uid switch), so the
# command's directory is entered as the target user, falling back to home, then /.
CD_THEN_RUN = 'cd -- "$1" 2>/dev/null || cd -- "$HOME" 2>/dev/null || cd /; exec bash -c "$2"'
SETPRIV_PATHS = ("/usr/bin/setpriv", "/bin/setpriv")
OOM_FILES = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


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
        run_shell({"op": OP_SHELL, "command": "true", "timeout": 10}, workdir, resolve_identity(user))


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


def run_shell(req: ShellRequest, workdir: str, ident: Identity) -> ShellReply | ErrorReply:
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
