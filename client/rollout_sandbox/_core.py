"""What the sync and the async client share: request shapes, answers, retries, version checks, tar.

No I/O here: `client.py` sends these requests with httpx.Client, `aio.py` with httpx.AsyncClient.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .errors import InfraError, RequestError, SandboxError, ServerTooOld

MIN_API_VERSION = 2  # the trainer API (exec, files) came with the server's api_version 2
CALL_SLACK_S = 300.0  # beyond a command's own deadline: a first call's provisioning, queueing
DEFAULT_TIMEOUT_S = 30.0  # the server's default command deadline


@dataclass(frozen=True)
class RetryPolicy:
    """How infrastructure failures are retried: `attempts` tries in all, waiting `backoff_s`,
    then `multiplier` times longer each time up to `max_backoff_s` (with up to `jitter` of it
    at random, so a burst of trainers does not retry in step); a server's Retry-After is honoured
    up to `max_backoff_s`. Every retry carries the first try's idempotency key: a call whose
    answer was lost is answered from the service's record, never run twice."""

    attempts: int = 6
    backoff_s: float = 0.5
    multiplier: float = 2.0
    max_backoff_s: float = 10.0
    jitter: float = 0.25
    retry_transport: bool = True  # no answer at all (connection refused or reset, timeout)

    def delay(self, attempt: int, error: SandboxError) -> float:
        """Seconds to wait before try number `attempt + 1` (attempt counts from 0)."""
        base = min(self.backoff_s * self.multiplier**attempt, self.max_backoff_s)
        if error.retry_after is not None:
            base = min(max(base, error.retry_after), self.max_backoff_s)
        return base * (1 + random.uniform(0, self.jitter))

    def allows(self, error: SandboxError) -> bool:
        if isinstance(error, ServerTooOld) or not error.retryable:
            return False
        return self.retry_transport or error.code != "transport"


NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class Req:
    """One HTTP request, as both clients send it."""

    method: str
    path: str
    json: Any = None
    content: bytes | Callable[[], Iterable[bytes]] | None = None  # a callable: a fresh stream per try
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S + CALL_SLACK_S


@dataclass(frozen=True)
class ExecResult:
    """How a command ended. A non-zero exit, a timeout or an OOM kill is a result, not an error."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float
    stdout_truncated_bytes: int = 0
    stderr_truncated_bytes: int = 0
    oom_killed: bool = False
    outcome: str = "ok"
    reason: str = "none"
    request_id: str = ""
    source: str = "agent"

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExecResult:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def new_key(prefix: str = "req") -> str:
    """An idempotency key: one per logical call, reused by each of its retries."""
    return f"{prefix}-{uuid.uuid4().hex}"


def error_from(response: httpx.Response) -> SandboxError:
    """The exception for a non-2xx answer, from the service's error shape."""
    try:
        body = response.json()["error"]
        code, message, retryable = str(body["code"]), str(body["message"]), bool(body.get("retryable"))
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{response.status_code}", response.text[:500] or response.reason_phrase
        retryable = response.status_code in (502, 503, 504)
    status = response.status_code
    error: SandboxError
    if status >= 500:
        error = InfraError(message, code=code, status=status, retryable=retryable)
    elif status == 404 and code == "not_found":  # no such route: the server is older than this client
        error = ServerTooOld(f"{response.request.method} {response.request.url.path} is not served: {message}")
    else:
        error = RequestError(message, code=code, status=status, retryable=retryable)
    after = response.headers.get("retry-after", "")
    error.retry_after = float(after) if after.replace(".", "", 1).isdigit() else None
    return error


def transport_error(exc: httpx.HTTPError) -> InfraError:
    """No answer at all: retryable, since every call carries its idempotency key."""
    return InfraError(f"{type(exc).__name__}: {exc}", code="transport", retryable=True)


def check_health(data: Any) -> None:
    version = data.get("api_version") if isinstance(data, dict) else None
    if not isinstance(version, int) or version < MIN_API_VERSION:
        raise ServerTooOld(
            f"the server's api_version is {version!r}; this client needs {MIN_API_VERSION} or later "
            "(the trainer API: exec and files). Upgrade the service, or use an older client."
        )


