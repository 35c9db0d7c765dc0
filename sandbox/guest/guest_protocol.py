"""The guest executor's wire protocol, version 1: the one place it is defined.

The guest (sandbox-guest, a static Go binary built from sandbox/guest/native) runs inside
every sandbox container; the host worker talks to it (sandbox/backends/guest_client.py,
docker.py). The worker builds and reads messages through the TypedDicts and constants below;
the guest implements exactly what this docstring says and mirrors the constants in
native/protocol.go (tests/unit/test_guest.py checks they agree). Stdlib only: the worker
imports it as `sandbox.guest.guest_protocol`.

Transport
---------
serve mode, the normal one; the container's main process runs it under `supervise`, which
starts it again if it dies (native/supervise.go):

    /opt/sandbox-guest/sandbox-guest serve --socket PATH --user USER --workdir DIR

- A unix stream socket at PATH, mode 0600 (no moment where it is wider); a missing parent
  directory is created 0700, a stale file at PATH is replaced. The socket is bound only
  after a warm-up command has run, so a socket that answers `ping` means ready and fast.
- One request per connection. The client sends one JSON object, UTF-8, on one line ended
  by "\\n" (or by shutting down its write side); the guest answers with one JSON object on
  one line ended by "\\n" (UTF-8, compact, non-ASCII not escaped) and closes. A request
  line over MAX_REQUEST bytes (4 MiB, the newline included) is answered with an error; a
  connection whose request stalls for 60 s is closed without an answer.
- Connections are served concurrently. A guest that needs a new thread for a request can
  fail to start one when the container's pids limit is used up; it must still answer: a
  ping as usual, any other request with the error NO_THREAD (Errors, below); it never
  drops a connection it accepted. (The native guest serves each connection on a goroutine
  and makes its few OS threads at start-up, so it never needs to answer NO_THREAD:
  native/main.go, server.go.) SIGTERM or SIGINT ends the server (exit 0) and removes the
  socket.

once mode, the fallback through `docker exec` (one process per request):

    /opt/sandbox-guest/sandbox-guest once BASE64 --user USER --workdir DIR

- BASE64 is the standard base64 of the request's JSON. The reply is printed the same way,
  one line, the last line of stdout. Exit status 0 whenever the request was decoded (error
  replies included); 2 when BASE64 is not base64 of a JSON object, with the reply
  {"error": "could not decode the request: ..."}.

Both modes: --user names the user commands run as (honoured only when the guest runs as
root; otherwise commands run as the guest's own user); --workdir (default /workspace) is
what relative `cwd` and `path` fields are resolved against.

Requests and replies
--------------------
Every request is a JSON object with a string "op"; fields a request does not use are
ignored. An optional field that is absent or null takes its default. Integers are JSON integers
(true/false are not integers); numbers are integers or finite floats.

ping -> PingReply
    {"op": "ping"}
    reply: {"ok": true, "version": VERSION, "pid": <the guest's pid>}

shell -> ShellReply | ErrorReply
    command      string, required, no NUL. Run as `bash -c COMMAND`.
    timeout      number > 0, seconds; default DEFAULT_TIMEOUT (60). The command's deadline;
                 the guest sets no upper bound. Cleanup can take ~2 s more: wait longer.
    output_cap   integer >= 0, bytes; default DEFAULT_CAP (65536); above MAX_OUTPUT_CAP
                 (16 MiB) it is taken as 16 MiB.
    cwd          string or null; null or "" means the workdir, a relative path is relative
                 to it. Entered as the user; where the user may not enter it, the command
                 starts in the user's home directory instead, failing that in /.
    stdin is /dev/null; stdout and stderr share one pipe; the environment is exactly
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin, HOME, USER and LOGNAME
    of the user, LANG=C.UTF-8, TERM=dumb, SHELL=/bin/bash. The command's oom_score_adj is
    1000 (Guarantees, below).
    reply:
      exit_code        int | null: bash's exit status; null if a signal killed it or it timed out
      signal           int | null: the signal that killed bash; 9 (SIGKILL) when timed out
      timed_out        bool: the deadline passed while bash was still running
      oom_killed       bool: killed by the kernel's OOM killer (Guarantees, below)
      output           string: stdout+stderr as kept by the output cap, decoded as UTF-8
                       (invalid bytes become U+FFFD)
      output_bytes     int: bytes the command wrote in all
      truncated_bytes  int: bytes left out of the middle of output; 0 when all of it fits
      duration_ms      float: wall time from the start to the end of cleanup, ms, 3 decimals

read_file -> ReadFileReply | ErrorReply
    path         string, required, non-empty, no NUL; relative to the workdir, an absolute
                 path is used as it is.
    start_line   integer | null: first line wanted, 1-based; default 1.
    end_line     integer | null: last line wanted, inclusive; default the file's last line.
    output_cap   as for shell.
    The file is read as --user, exactly as a shell command of that user would read it
    (permissions, symlinks and /proc alike): a reader program (cat) started like a command
    opens it and the guest selects lines from what it writes; the guest never opens the
    file itself. It stats the path first, only so that devices, FIFOs and sockets are
    answered not_a_regular_file without being opened (all it learns as root is that type).
    At most MAX_FILE_READ (64 MiB) of a file is read, within READ_FILE_TIMEOUT (20 s); a
    file is binary when one of its first BINARY_PROBE (8 KiB) bytes is NUL. Lines end at
    "\\n"; a last line without one counts as a line.
    reply:
      status           one of READ_FILE_STATUSES:
                         ok                  content holds the lines asked for ("" when the
                                             file is empty)
                         not_found           no such file (or a path component is not a
                                             directory)
                         is_a_directory
                         not_a_regular_file  a device, FIFO, socket...
                         permission_denied   the user may not read it
                         unreadable          any other failure to read it (an I/O error,
                                             as /proc/self/mem gives; a symlink loop; no
                                             end within 20 s; the reader killed): the
                                             message says which
                         binary              a NUL byte within the first 8 KiB
                         invalid_range       start_line < 1, end_line < start_line, or
                                             start_line past the last line of a non-empty file
      content          string: the selected lines, newlines included, capped like shell's
                       output; "" unless status is ok
      total_lines      int: lines in the file (in its first 64 MiB); 0 unless status is ok or
                       invalid_range
      output_bytes     int: bytes of the selected lines
      truncated_bytes  int: bytes left out of the middle of content
      message          string: why, for every status but ok, for people; with ok, "" or
                       "only the first 64 MiB were read"

run_tests -> RunTestsReply | ErrorReply  (grading; native/tests.go has the steps, and
    docs/grading-threat-model.md the why)
    command      string, required, non-empty, no NUL: the test command, run as `bash -c`
                 in the workdir as --user.
    timeout      number > 0, seconds; default 300.
    output_cap   as for shell (the output's head + tail).
    restore      list of workdir-relative paths put back to the base state (a root-only
                 copy of the workspace at /opt/sandbox-base/workdir; absent: an empty base)
                 before anything else. Every conftest.py, pytest.ini, .pytest.ini, tox.ini,
                 setup.cfg, pyproject.toml, sitecustomize.py and usercustomize.py in the
                 tree, and the top-level pytest.py, pytest/, _pytest/, pluggy(.py),
                 py.py and iniconfig, are restored the same way in any case.
    files        object: path -> base64 content; the hidden files, written after the
                 restore, root-owned, mode 0644. A relative path is in the workdir; an
                 absolute one must lie under /tests/ (which is emptied first).
    reward_file  string | null: an absolute path whose directory is emptied (made anew,
                 owned by --user) before the run and read after it.
    Every process of --user is killed before the steps above and again after the command.
    The command's environment is shell's plus HOME (a fresh empty directory),
    PYTHONNOUSERSITE=1, PYTHONDONTWRITEBYTECODE=1, PYTHONPATH (the guest's pytest plugin),
    PYTEST_ADDOPTS (loads that plugin, asks for JUnit XML), SANDBOX_TEST_RESULTS (a fresh
    directory, owned by --user, where any runner may write JUnit XML files) and
    SANDBOX_REPORTS_FD (the write end of a pipe the guest reads: the plugin's channel).
    reply: every field of ShellReply, and
      reports          string: the plugin's JSON lines (native/pytest_plugin/sandbox_results.py),
                       as read from the pipe, first 2 MiB; "" when no pytest ran
      junit            list of strings: the *.xml files left in SANDBOX_TEST_RESULTS
                       (2 MiB in all)
      reward           string | null: the reward file's first 4 KiB, null when missing or
                       not a regular file (a symlink is not followed)
      setup_ms         float: the time the steps before the command took
    A failure to set the stage (e.g. no space left: the sandbox's own state) is
    {"error": "could not set up the tests: ...", "setup_failed": true}.

exec -> ExecReply | ErrorReply  (the trainer API: native/exec.go)
    argv         list of strings, non-empty, no NUL: the program and its arguments (PATH
                 looked up), or
    command      string, no NUL: run as `bash -c COMMAND`. Exactly one of the two.
    cwd          as shell's, except that a directory the user cannot enter is not replaced
                 by another: the command does not run (exit 1, bash's message on stderr).
    env          object of string -> string, or null: added to shell's environment (a name
                 it has is replaced); names non-empty, without "=" or NUL.
    timeout      as shell's. output_cap: as shell's, for stdout and for stderr each.
    merge_stderr bool, default false: stderr shares stdout's pipe (interleaved as written).
    stdin is /dev/null; shell's guarantees hold (group, deadline, sweep, OOM score).
    reply: shell's, with stdout and stderr (each kept as shell's output is) for output, and
      stdout_bytes, stderr_bytes, stdout_truncated_bytes, stderr_truncated_bytes for its sizes.
    A command that could not be started: as shell's ("could not start the command: ...").

upload, download: the request line is followed (upload) or answered (download) by a byte
    stream; guest_protocol_stream.py defines both. Serve mode only.

Errors
------
Instead of its reply, any request can get ErrorReply {"error": "<message>"}: a request
that is not a JSON object, not valid JSON, too large, has an unknown op or a field of the
wrong type or range (the message names the field), a shell or read_file request for a
--user that does not exist ("no such user: USER"), or a bug ("internal error: ...").
Whatever the path names, a failure to read it is a read_file status, never an error.
Three errors carry two more fields: a shell command that could not be started ("could not
start the command: ..."), a read_file reader that could not be started ("could not start
reading PATH: ..."), and NO_THREAD (no thread could be started for the request), with
    retryable       bool: the start failed with EAGAIN, ENOMEM, EMFILE or ENFILE, after the
                    guest retried for about 1 s (always true for NO_THREAD)
    pids_exhausted  bool: it failed with EAGAIN, i.e. the container's pids limit is used up,
                    by the sandbox's own processes (nothing else runs there); true for
                    NO_THREAD
Clients tell an error from a reply by the key "error". The server outlives every request.

Guarantees
----------
- Commands run as --user, the unprivileged sandbox user, with its uid, gid and groups, each
  as the leader of a process group of its own.
- At the deadline the whole group is SIGKILLed, again and again until it is empty (for at
  most ~2 s, against fork bombs). When bash exits by itself, what it left in the background
  gets 0.1 s to close the output pipe, then the group is killed the same way.
- Nothing the user starts survives its call, whatever session or group it moved into
  (setsid, setpgid): when a command returns, every process of --user that no running
  request accounts for is SIGKILLed, again and again until none is left (for at most
  ~2 s). A running request accounts for its own child (bash, read_file's reader), that
  child's process group, and every descendant of either; so calls running in parallel
  do not kill each other's processes. (A process that a running command both moved out
  of its group and orphaned is not accounted for, and dies at the next return.) The
  user's processes are told by uid; when --user is the guest's own user (no switch), the
  guest is a child subreaper and kills its own descendants instead. once mode sweeps the
  same way, knowing only its own request: a once request running beside a serve guest's
  request (a guest restarted meanwhile) may kill that request's processes.
- Memory: every shell command starts with oom_score_adj 1000 (its bash sources a script
  the guest passes as a sealed memfd on fd 3, BASH_ENV=/proc/self/fd/3, before the
  command's code; the script closes fd 3 and unsets BASH_ENV; where no memfd can be made, a
  wrapper shell raises the score before it execs bash: native/shell.go), so when the
  container's memory is used up the kernel's OOM killer takes the model's processes before
  the guest, which keeps the score the container started it with. Not guaranteed against a
  command that lowers its own score again (allowed down to that same starting score) and
  fills the memory with processes smaller than the guest: then the guest can be the OOM
  killer's choice (docs/architecture.md, "The guest executor").
- Output is kept as head + tail: of a cap C, the first C // 2 bytes and the last C - C // 2.
  When bytes were left out, output is head + "\\n[... N bytes omitted ...]\\n" + tail, with
  N = truncated_bytes (the marker is not counted in the cap), decoded after joining; the
  guest's memory stays bounded however much a command prints. read_file's content alike.
- OOM evidence: oom_killed is true only when bash died of SIGKILL without timing out and the
  cgroup's oom_kill counter (/sys/fs/cgroup/memory.events; cgroup v1: memory.oom_control)
  grew during the call. With no readable counter it is false.

Versions
--------
ping reports VERSION. It changes when a change would break an existing client or guest
(a field removed or renamed, a meaning changed); a new optional field does not change it.
A new read_file status (unreadable) came with the client's mapping of it: the guest is
mounted from the worker's own package, so both sides come from one version.
"""

