"""The guest's run_tests op: grade the workspace the agent left by running hidden tests in it.

Part of the guest executor (guest.py); stdlib only. The protocol: guest_protocol.py; the
threat model and why each step is there: docs/grading-threat-model.md.

The agent's code is hostile here: it wants the tests to pass without doing the work. So,
in this order, as root, while none of the agent's processes runs:

1. every process of the sandbox user is killed (calls still running included): nothing of
   the agent's can race the steps below or write results in advance;
2. the `restore` paths, and every test-configuration file anywhere in the workdir
   (conftest.py, pytest.ini, setup.cfg, ...), and the top-level names that would shadow the
   test runner (pytest.py, _pytest/, ...), are put back to the environment's base state: a
   path the base does not have is removed. The base is a root-only copy of the workspace
   baked into the environment's image (BASE_DIR); without one the base is empty;
3. the hidden files are written, root-owned and read-only to the user, every directory on
   their way checked to be a real directory (a symlink the agent planted is removed);
4. a fresh results directory and a fresh HOME are made, and the reward file's directory is
   emptied, so nothing written before the run can count;
5. the command runs as the sandbox user with a fixed environment: system PATH, no user
   site-packages, no bytecode written, our pytest plugin loaded (it reports every test's
   outcome), JUnit XML asked for in the results directory;
6. when it returns, every process of the user is killed again, and only then are the
   results read, without following symlinks: a process left behind cannot rewrite them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import shutil
import stat
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from .guest_common import BadRequest, int_field, number_field
    from .guest_procs import Identity, sweep
    from .guest_protocol import (
        DEFAULT_CAP,
        MAX_OUTPUT_CAP,
        OP_SHELL,
        ErrorReply,
        RunTestsReply,
        RunTestsRequest,
    )
    from .guest_shell import run_shell
else:
    from guest_common import BadRequest, int_field, number_field
    from guest_procs import Identity, sweep
    from guest_protocol import DEFAULT_CAP, MAX_OUTPUT_CAP, OP_SHELL, ErrorReply, RunTestsReply, RunTestsRequest
    from guest_shell import run_shell

BASE_DIR = "/opt/sandbox-base/workdir"  # the workspace as the environment defines it (preparation.py)
GRADING_DIR = "/run/sandbox-grading"
HIDDEN_ROOT = "/tests"  # absolute hidden files may only go here (Harbor's layout)
PLUGIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pytest_plugin")
# Test configuration pytest (or Python) reads from wherever it sits in the tree.
CONFIG_NAMES = frozenset(
    {"conftest.py", "pytest.ini", ".pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml"}
    | {"sitecustomize.py", "usercustomize.py"}
)
# Top-level names that `python -m pytest` (the workdir first on sys.path) would import
# instead of the real runner.
SHADOW_NAMES = frozenset({"pytest.py", "pytest", "_pytest", "pluggy", "pluggy.py", "py.py", "iniconfig"})
# The reward file's directory is emptied before the run: never one of these or below them.
PROTECTED_ROOTS: tuple[str, ...] = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/opt", "/proc")
PROTECTED_ROOTS += ("/run", "/sbin", "/sys", "/usr", "/var")
MAX_WALK = 200_000  # directory entries looked at when searching for configuration files
MAX_RESULTS_BYTES = 2 * 1024 * 1024  # of reports, and of JUnit XML in all
MAX_REWARD_BYTES = 4096


def run_tests(req: RunTestsRequest, workdir: str, ident: Identity) -> RunTestsReply | ErrorReply:
    command = req.get("command")
    if not isinstance(command, str) or not command or "\0" in command:
        raise BadRequest("run_tests needs a non-empty string 'command' without NUL")
    timeout = number_field(req, "timeout", 300.0)
    if timeout <= 0:
        raise BadRequest("'timeout' must be positive")
    cap = min(int_field(req, "output_cap", DEFAULT_CAP), MAX_OUTPUT_CAP)
    restore = _string_list(req, "restore")
    files = _files(req)
    reward_file = req.get("reward_file")
    if reward_file is not None and not isinstance(reward_file, str):
        raise BadRequest("'reward_file' must be a string or null")
    reward_dir = _reward_dir(reward_file, workdir) if reward_file else None
    owner = (ident.uid, ident.gid) if ident.uid is not None and ident.gid is not None and os.getuid() == 0 else None

    started = time.monotonic()
    sweep(ident, spare_running=False)
    try:
        results, home = _prepare(workdir, restore, files, reward_dir, owner)
    except OSError as exc:  # e.g. the agent filled the disk: the sandbox's state, not ours
        return {"error": f"could not set up the tests: {exc}", "setup_failed": True}
    setup_ms = round((time.monotonic() - started) * 1000, 3)
    reports = ReportPipe()
    env = {
        "SANDBOX_REPORTS_FD": str(reports.write_fd),
        "HOME": home,
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": PLUGIN_DIR,
        "PYTEST_ADDOPTS": f"-p sandbox_results -p no:cacheprovider --junitxml={results}/pytest-junit.xml",
        "SANDBOX_TEST_RESULTS": results,
    }
    shell = {"op": OP_SHELL, "command": command, "timeout": timeout, "output_cap": cap}
    try:
        reply = run_shell(shell, workdir, ident, env, pass_fds=(reports.write_fd,))  # type: ignore[arg-type]
    finally:
        reports.close_write_end()
        sweep(ident, spare_running=False)  # nothing left behind may rewrite what is read below
    text = reports.collect()
    if "error" in reply:
        return reply  # type: ignore[return-value]
    return {
        **reply,  # type: ignore[typeddict-item]
        "reports": text,
        "junit": _junit_reports(results),
        "reward": _read_capped(reward_file, MAX_REWARD_BYTES) if reward_file else None,
        "setup_ms": setup_ms,
    }


def _string_list(req: Mapping[str, Any], name: str) -> list[str]:
    value = req.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v and "\0" not in v for v in value):
        raise BadRequest(f"'{name}' must be a list of non-empty strings")
    return value


def _files(req: Mapping[str, Any]) -> dict[str, bytes]:
    value = req.get("files") or {}
    if not isinstance(value, dict):
        raise BadRequest("'files' must be an object of path -> base64 content")
    out = {}
    for path, content in value.items():
        if not isinstance(content, str) or "\0" in path:
            raise BadRequest(f"'files': {path!r} must map to base64 text")
        try:
            out[path] = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"'files': {path!r} is not base64: {exc}") from exc
    return out


def _parts(path: str) -> list[str]:
    """The components of a relative path, refusing '..' and empty paths."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise BadRequest(f"path {path!r} must name something below its root, without '..'")
    return parts


