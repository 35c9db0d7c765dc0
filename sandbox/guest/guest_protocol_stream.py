"""The guest protocol, continued: the two ops that move bytes, `upload` and `download`.

Everything guest_protocol.py says about transport, errors, versions and guarantees holds;
only the shape of one connection differs. Stdlib only, imported by the worker like
guest_protocol.py; the guest's side is native/transfer*.go.

Why a stream and not one JSON line: a request line is at most 4 MiB and a client takes a
reply of at most 8 MiB, so a file of any size would need chunking into many requests, each
with base64's third on top and a JSON parse of megabytes. Here the bytes travel raw, once,
and the guest pipes them straight into (or out of) a program running as the user.

upload -> UploadReply | ErrorReply
    The request line is followed on the same connection by exactly `size` raw bytes.
    path     string, required, non-empty, no NUL; relative to the workdir.
    kind     "file": the bytes are the file's content; its missing parent directories are
             made. "tar": the bytes are a tar stream (any compression tar reads), unpacked
             into the directory `path`, made if missing; an existing directory's own
             owner and mode are left as they are.
    size     integer >= 0, required: bytes that follow the line.
    mode     integer or null: for kind "file", the file's permission bits (e.g. 493 = 0o755);
             default as the user's umask makes it. Ignored for "tar" (members keep theirs).
    timeout  number > 0, seconds; default TRANSFER_TIMEOUT. Reading the bytes and writing them.
    Writing is done by a program running as --user (cat or tar, started like a command, in
    a group of its own, swept like one): the user's permissions decide, and what it makes
    is the user's. The guest reads all `size` bytes even when writing failed early, then
    answers one JSON line and closes.
    reply:
      status   one of UPLOAD_STATUSES:
                 ok                  written
                 not_found           a path component vanished meanwhile
                 not_a_directory     a component of path is not a directory
                 is_a_directory      kind "file" and path is a directory
                 permission_denied   the user may not write there
                 no_space            the sandbox's disk (or its limit) is full
                 invalid_archive     kind "tar" and the bytes are not a tar stream tar reads
                 timed_out           not done within the timeout
                 failed              any other failure: message says which
      path     string: the absolute path written
      bytes    int: bytes received
      message  string: why, for every status but ok (the writer's own words)

download -> a byte stream, then DownloadReply | ErrorReply
    path       string, required, non-empty, no NUL; relative to the workdir.
    max_bytes  integer >= 0; default MAX_DOWNLOAD: more than that is not sent (too_large).
    timeout    number > 0, seconds; default TRANSFER_TIMEOUT.
    A regular file is sent as its bytes (read by cat as --user); a directory as a tar
    stream of its content (tar as --user, members named ./...); the guest learns the type
    by a stat as root, and nothing else that way, as read_file. The answer is frames, then
    the reply line: a frame is the data's length in lowercase hex and "\\n", then that many
    bytes; a frame of length 0 ends the data. An error reply (bad request) comes alone,
    without frames.
    reply:
      status   one of DOWNLOAD_STATUSES: ok, not_found, permission_denied,
               not_a_regular_file (a device, FIFO, socket), too_large (the data passed
               max_bytes; what was sent is incomplete), timed_out, failed. Anything but ok
               means the frames sent are not the whole thing and must be thrown away.
      kind     "file" | "directory"
      bytes    int: data bytes sent
      message  string: why, for every status but ok
"""

from typing import Final, Literal, Required, TypedDict, get_args

OP_UPLOAD: Final = "upload"
OP_DOWNLOAD: Final = "download"
STREAM_OPS: Final = (OP_UPLOAD, OP_DOWNLOAD)
TRANSFER_TIMEOUT: Final = 300.0  # seconds
MAX_DOWNLOAD: Final = 1024**3  # bytes the guest sends at most when the request names no limit
FRAME_MAX: Final = 1024 * 1024  # the guest sends frames of at most this many bytes
MAX_REPLY_LINE: Final = 64 * 1024  # an upload's or a download's reply line is shorter than this

UploadKind = Literal["file", "tar"]
UploadStatus = Literal[
    "ok",
    "not_found",
    "not_a_directory",
    "is_a_directory",
    "permission_denied",
    "no_space",
    "invalid_archive",
    "timed_out",
    "failed",
]
DownloadStatus = Literal[
    "ok", "not_found", "permission_denied", "not_a_regular_file", "too_large", "timed_out", "failed"
]
UPLOAD_STATUSES: Final[tuple[UploadStatus, ...]] = get_args(UploadStatus)
DOWNLOAD_STATUSES: Final[tuple[DownloadStatus, ...]] = get_args(DownloadStatus)


class UploadRequest(TypedDict, total=False):
    op: Required[Literal["upload"]]
    path: Required[str]
    kind: Required[UploadKind]
    size: Required[int]
    mode: int | None
    timeout: float | None


class UploadReply(TypedDict):
    status: UploadStatus
    path: str
    bytes: int
    message: str


class DownloadRequest(TypedDict, total=False):
    op: Required[Literal["download"]]
    path: Required[str]
    max_bytes: int | None
    timeout: float | None


class DownloadReply(TypedDict):
    status: DownloadStatus
    kind: Literal["file", "directory"]
    bytes: int
    message: str


StreamRequest = UploadRequest | DownloadRequest


def upload_request(path: str, kind: UploadKind, size: int, mode: int | None, timeout: float) -> UploadRequest:
    return {"op": OP_UPLOAD, "path": path, "kind": kind, "size": size, "mode": mode, "timeout": timeout}


def download_request(path: str, max_bytes: int, timeout: float) -> DownloadRequest:
    return {"op": OP_DOWNLOAD, "path": path, "max_bytes": max_bytes, "timeout": timeout}


def frame_header(size: int) -> bytes:
    """The line that announces a frame of `size` bytes (0: the end of the data)."""
    return b"%x\n" % size