from typing import Final, Literal, Required, TypedDict, get_args

VERSION: Final = 1

OP_PING: Final = "ping"
OP_SHELL: Final = "shell"
OP_READ_FILE: Final = "read_file"
OP_RUN_TESTS: Final = "run_tests"
OP_EXEC: Final = "exec"

MAX_REQUEST: Final = 4 * 1024 * 1024  # bytes of one request line, its newline included
DEFAULT_TIMEOUT: Final = 60.0  # shell: seconds
DEFAULT_CAP: Final = 65536  # output_cap: bytes
MAX_OUTPUT_CAP: Final = 16 * 1024 * 1024  # bounds the guest's memory whatever the client asks
MAX_FILE_READ: Final = 64 * 1024 * 1024  # read_file reads no further
BINARY_PROBE: Final = 8192  # read_file: a NUL byte in this many first bytes means binary
READ_FILE_TIMEOUT: Final = 20.0  # read_file: seconds the reader may take (a FIFO swapped in blocks)

ReadFileStatus = Literal[
    "ok",
    "not_found",
    "is_a_directory",
    "not_a_regular_file",
    "permission_denied",
    "binary",
    "invalid_range",
    "unreadable",
]
READ_FILE_STATUSES: Final[tuple[ReadFileStatus, ...]] = get_args(ReadFileStatus)


