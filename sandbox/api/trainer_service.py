"""API side of the trainer API (domain/trainer.py): exec and file transfers on a rollout's sandbox.

Each is a call through ToolService, like a tool call: idempotency by request_id, the tool
budget (for the agent's calls only), the rollout's first call provisioning it, run slots,
the host's call queue, the same recording and the same failure taxonomy. What differs is only
what goes in and what comes out: a trainer's mistakes are 4xx (never the model's 200), a
file's bytes travel straight between this API and the host's data port (worker/data_port.py),
or through the store (store/transfers.py) where there is no such way, and the answers are the
trainer API's.
"""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from .. import metrics
from ..config import Settings
from ..domain.calls import CallResult, ToolCall, check_item, check_rollout_id
from ..domain.errors import BadRequest, InfraError, SandboxError
from ..domain.outcomes import Outcome
from ..domain.trainer import (
    DOWNLOAD_TOOL,
    EXEC_TOOL,
    TRAINER,
    UPLOAD_TOOL,
    DownloadArgs,
    UploadArgs,
    check_path,
    check_request_id,
    exec_response,
    parse_exec,
    parse_mode,
    transfer_error,
    upload_kind,
)
from ..store import Store
from ..store.transfers import CHUNK_BYTES
from .tool_service import ToolService

TRANSFER_TTL_S = 3600  # an upload's bytes wait this long at most for their call (then expire)


@dataclass(frozen=True)
class Upload:
    """An upload whose body the route is about to put into a transfer: checked before any byte is read."""

    rollout_id: str
    args: UploadArgs
    request_id: str | None
    item: dict[str, Any] | None


