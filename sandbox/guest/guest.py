#!/usr/bin/env python3
"""In-container agent that runs the rollout's tools (`shell`, `read_file`) and the trainer API's ops.

Stdlib only: it is bind-mounted read-only into arbitrary sandbox images and
runs there as the container's main process, talking newline-delimited JSON to
the host worker over a unix socket (or once, through `docker exec`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import socketserver
import sys
from typing import TYPE_CHECKING, Any, Final, cast

# The guest is this file and its guest_*.py siblings (the protocol: guest_protocol.py), one
# directory mounted read-only at /opt/sandbox-guest, where the siblings are top-level
# modules. mypy reads the first branch; at run time it is taken only when this file is
# imported as part of the sandbox.guest package.
if TYPE_CHECKING or __package__:
    from .guest_common import BadRequest
    from .guest_exec import run_exec
    from .guest_files import read_file
    from .guest_procs import become_subreaper
    from .guest_protocol import (
        MAX_REQUEST,
        OP_EXEC,
        OP_PING,
        OP_READ_FILE,
        OP_RUN_TESTS,
        OP_SHELL,
        VERSION,
        ErrorReply,
        ExecRequest,
        ReadFileRequest,
        Reply,
        RunTestsRequest,
        ShellRequest,
    )
    from .guest_protocol_stream import STREAM_OPS
    from .guest_shell import resolve_identity, run_shell, warm_up
    from .guest_tests import run_tests
    from .guest_transfer import serve_stream
else:
    # Run as a script, Python has put this directory first on sys.path already; loaded
    # from its file otherwise (the unit tests), the directory may be missing there.
    sys.dont_write_bytecode = True  # read-only mount: do not even try to write __pycache__
    _HERE = os.path.dirname(os.path.abspath(__file__))
    if _HERE not in sys.path:
        sys.path.insert(0, _HERE)
    from guest_common import BadRequest
    from guest_exec import run_exec
    from guest_files import read_file
    from guest_procs import become_subreaper
    from guest_protocol import (
        MAX_REQUEST,
        OP_EXEC,
        OP_PING,
        OP_READ_FILE,
        OP_RUN_TESTS,
        OP_SHELL,
        VERSION,
        ErrorReply,
        ExecRequest,
        ReadFileRequest,
        Reply,
        RunTestsRequest,
        ShellRequest,
    )
    from guest_protocol_stream import STREAM_OPS
    from guest_shell import resolve_identity, run_shell, warm_up
    from guest_tests import run_tests
    from guest_transfer import serve_stream


def handle(req: Any, workdir: str, user: str | None) -> Reply:
    """Dispatch one decoded request; every failure becomes an {"error": ...} answer."""
    try:
        if not isinstance(req, dict):
            raise BadRequest("request must be a JSON object")
        op = req.get("op")
        if op == OP_PING:
            return {"ok": True, "version": VERSION, "pid": os.getpid()}
        if op in STREAM_OPS:
            raise BadRequest(f"{op} streams its bytes on a connection of its own: serve mode only")
        if op not in (OP_SHELL, OP_READ_FILE, OP_RUN_TESTS, OP_EXEC):
            raise BadRequest(f"unknown op: {op}")
        try:
            ident = resolve_identity(user)
        except KeyError:
            return {"error": f"no such user: {user}"}
        if op == OP_SHELL:
            return run_shell(cast(ShellRequest, req), workdir, ident)
        if op == OP_EXEC:
            return run_exec(cast(ExecRequest, req), workdir, ident)
        if op == OP_RUN_TESTS:
            return run_tests(cast(RunTestsRequest, req), workdir, ident)
        return read_file(cast(ReadFileRequest, req), workdir, ident)
    except BadRequest as exc:
        return {"error": str(exc)}
    except Exception as exc:  # never let one request take the server down
        return {"error": f"internal error: {type(exc).__name__}: {exc}"}


def encode(resp: Reply) -> bytes:
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
                resp: Reply = {"error": "request too large (limit 4 MiB)"}
            else:
                try:
                    req = json.loads(line)
                except (ValueError, RecursionError):
                    resp = {"error": "request is not valid JSON"}
                else:
                    if isinstance(req, dict) and req.get("op") in STREAM_OPS:
                        self.stream(req, server)  # bytes follow the line, or answer it
                        return
                    resp = handle(req, server.workdir, server.user)
            self.wfile.write(encode(resp))
        except OSError:
            pass  # client went away or timed out; nothing to answer

    def stream(self, req: dict[str, Any], server: GuestServer) -> None:
        try:
            ident = resolve_identity(server.user)
        except KeyError:
            self.wfile.write(encode({"error": f"no such user: {server.user}"}))
            return
        try:
            serve_stream(req, self.rfile, self.wfile, server.workdir, ident)
        except OSError:
            raise
        except Exception as exc:  # never let one request take the server down
            self.wfile.write(encode({"error": f"internal error: {type(exc).__name__}: {exc}"}))


# The answer to a request no thread could be started for. Threads count against the
# container's pids limit, which only the model's processes can use up (the guest needs one
# thread per request and nothing else runs there): the model's error, never a dropped
# connection, which the host would have to take for a broken guest.
NO_THREAD: Final[ErrorReply] = {
    "error": "the guest could not start a thread for this request: the sandbox's process limit is used up",
    "retryable": True,
    "pids_exhausted": True,
}


class GuestServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = 512

    def __init__(self, path: str, workdir: str, user: str | None) -> None:
        self.workdir, self.user = workdir, user
        super().__init__(path, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # "can't start new thread"
            answer_without_thread(request)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        print(f"guest: error while serving a request: {sys.exc_info()[1]!r}", file=sys.stderr)


def answer_without_thread(conn: socket.socket) -> None:
    """Answer on the accepting thread, briefly: a ping as usual, any other request NO_THREAD.

    The request is read first (for at most 1 s): closing a connection with its request
    unread would reset it, and the client would see no answer at all.
    """
    with contextlib.suppress(OSError):
        conn.settimeout(1.0)
        line = b""
        while not line.endswith(b"\n") and len(line) <= MAX_REQUEST:
            chunk = conn.recv(65536)
            if not chunk:
                break
            line += chunk
        try:
            is_ping = json.loads(line).get("op") == OP_PING
        except (ValueError, RecursionError, AttributeError):
            is_ping = False
        conn.sendall(encode({"ok": True, "version": VERSION, "pid": os.getpid()} if is_ping else NO_THREAD))


def serve(sock_path: str, workdir: str, user: str | None) -> int:
    """Bind the socket privately (0600) and serve until SIGTERM."""
    parent = os.path.dirname(os.path.abspath(sock_path))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    if os.path.lexists(sock_path):
        os.unlink(sock_path)
    adopt_orphans(user)
    warm_up(workdir, user)  # before the socket exists: ready means fast from the first call
    old_umask = os.umask(0o177)  # no window where the socket is group/world accessible
    try:
        server = GuestServer(sock_path, workdir, user)
    finally:
        os.umask(old_umask)
    # gVisor (runsc --host-uds=create) makes the socket on the host and refuses a chmod or stat
    # of it from inside. The umask above made it 0600 already, and its directory is the
    # worker's 0700 one, which is what keeps the sandbox user away from it.
    with contextlib.suppress(PermissionError):
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


def adopt_orphans(user: str | None) -> None:
    """Before the first command: a subreaper when the user's processes cannot be told by uid."""
    with contextlib.suppress(KeyError):  # no such user: every request says so
        become_subreaper(resolve_identity(user))


def once(encoded: str, workdir: str, user: str | None) -> int:
    """`docker exec` fallback: exit non-zero only when the request itself is undecodable."""
    adopt_orphans(user)
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