class PingRequest(TypedDict):
    op: Literal["ping"]


class PingReply(TypedDict):
    ok: bool  # always true
    version: int  # VERSION
    pid: int  # the guest's process id


class ShellRequest(TypedDict, total=False):
    op: Required[Literal["shell"]]
    command: Required[str]
    timeout: float | None  # seconds, > 0; default DEFAULT_TIMEOUT
    output_cap: int | None  # bytes, >= 0; default DEFAULT_CAP, at most MAX_OUTPUT_CAP
    cwd: str | None  # default the workdir; relative to it


class ShellReply(TypedDict):
    exit_code: int | None
    signal: int | None
    timed_out: bool
    oom_killed: bool
    output: str
    output_bytes: int
    truncated_bytes: int
    duration_ms: float


class ReadFileRequest(TypedDict, total=False):
    op: Required[Literal["read_file"]]
    path: Required[str]
    start_line: int | None  # 1-based; default 1
    end_line: int | None  # inclusive; default the last line
    output_cap: int | None  # as ShellRequest's


class ReadFileReply(TypedDict):
    status: ReadFileStatus
    content: str
    total_lines: int
    output_bytes: int
    truncated_bytes: int
    message: str


class RunTestsRequest(TypedDict, total=False):
    op: Required[Literal["run_tests"]]
    command: Required[str]
    timeout: float | None  # seconds, > 0; default 300
    output_cap: int | None  # as ShellRequest's
    restore: list[str] | None  # workdir-relative paths put back to the base state
    files: dict[str, str] | None  # path -> base64 content, the hidden files
    reward_file: str | None  # absolute path, read after the run


