"""The guest's processes: starting them on record, and killing whatever the sandbox user leaves.

Part of the guest executor (guest.py); stdlib only. The protocol: guest_protocol.py.

Nothing the sandbox user starts may outlive its call (DESIGN.md 5c), whatever session or
process group it moved itself into. Killing the command's own process group is not
enough (`setsid` leaves it), so when a command returns the guest sweeps: it SIGKILLs every
process of the sandbox user that no running child of the guest accounts for, again and
again until none is left. Calls of one rollout may run in parallel, so "accounts for" is
exact: every child the guest starts (a command's bash, read_file's reader, the user-switch
probe) is started under one lock and stays on record until it has been waited for, and a
process is spared while it is such a child, in such a child's process group, or descends
from one. The lock also keeps a sweep from seeing a child between its start and its record.

The sandbox user is found by uid: its processes cannot change their uid. When the guest
runs commands as its own uid (tests, `docker exec -u`), it cannot tell the user's
processes by uid, so it becomes a child subreaper instead: orphans are re-parented to the
guest, not to init, and the sweep kills the guest's own descendants (and reaps the
orphans' zombies, which are then its children; only those, by pid, never waitpid(-1),
which would take a running command's exit status from subprocess).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

KILL_BOUND = 2.0  # seconds a sweep (or a group kill) keeps killing, against fork bombs
START_RETRY = 1.0  # seconds a start is retried while the pids limit is used up
RETRYABLE = (errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE)
PR_SET_CHILD_SUBREAPER = 36

_lock = threading.Lock()
_running: set[int] = set()  # pids of children started and not yet waited for
_subreaper = False


@dataclass(frozen=True)
class Identity:
    """Who commands run as; uid None means 'as the guest itself' (no switching)."""

    name: str
    home: str
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] | None = None
    # argv prefix that switches to uid/gid/groups after exec (util-linux setpriv), or empty:
    # then Popen switches users itself, which costs a full fork of this process (guest_shell.py).
    switch: tuple[str, ...] = ()

    @property
    def stray_uid(self) -> int | None:
        """The uid a sweep kills by: the user's, when it is not the guest's own."""
        return self.uid if self.uid is not None and self.uid != os.getuid() else None


def become_subreaper(ident: Identity) -> None:
    """Adopt orphans when they cannot be told by uid (see the module docstring). Call once, first."""
    global _subreaper
    if ident.stray_uid is not None:
        return  # found by uid; init (docker's) keeps reaping orphans at once
    try:
        import ctypes

        _subreaper = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (ImportError, OSError, AttributeError):
        _subreaper = False


def spawn(
    argv: Sequence[str],
    ident: Identity,
    *,
    cwd: str,
    env: Mapping[str, str],
    stderr: int | IO[Any],
    pass_fds: tuple[int, ...] = (),
    stdin: int = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start argv as the user, leader of a new process group, on record; retry EAGAIN for ~1 s.

    Release it with `forget` once waited for. pass_fds: descriptors the child inherits;
    stdin: /dev/null, or subprocess.PIPE for a writer the guest feeds (an upload).
    """
    switch: dict[str, Any] = (
        {}
        if ident.switch or ident.uid is None
        else {"user": ident.uid, "group": ident.gid, "extra_groups": ident.groups}
    )
    end = time.monotonic() + START_RETRY
    while True:
        try:
            with _lock:
                proc = subprocess.Popen(
                    [*ident.switch, *argv],
                    cwd=cwd,
                    env=env,
                    stdin=stdin,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    process_group=0,
                    pass_fds=pass_fds,
                    **switch,
                )
                _running.add(proc.pid)
            return proc
        except OSError as exc:
            if exc.errno not in RETRYABLE or time.monotonic() >= end:
                raise
            time.sleep(0.05)


def forget(proc: subprocess.Popen[bytes]) -> None:
    """Take a waited-for child off the record (its pid may be reused from now on)."""
    with _lock:
        _running.discard(proc.pid)


def has_exited(pid: int) -> bool:
    """Peek without reaping: a zombie leader keeps its pgid from being reused."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    return [pid for pid, p in scan().items() if p.pgid == pgid and not p.zombie]


def kill_group(pgid: int) -> None:
    """SIGKILL a group until it is empty; loops because a fork bomb keeps forking."""
    end = time.monotonic() + KILL_BOUND
    while True:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
        if not group_members(pgid) or time.monotonic() > end:
            return
        time.sleep(0.005)


def sweep(ident: Identity, *, spare_running: bool = True) -> None:
    """Kill, until none is left (for at most KILL_BOUND), every process of the sandbox user
    that no running child accounts for; reap adopted orphans. See the module docstring.

    spare_running=False kills the user's running calls too: grading takes the sandbox over
    from the agent (guest_tests.py), and nothing of the agent's may run while it does."""
    uid = ident.stray_uid
    if uid is None and not _subreaper:
        return  # neither a uid nor a tree to go by (the guest imported in-process)
    me = os.getpid()
    end = time.monotonic() + KILL_BOUND
    while True:
        with _lock:
            procs = scan()
            strays = _strays(procs, me, uid, spare_running)
            _kill(strays, procs)
            if _subreaper:
                for pid, p in procs.items():
                    if p.ppid == me and p.zombie and pid not in _running:
                        with contextlib.suppress(ChildProcessError):
                            os.waitpid(pid, os.WNOHANG)
        if not strays or time.monotonic() > end:
            return
        time.sleep(0.005)


@dataclass(frozen=True)
class Proc:
    ppid: int
    pgid: int
    zombie: bool


def scan() -> dict[int, Proc]:
    """Every process this guest can see (its container's), from /proc/PID/stat."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            fields = data[data.rindex(b")") + 2 :].split()
            found[int(name)] = Proc(int(fields[1]), int(fields[2]), fields[0] in (b"Z", b"X"))
        except (OSError, ValueError, IndexError):
            continue
    return found


def real_uid(pid: int) -> int | None:
    """From /proc/PID/status: unlike the owner of /proc/PID, true even for a non-dumpable process."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _strays(procs: Mapping[int, Proc], me: int, uid: int | None, spare_running: bool = True) -> list[int]:
    spared = _accounted_for(procs) if spare_running else set()
    found = []
    for pid, p in procs.items():
        if pid == me or p.zombie or pid in spared:
            continue
        if (uid is not None and real_uid(pid) == uid) or (_subreaper and _descends(pid, me, procs)):
            found.append(pid)
    return found


def _accounted_for(procs: Mapping[int, Proc]) -> set[int]:
    """Running children, their process groups, and everything below them."""
    children: dict[int, list[int]] = {}
    for pid, p in procs.items():
        children.setdefault(p.ppid, []).append(pid)
    todo = [pid for pid, p in procs.items() if pid in _running or p.pgid in _running]
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, ()))
    return seen


def _descends(pid: int, ancestor: int, procs: Mapping[int, Proc]) -> bool:
    for _ in range(len(procs)):  # bounded: ppid links read at different moments may loop
        p = procs.get(pid)
        if p is None or p.ppid <= 1:
            return False
        if p.ppid == ancestor:
            return True
        pid = p.ppid
    return False


def _kill(strays: list[int], procs: Mapping[int, Proc]) -> None:
    for pid in strays:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    # A group of strays only is killed whole too, in one step: a fork bomb's new children
    # are born into it between the scan and the kills above.
    chosen = set(strays)
    for pgid in {procs[pid].pgid for pid in strays}:
        members = [pid for pid, p in procs.items() if p.pgid == pgid and not p.zombie]
        if pgid > 1 and all(pid in chosen for pid in members):
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
