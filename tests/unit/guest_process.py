"""The native guest (sandbox/guest/native/bin/sandbox-guest) as the guest tests drive it: a real
process over its real unix socket, or once mode on its command line."""

from __future__ import annotations

import atexit
import base64
import functools
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

NATIVE = Path(__file__).resolve().parents[2] / "sandbox" / "guest" / "native"
BUILD = NATIVE / "build.sh"
BINARY = NATIVE / "bin" / "sandbox-guest"
USER = pwd.getpwuid(os.getuid()).pw_name
HOME = pwd.getpwnam(USER).pw_dir


def build_native_guest() -> Path:
    """The binary, built (or found up to date) by build.sh. A machine without Go fails loudly."""
    if shutil.which("go") is None:
        pytest.fail(
            "the native guest needs Go to build and `go` is not on PATH: "
            "install Debian's golang-go (`apt-get install golang-go`, or deploy/install.sh)",
            pytrace=False,
        )
    done = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"build.sh failed:\n{done.stdout}{done.stderr}"
    assert BINARY.is_file() and os.access(BINARY, os.X_OK)
    return installed_guest()


@functools.cache
def installed_guest() -> Path:
    """A copy of the binary where any user may run it, as /opt/sandbox-guest is in a sandbox:
    the guest runs itself as the user where an image lacks cat or tar, and a checkout may sit in
    a directory only root can enter (CI's `mktemp -d`)."""
    place = Path(tempfile.mkdtemp(prefix="sandbox-guest-"))
    place.chmod(0o755)
    copy = place / BINARY.name
    shutil.copy2(BINARY, copy)
    copy.chmod(0o755)
    atexit.register(shutil.rmtree, place, True)
    return copy


def start_server(
    sock: Path, workdir: Path, log: Path, user: str = USER, prefix: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """`serve` as `user`, up once it answers a ping. GUEST_TEST_LEAK must not reach commands."""
    proc = subprocess.Popen(
        [*prefix, str(installed_guest()), "serve", "--socket", str(sock), "--user", user, "--workdir", str(workdir)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=dict(os.environ, GUEST_TEST_LEAK="leaked"),
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if call(sock, {"op": "ping"}, timeout=2).get("ok"):
                return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise AssertionError("guest did not come up: " + log.read_text())


def raw_call(sock: Path, payload: bytes, timeout: float = 30, shut: bool = False) -> bytes:
    """payload sent as it is (shut: then the write side closed); everything until the guest closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(payload)
        if shut:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def call(sock: Path, request: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    reply = raw_call(sock, json.dumps(request).encode() + b"\n", timeout)
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1
    return json.loads(reply)


def wire(reply: dict[str, Any]) -> bytes:
    """A reply as the guest writes it: one compact JSON line, non-ASCII as UTF-8, keys in order."""
    return json.dumps(reply, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def normalized(raw: bytes) -> bytes:
    """A reply line without what differs by nature: the guest's pid, durations."""
    raw = re.sub(rb'"pid":\d+', b'"pid":0', raw)
    return re.sub(rb'"duration_ms":[0-9.e+-]+', b'"duration_ms":0', raw)


def run_once(payload: bytes, workdir: Path, user: str = USER) -> subprocess.CompletedProcess[str]:
    arg = base64.b64encode(payload).decode()
    return subprocess.run(
        [str(installed_guest()), "once", arg, "--user", user, "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=20,
    )


def live_procs_with_arg(arg: str) -> list[int]:
    """Non-zombie processes whose argv contains arg (unique sleep lengths mark each test)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        if arg.encode() in argv and "State:\tZ" not in status:
            found.append(int(name))
    return found


def world_readable_dir(prefix: str) -> Path:
    """A directory another user may enter (pytest's tmp is 0700); the caller removes it."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o755)
    return workdir