class RunTestsReply(ShellReply):
    reports: str  # the pytest plugin's JSON lines
    junit: list[str]  # JUnit XML files the runner wrote
    reward: str | None  # the reward file's text
    setup_ms: float


class ExecRequest(TypedDict, total=False):
    op: Required[Literal["exec"]]
    argv: list[str] | None  # exactly one of argv and command
    command: str | None
    cwd: str | None
    env: dict[str, str] | None
    timeout: float | None
    output_cap: int | None  # per stream
    merge_stderr: bool | None


class ExecReply(TypedDict):
    exit_code: int | None
    signal: int | None
    timed_out: bool
    oom_killed: bool
    stdout: str
    stderr: str
    stdout_bytes: int
    stderr_bytes: int
    stdout_truncated_bytes: int
    stderr_truncated_bytes: int
    duration_ms: float


class ErrorReply(TypedDict, total=False):
    error: Required[str]
    retryable: bool  # only when a command or reader could not be started, and NO_THREAD
    pids_exhausted: bool  # likewise
    setup_failed: bool  # run_tests: the stage could not be set (the sandbox's own state)


Request = PingRequest | ShellRequest | ReadFileRequest | RunTestsRequest | ExecRequest
Reply = PingReply | ShellReply | ReadFileReply | RunTestsReply | ExecReply | ErrorReply

