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
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:  # imported as part of sandbox.guest (and by mypy)
    from .guest_common import CHUNK, BadRequest, HeadTailBuffer, int_field, number_field
    from .guest_procs import RETRYABLE, Identity, forget, has_exited, kill_group, spawn, sweep
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
    from guest_procs import RETRYABLE, Identity, forget, has_exited, kill_group, spawn, sweep
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
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# subprocess's own cwd= would chdir while still root (before the uid switch), so the
# command's directory is entered as the target user, falling back to home, then /.
CD_THEN_RUN = 'cd -- "$1" 2>/dev/null || cd -- "$HOME" 2>/dev/null || cd /; exec bash -c "$2"'
# What guest_bash_env.sh does, for when the user cannot read that file (its directory is not
# world-searchable): the wrapper shell raises its own OOM score, and exec keeps it.
OOM_FIRST = "{ echo 1000 >/proc/self/oom_score_adj; } 2>/dev/null; "
SETPRIV_PATHS = ("/usr/bin/setpriv", "/bin/setpriv")
OOM_FILES = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")
# Sourced by every command's bash before the command's own code (BASH_ENV): it raises the
# command's oom_score_adj to 1000, so the container's OOM killer takes the model's
# processes before the guest, and takes BASH_ENV out of the command's environment.
BASH_ENV_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest_bash_env.sh")
AS_GUEST = Identity("guest", "/")  # a program started as the guest itself (the setpriv probe)


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
        try:  # started on record like every child, so no sweep takes it for a stray
            probe = spawn([path, *args, "--", *show], AS_GUEST, cwd="/", env={}, stderr=subprocess.DEVNULL)
        except OSError:
            continue
        try:
            out, _ = probe.communicate(timeout=10)
        except subprocess.SubprocessError:
            probe.kill()
            out = b""
        finally:
            probe.wait()
            forget(probe)
        if probe.returncode == 0 and _status_shows(out, uid, gid, groups):
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


def command_env(ident: Identity, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The fixed environment every command starts with; extra_env adds to it (or replaces)."""
    env = {
        "PATH": PATH,
        "HOME": ident.home,
        "USER": ident.name,
        "LOGNAME": ident.name,
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "SHELL": "/bin/bash",
        **(extra_env or {}),
    }
    if bash_env_usable():
        env["BASH_ENV"] = BASH_ENV_FILE  # the file unsets it before the command runs
    return env


def launch(
    direct: list[str],
    enter_then: str,
    args: list[str],
    cwd: str,
    ident: Identity,
    env: dict[str, str],
    stderr: int,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start a command in `cwd` as the user, in its own group, on record (guest_procs.py); retry
    EAGAIN (pids limit) for ~1 s. Shell and exec both start here.

    `direct` is bash started in the directory itself. That is enough when anyone may enter it
    (the usual workspace): Popen enters it before dropping to the user, as root, so it is only
    done for world-searchable paths, where root and the user see the same. Otherwise a wrapper
    bash runs the script `enter_then` with `cwd` and `args` as $1...: it enters the directory as
    the user and execs the command (about 1 ms more per call); it also raises the OOM score
    when BASH_ENV cannot.
    """
    bash_env = bash_env_usable()  # cached: decided once per guest
    if bash_env and _world_searchable(cwd):
        try:
            return spawn(direct, ident, cwd=cwd, env=env, stderr=stderr, pass_fds=pass_fds)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.ENOENT, errno.ENOTDIR):
                raise  # else: the directory changed meanwhile; enter it as the user
    script = ("" if bash_env else OOM_FIRST) + enter_then
    return spawn(["bash", "-c", script, "bash", cwd, *args], ident, cwd="/", env=env, stderr=stderr, pass_fds=pass_fds)


def start_command(
    command: str,
    cwd: str,
    ident: Identity,
    extra_env: Mapping[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    """A shell call's bash: stdout and stderr on one pipe. extra_env: the test runner's settings."""
    env = command_env(ident, extra_env)
    return launch(["bash", "-c", command], CD_THEN_RUN, [command], cwd, ident, env, subprocess.STDOUT, pass_fds)


@functools.lru_cache(maxsize=1)
def bash_env_usable() -> bool:
    """Whether the user can read BASH_ENV_FILE: bash would print an error for each command otherwise."""
    return _world_searchable(os.path.dirname(BASH_ENV_FILE)) and _mode_has(BASH_ENV_FILE, stat.S_IROTH)


def _mode_has(path: str, bits: int) -> bool:
    try:
        return bool(os.stat(path).st_mode & bits)
    except OSError:
        return False


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


def run_shell(
    req: ShellRequest,
    workdir: str,
    ident: Identity,
    extra_env: Mapping[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> ShellReply | ErrorReply:
    """Run one command in its own process group; leave nothing of the user's behind but what
    other running calls own. extra_env, pass_fds: see start_command and spawn."""
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
        proc = start_command(command, os.path.join(workdir, cwd), ident, extra_env, pass_fds)  # relative: to workdir
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
        forget(proc)
        sweep(ident)  # what left the group (setsid, setpgid) and no other running call owns
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