def exec_body(
    command: str | Sequence[str], *, cwd: str | None, env: dict[str, str] | None, timeout: float | None,
    source: str, merge_stderr: bool, request_id: str, item: dict[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"command": command} if isinstance(command, str) else {"argv": list(command)}
    for key, value in (("cwd", cwd), ("env", env), ("timeout", timeout), ("item", item)):
        if value is not None:
            body[key] = value
    return {**body, "source": source, "merge_stderr": merge_stderr, "request_id": request_id}


def tool_body(tool: str, rollout_id: str, arguments: dict[str, Any], call_id: str, item: Any) -> dict[str, Any]:
    body = {"type": "function_call", "id": call_id, "call_id": call_id, "name": tool,
            "arguments": json.dumps(arguments), "trace_id": rollout_id}  # fmt: skip
    return {**body, "item": item} if item is not None else body


def item_header(item: dict[str, Any] | None) -> dict[str, str]:
    return {"X-Rollout-Item": json.dumps(item)} if item is not None else {}


def mode_param(mode: int | None) -> dict[str, str]:
    return {"mode": format(mode, "o")} if mode is not None else {}


# --- directories as tar streams -----------------------------------------------------------------


def tar_directory(local: str | os.PathLike[str]) -> bytes:
    """`local`'s content as an uncompressed tar stream (see TarStream), in one piece."""
    return b"".join(TarStream(local).chunks())


class TarStream:
    """`local`'s content as an uncompressed tar stream, members named relative to it (symlinks
    kept as links), made while it is sent: its exact size is known before the first byte (from
    each member's header and size), so the upload can say its Content-Length and the service
    can pass the bytes on as they come. Uncompressed: on loopback or a LAN compressing costs
    more than it saves. A file that changes size meanwhile is cut or padded to the size its
    header says, as GNU tar does."""

    def __init__(self, local: str | os.PathLike[str]) -> None:
        root = Path(local)
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a directory")
        self.members: list[tuple[Path, tarfile.TarInfo, bytes]] = []
        with tarfile.open(fileobj=io.BytesIO(), mode="w", format=tarfile.PAX_FORMAT) as headers:
            for path in sorted(_walk(root)):
                info = headers.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
                if info is None:  # a socket or the like: tar cannot hold it
                    continue
                self.members.append((path, info, info.tobuf(tarfile.PAX_FORMAT, headers.encoding, headers.errors)))
        body = sum(len(h) + _padded(i.size if i.isreg() else 0) for _, i, h in self.members) + 2 * tarfile.BLOCKSIZE
        self.size = -(-body // tarfile.RECORDSIZE) * tarfile.RECORDSIZE

    def chunks(self, piece: int = 1024 * 1024) -> Iterator[bytes]:
        for path, info, header in self.members:
            yield header
            if not info.isreg():
                continue
            left = info.size
            with open(path, "rb") as f:
                while left > 0 and (data := f.read(min(piece, left))):
                    left -= len(data)
                    yield data
            if padding := left + _padded(info.size) - info.size:  # a file that shrank, then the block padding
                yield b"\0" * padding
        yield b"\0" * (self.size - sum(len(h) + _padded(i.size if i.isreg() else 0) for _, i, h in self.members))


def _padded(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _walk(root: Path) -> Iterator[Path]:
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            yield Path(directory, name)


def extract_tar(data: bytes | Iterable[bytes], local: str | os.PathLike[str]) -> Path:
    """Unpack a downloaded tar stream (bytes, or pieces as they arrive) into `local` (made if
    missing), refusing members that would land outside it (absolute paths, `..`, links out),
    whatever the sandbox put in the tree."""
    dest = Path(local)
    dest.mkdir(parents=True, exist_ok=True)
    source = io.BytesIO(data) if isinstance(data, bytes) else _PieceReader(iter(data))
    # A large buffer: tarfile's stream mode reads its source in pieces of this size.
    with tarfile.open(fileobj=source, mode="r|", bufsize=1024 * 1024) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return dest
        root = dest.resolve()  # Python without extraction filters: check each member by hand
        for member in tar:
            target = (dest / member.name).resolve()
            if root not in (target, *target.parents) or member.issym() or member.islnk() or member.isdev():
                raise SandboxError(f"refusing tar member {member.name!r}", code="unsafe_archive")
            tar.extract(member, dest)
    return dest


class _PieceReader(io.RawIOBase):
    """A file over an iterator of byte pieces (a streamed response), for tarfile's stream mode."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces, self._piece, self._at = pieces, memoryview(b""), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._at >= len(self._piece):  # an empty piece is not the end: only the iterator's end is
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._piece, self._at = memoryview(piece), 0
        n = min(len(buffer), len(self._piece) - self._at)
        buffer[:n] = self._piece[self._at : self._at + n]
        self._at += n
        return n
