"""The guest's exec op: a program or a bash command with its own cwd and environment, stdout
and stderr kept apart (the trainer API's exec; guest_protocol.py documents the op).

Part of the guest executor (guest.py); stdlib only. The guarantees are shell's, kept the same
way (guest_shell.py): the user switch, a process group of its own, the deadline and the kill
until the group is empty, the sweep of what the command left behind, the OOM score.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:  # imported as part of sandbox.guest (and by mypy)
    from .guest_common import CHUNK, BadRequest, HeadTailBuffer, int_field, number_field
    from .guest_procs import RETRYABLE, Identity, forget, has_exited, kill_group, sweep
    from .guest_protocol import DEFAULT_CAP, DEFAULT_TIMEOUT, MAX_OUTPUT_CAP, ErrorReply, ExecReply, ExecRequest
    from .guest_shell import EXIT_GRACE, command_env, drain, launch, read_oom_count
else:  # a top-level module, imported by guest.py from its own directory
    from guest_common import CHUNK, BadRequest, HeadTailBuffer, int_field, number_field
    from guest_procs import RETRYABLE, Identity, forget, has_exited, kill_group, sweep
    from guest_protocol import DEFAULT_CAP, DEFAULT_TIMEOUT, MAX_OUTPUT_CAP, ErrorReply, ExecReply, ExecRequest
    from guest_shell import EXIT_GRACE, command_env, drain, launch, read_oom_count

# Every program starts under bash, so that BASH_ENV (or OOM_FIRST) raises its OOM score
# first; `exec` then replaces bash with it (about 1 ms). A cwd the user cannot enter stops
# the command: a trainer that names a directory means that one, unlike a model's shell call
# that always starts in the workspace.
RUN_ARGV = 'exec "$@"'
CD_THEN_ARGV = 'cd -- "$1" || exit 1; shift; exec "$@"'
CD_THEN_COMMAND = 'cd -- "$1" || exit 1; exec bash -c "$2"'


def _request_fields(req: ExecRequest) -> tuple[list[str] | None, str | None, dict[str, str], bool]:
    argv, command = req.get("argv"), req.get("command")
    if (argv is None) == (command is None):
        raise BadRequest("exec needs exactly one of 'argv' (a list of strings) and 'command' (a string)")
    if argv is not None:
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise BadRequest("'argv' must be a non-empty list of strings without NUL characters")
    elif not isinstance(command, str) or "\0" in command:
        raise BadRequest("'command' must be a string without NUL characters")
    env = req.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and k and "=" not in k and "\0" not in k and isinstance(v, str) and "\0" not in v
        for k, v in env.items()
    ):
        raise BadRequest("'env' must map names (no '=' or NUL) to strings (no NUL)")
    merge = req.get("merge_stderr") or False
    if not isinstance(merge, bool):
        raise BadRequest("'merge_stderr' must be true or false")
    return argv, command, env, merge


def start(
    argv: list[str] | None, command: str | None, cwd: str, ident: Identity, env: dict[str, str], merge: bool
) -> subprocess.Popen[bytes]:
    full_env = command_env(ident, env)
    stderr = subprocess.STDOUT if merge else subprocess.PIPE
    if argv is not None:
        return launch(["bash", "-c", RUN_ARGV, "bash", *argv], CD_THEN_ARGV, argv, cwd, ident, full_env, stderr)
    return launch(["bash", "-c", str(command)], CD_THEN_COMMAND, [str(command)], cwd, ident, full_env, stderr)


def pump(proc: subprocess.Popen[bytes], pipes: dict[int, HeadTailBuffer], deadline: float) -> bool:
    """Copy each pipe into its buffer until the program exits and the pipes close; True at the deadline.

    As guest_shell.pump, for several pipes: background children get EXIT_GRACE to close them.
    """
    poller = select.poll()
    for fd in pipes:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    open_fds = dict(pipes)
    exited_at: float | None = None
    nap = 0.001
    while True:
        now = time.monotonic()
        if exited_at is None and has_exited(proc.pid):
            exited_at = now
        if exited_at is not None and (not open_fds or now >= exited_at + EXIT_GRACE):
            return False
        if exited_at is None and now >= deadline:
            return True
        limit = (exited_at + EXIT_GRACE if exited_at is not None else deadline) - now
        if not open_fds:  # every pipe closed but the program still running: just wait for it
            time.sleep(min(limit, nap))
            nap = min(nap * 2, 0.05)
            continue
        for fd, _ in poller.poll(max(0.0, min(limit, 0.05)) * 1000):
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                continue
            if data:
                open_fds[fd].write(data)
            else:
                poller.unregister(fd)
                del open_fds[fd]


def run_exec(req: ExecRequest, workdir: str, ident: Identity) -> ExecReply | ErrorReply:
    argv, command, env, merge = _request_fields(req)
    timeout = number_field(req, "timeout", DEFAULT_TIMEOUT)
    if timeout <= 0:
        raise BadRequest("'timeout' must be positive")
    cap = min(int_field(req, "output_cap", DEFAULT_CAP), MAX_OUTPUT_CAP)
    cwd = req.get("cwd") or workdir
    if not isinstance(cwd, str) or "\0" in cwd:
        raise BadRequest("'cwd' must be a string without NUL characters, or null")
    oom_before = read_oom_count()
    started = time.monotonic()
    try:
        proc = start(argv, command, os.path.join(workdir, cwd), ident, env, merge)
    except OSError as exc:  # EAGAIN: the pids limit, used up by the sandbox's own processes
        return {
            "error": f"could not start the command: {exc}",
            "retryable": exc.errno in RETRYABLE,
            "pids_exhausted": exc.errno == errno.EAGAIN,
        }
    out, err = HeadTailBuffer(cap), HeadTailBuffer(cap)
    assert proc.stdout is not None
    pipes = {proc.stdout.fileno(): out}
    if proc.stderr is not None:
        pipes[proc.stderr.fileno()] = err
    try:
        timed_out = pump(proc, pipes, started + timeout)
    finally:
        if not has_exited(proc.pid):  # os.kill, not proc.kill(): that would reap first
            os.kill(proc.pid, signal.SIGKILL)
        kill_group(proc.pid)
        for fd, buf in pipes.items():
            drain(fd, buf)
        _close(proc)
        rc = proc.wait()
        forget(proc)
        sweep(ident)
    sig = -rc if rc < 0 else None
    oom_after = read_oom_count()
    oom = sig == signal.SIGKILL and not timed_out and oom_before is not None and (oom_after or 0) > oom_before
    return {
        "exit_code": None if timed_out or rc < 0 else rc,
        "signal": int(signal.SIGKILL) if timed_out else sig,
        "timed_out": timed_out,
        "oom_killed": oom,
        "stdout": out.text(),
        "stderr": err.text(),
        "stdout_bytes": out.total,
        "stderr_bytes": err.total,
        "stdout_truncated_bytes": out.dropped,
        "stderr_truncated_bytes": err.dropped,
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
    }


def _close(proc: subprocess.Popen[Any]) -> None:
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