def _reward_dir(reward_file: str, workdir: str) -> str:
    if not reward_file.startswith("/"):
        raise BadRequest("'reward_file' must be an absolute path")
    parts = _parts(reward_file)
    directory = "/" + "/".join(parts[:-1])
    work = os.path.normpath(workdir)
    if len(parts) < 3 or any(directory == r or directory.startswith(r + "/") for r in PROTECTED_ROOTS):
        raise BadRequest(f"'reward_file' {reward_file!r} must lie in a directory of its own, e.g. /logs/verifier")
    if work == directory or work.startswith(directory + "/") or directory.startswith(work + "/"):
        raise BadRequest("'reward_file' must not lie in the workdir, nor its directory hold the workdir")
    return directory


# --- setting the stage (as root, with no process of the user alive) ---


def _prepare(
    workdir: str, restore: list[str], files: dict[str, bytes], reward_dir: str | None, owner: tuple[int, int] | None
) -> tuple[str, str]:
    for rel in restore:
        _restore(workdir, _parts(rel), owner)
    _restore_configuration(workdir, owner)
    if any(path.startswith("/") for path in files):
        _remove("/tests")
    for path, content in files.items():
        _write_hidden(workdir, path, content)
    if reward_dir is not None:
        parent = _real_dirs("/", _parts(reward_dir)[:-1])
        target = os.path.join(parent, os.path.basename(reward_dir))
        _remove(target)
        _fresh_dir(target, 0o755, owner)
    _remove(GRADING_DIR)
    os.mkdir(GRADING_DIR, 0o755)
    results, home = os.path.join(GRADING_DIR, "results"), os.path.join(GRADING_DIR, "home")
    _fresh_dir(results, 0o700, owner)
    _fresh_dir(home, 0o700, owner)
    return results, home


def _real_dirs(root: str, parts: list[str]) -> str:
    """Make root/parts... real directories (a symlink or file in the way is removed); return the path."""
    current = root
    for part in parts:
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):  # a symlink is not a directory for lstat
            _remove(current)
            os.mkdir(current, 0o755)
    return current