@dataclass
class TrainerService:
    store: Store
    tools: ToolService
    settings: Settings

    def exec(self, rollout_id: str, body: Any, item_header: str | None) -> tuple[dict[str, Any], CallResult]:
        """Run one exec; the 200 answer and the recorded call. Raises BadRequest (400) for a body
        no retry can fix, the rollout's 4xx, or InfraError (5xx)."""
        rid = check_rollout_id(rollout_id)
        s = self.settings
        req = parse_exec(
            body,
            default_timeout=s.shell.default_timeout_s,
            max_timeout=s.exec.max_timeout_s,
            max_command_bytes=s.shell.max_command_bytes,
        )
        item = req.item if req.item is not None else parse_item_header(item_header)
        call = self._call(EXEC_TOOL, rid, req.request_id, req.args.recorded(), item, req.source, req.args)
        result = self.tools.handle(call)
        return exec_response(result), result

    def plan_upload(
        self, rollout_id: str, path: Any, content_type: str | None, mode: str | None, request_id: str | None,
        item_header: str | None,
    ) -> Upload:  # fmt: skip
        """Check everything about an upload but its body. Raises BadRequest."""
        args = UploadArgs(
            path=check_path(path),
            kind=upload_kind(content_type),
            size=0,
            mode=parse_mode(mode),
            transfer=self.store.transfers.new_id(),
            timeout_s=self.settings.files.timeout_s,
        )
        rid = check_rollout_id(rollout_id)
        return Upload(rid, args, check_request_id(request_id), parse_item_header(item_header))

    def data_address(self, rollout_id: str, item: dict[str, Any] | None) -> str | None:
        """Where the rollout's host takes transfers straight from this API (its data port), readying
        the rollout first; None when there is no such way (the bytes then go through the store).

        A failure here is left to the call itself, which meets it again and records and counts it.
        """
        try:
            rec = self.tools.rollouts.ensure_ready(check_rollout_id(rollout_id), item)
        except SandboxError:
            return None
        view = self.tools.rollouts.host_views().get(rec.host or "")
        address = view.info.get("data_addr", "") if view is not None else ""
        host = address.rpartition(":")[0]
        # A loopback address is the worker's own machine: only reachable from the same one (make up,
        # the tests), never from a pod elsewhere, where something else may listen on that port.
        if host in ("127.0.0.1", "localhost", "::1", "[::1]") and view is not None:
            return address if view.info.get("data_node") == socket.gethostname() else None
        return address or None

    def upload(self, plan: Upload, size: int, direct: bool = False) -> dict[str, Any]:
        """Write the body, which the route streams to the host's data port (`direct`) or put in the
        plan's transfer. Raises the transfer's 4xx, or InfraError."""
        a = plan.args
        args = UploadArgs(a.path, a.kind, size, a.mode, a.transfer, a.timeout_s, direct=direct)
        call = self._call(UPLOAD_TOOL, plan.rollout_id, plan.request_id, args.recorded(), plan.item, TRAINER, args)
        try:
            result = self.tools.handle(call)
        finally:
            with contextlib.suppress(InfraError):  # it expires anyway
                self.store.transfers.delete(args.transfer)
        if result.outcome != Outcome.OK:
            raise transfer_error(result)
        metrics.TRANSFER_BYTES.labels("upload", "direct" if direct else "store").inc(size)
        extra = result.extra
        return {"path": extra.get("path"), "bytes": extra.get("bytes", size), "kind": args.kind,
                "request_id": result.call_id}  # fmt: skip

    def download(
        self, rollout_id: str, path: Any, item: dict[str, Any] | None, direct_transfer: str | None = None
    ) -> dict[str, Any]:
        """Read the path: its bytes go to the route over the host's data port as transfer
        `direct_transfer`, or into a new transfer in the store. {"transfer" (the store's), "bytes",
        "kind"}. Raises the transfer's 4xx (nothing left behind), or InfraError."""
        rid = check_rollout_id(rollout_id)
        s = self.settings.files
        transfer = direct_transfer or self.store.transfers.new_id()
        args = DownloadArgs(check_path(path), transfer, s.max_download_bytes, s.timeout_s, direct=bool(direct_transfer))
        call = self._call(DOWNLOAD_TOOL, rid, None, args.recorded(), item, TRAINER, args)
        try:
            result = self.tools.handle(call)
        except BaseException:
            if not args.direct:
                with contextlib.suppress(InfraError):
                    self.store.transfers.delete(args.transfer)
            raise
        if result.outcome != Outcome.OK:
            if not args.direct:
                self.store.transfers.delete(args.transfer)
            raise transfer_error(result)
        size = int(result.extra.get("bytes", 0))
        metrics.TRANSFER_BYTES.labels("download", "direct" if args.direct else "store").inc(size)
        kept = {} if args.direct else {"transfer": args.transfer}
        return {**kept, "bytes": size, "kind": result.extra.get("kind", "file")}

    def write_bytes(self, rollout_id: str, path: str, data: bytes) -> dict[str, Any]:
        """Upload bytes already in hand (a small file of E2B's), through the store. Raises as upload."""
        plan = self.plan_upload(rollout_id, path, "application/octet-stream", None, None, None)
        for start in range(0, len(data), CHUNK_BYTES):
            self.store.transfers.append(plan.args.transfer, data[start : start + CHUNK_BYTES], TRANSFER_TTL_S)
        return self.upload(plan, len(data))

    def read_bytes(self, rollout_id: str, path: str) -> tuple[str, bytes]:
        """Download whole, through the store: (kind, bytes); a directory's bytes are its tar.
        Raises as download."""
        info = self.download(rollout_id, path, None)
        transfer, body = info["transfer"], bytearray()
        try:
            while (chunk := self.store.transfers.pop(transfer)) is not None:
                body += chunk
        finally:
            self.store.transfers.delete(transfer)
        return str(info["kind"]), bytes(body)

    @staticmethod
    def _call(
        tool: str, rid: str, request_id: str | None, recorded: Any, item: dict[str, Any] | None, source: str, args: Any
    ) -> ToolCall:
        return ToolCall(
            tool=tool,
            rollout_id=rid,
            # Without a key a retry cannot be recognised: the call gets an id of its own.
            call_id=request_id or f"anon-{uuid.uuid4().hex}",
            item_id=None,
            arguments=None,
            raw_arguments=recorded,
            item=item,
            source=source,
            args=args,
        )


def parse_item_header(text: str | None) -> dict[str, Any] | None:
    """X-Rollout-Item: the dataset row as JSON, for a rollout's first call. Raises BadRequest."""
    if not text:
        return None
    try:
        item = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"X-Rollout-Item is not JSON: {exc}") from exc
    return check_item(item)