PING: Final[PingRequest] = {"op": OP_PING}


def shell_request(command: str, timeout: float, output_cap: int, cwd: str | None = None) -> ShellRequest:
    """A shell request; cwd None means the guest's workdir."""
    return {"op": OP_SHELL, "command": command, "timeout": timeout, "output_cap": output_cap, "cwd": cwd}


def read_file_request(path: str, start_line: int | None, end_line: int | None, output_cap: int) -> ReadFileRequest:
    """A read_file request; None for a line means from the first line or to the last."""
    return {"op": OP_READ_FILE, "path": path, "start_line": start_line, "end_line": end_line, "output_cap": output_cap}


def run_tests_request(
    command: str,
    timeout: float,
    output_cap: int,
    restore: list[str],
    files: dict[str, str],
    reward_file: str | None,
) -> RunTestsRequest:
    """A run_tests request; files maps paths to base64 content."""
    return {
        "op": OP_RUN_TESTS,
        "command": command,
        "timeout": timeout,
        "output_cap": output_cap,
        "restore": restore,
        "files": files,
        "reward_file": reward_file,
    }


def exec_request(argv: list[str] | None, command: str | None, **fields: object) -> ExecRequest:
    """An exec request: argv, or command for bash -c (exactly one is not None); fields: cwd, env,
    timeout, output_cap, merge_stderr."""
    return {"op": OP_EXEC, "argv": argv, "command": command, **fields}  # type: ignore[typeddict-item]