def _remove(path: str) -> None:
    """Remove whatever is at path, never following a symlink."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)  # the agent may have made it unreadable to stop the removal
        shutil.rmtree(path, onerror=_make_removable)
    else:
        os.unlink(path)


def _make_removable(func: Any, path: str, exc_info: Any) -> None:
    """rmtree's error hook: open up a directory the agent locked, then retry once."""
    parent = os.path.dirname(path)
    os.chmod(parent, 0o700)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o700)
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _restore(workdir: str, parts: list[str], owner: tuple[int, int] | None) -> None:
    """Put workdir/parts back as the base has it: copied from BASE_DIR, or removed."""
    parent = _real_dirs(workdir, parts[:-1])
    target = os.path.join(parent, parts[-1])
    _remove(target)
    source = os.path.join(BASE_DIR, *parts)
    if not os.path.lexists(source):
        return
    if os.path.isdir(source) and not os.path.islink(source):
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target, follow_symlinks=False)
    if owner is not None:  # as the agent had it at the start (the base copy is root's)
        _chown_tree(target, owner)


def _chown_tree(path: str, owner: tuple[int, int]) -> None:
    os.lchown(path, *owner)
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, names in os.walk(path):
            for name in dirs + names:
                os.lchown(os.path.join(root, name), *owner)


def _restore_configuration(workdir: str, owner: tuple[int, int] | None) -> None:
    """Every configuration file in the tree and every runner-shadowing top-level name, as the base has it."""
    found: list[list[str]] = []
    with contextlib.suppress(OSError):
        found += [[name] for name in os.listdir(workdir) if name in SHADOW_NAMES]
    seen = 0
    for root, dirs, names in os.walk(workdir):  # does not follow symlinks into directories
        dirs[:] = [d for d in dirs if d != ".git"]
        seen += len(dirs) + len(names)
        rel = os.path.relpath(root, workdir)
        prefix = [] if rel == "." else rel.split("/")
        found += [[*prefix, name] for name in names if name in CONFIG_NAMES]
        if seen > MAX_WALK:
            break
    for base_root, _dirs, names in os.walk(BASE_DIR):  # and what the base has that the agent removed
        rel = os.path.relpath(base_root, BASE_DIR)
        prefix = [] if rel == "." else rel.split("/")
        found += [[*prefix, name] for name in names if name in CONFIG_NAMES]
    for parts in {tuple(p) for p in found}:
        _restore(workdir, list(parts), owner)


def _write_hidden(workdir: str, path: str, content: bytes) -> None:
    """A hidden file, root-owned and read-only to everyone else; stale bytecode beside it removed."""
    if path.startswith("/"):
        if not path.startswith(HIDDEN_ROOT + "/"):
            raise BadRequest(f"hidden file {path!r}: absolute paths must lie under {HIDDEN_ROOT}/")
        root, parts = "/", _parts(path)
    else:
        root, parts = workdir, _parts(path)
    parent = _real_dirs(root, parts[:-1])
    target = os.path.join(parent, parts[-1])
    _remove(target)
    _remove(os.path.join(parent, "__pycache__"))
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(content)


def _fresh_dir(path: str, mode: int, owner: tuple[int, int] | None) -> None:
    os.mkdir(path, mode)
    os.chmod(path, mode)  # not reduced by the umask
    if owner is not None:
        os.chown(path, *owner)


# --- reading what the runner produced (its processes are all dead by now) ---


class ReportPipe:
    """The pytest plugin's channel: a pipe, not a file, so nothing can rewrite what was sent.

    Code of the agent's that runs in the test process after the session ends (an atexit
    handler) can only add lines after the session's "finish" line, which the grader ignores.
    A thread reads while the tests run (a full pipe would block the plugin).
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self._chunks: list[bytes] = []
        self._size = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.read_fd, 65536)
            except OSError:
                return
            if not data:
                return
            if self._size < MAX_RESULTS_BYTES:  # past the cap: keep draining, keep nothing
                self._chunks.append(data[: MAX_RESULTS_BYTES - self._size])
                self._size += len(self._chunks[-1])

    def close_write_end(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.write_fd)

    def collect(self) -> str:
        """Everything sent, once every writer is gone (the sweep killed them)."""
        self._reader.join(5.0)
        with contextlib.suppress(OSError):
            os.close(self.read_fd)
        return b"".join(self._chunks).decode("utf-8", errors="replace")


def _read_capped(path: str, limit: int) -> str | None:
    """A regular file's first `limit` bytes as text; None when absent, a symlink or not a file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(limit).decode("utf-8", errors="replace")


def _junit_reports(results: str) -> list[str]:
    """The JUnit XML files the runner left directly in the results directory, within MAX_RESULTS_BYTES."""
    reports, budget = [], MAX_RESULTS_BYTES
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(results))[:64]:
            if not name.endswith(".xml") or budget <= 0:
                continue
            text = _read_capped(os.path.join(results, name), budget)
            if text is not None:
                reports.append(text)
                budget -= len(text.encode())
    return reports
