"""Worker side of the trainer API (domain/trainer.py): exec, upload and download in the rollout's
container, each ending as a CallResult the executor records like a tool call's.

Exec is one guest request. A transfer streams: an upload's bytes go from the API's connection
to this host's data port (data_port.py), or from the store (store/transfers.py), into the
guest's writer piece by piece as they come; a download's bytes go from the guest's reader to
the API's connection, or into the store, the same way. What the reader did not send whole is
not an answer: the reply's status says so, and the store's copy is thrown away.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from ..backends.base import Backend
from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..domain.calls import CallResult
from ..domain.classify import cap_text, exec_outcome, transfer_outcome
from ..domain.errors import InfraError, InternalError
from ..domain.messages import CallRequest
from ..domain.outcomes import Outcome
from ..domain.rollout import RolloutRecord
from ..domain.trainer import DownloadArgs, ExecArgs, UploadArgs
from ..guest.guest_protocol import exec_request
from ..guest.guest_protocol_stream import download_request, upload_request
from ..store import Store
from ..store.transfers import ChunkBuffer
from .data_port import DataPort, Slot, body_chunks, frame_sink

CAP_SLACK_BYTES = 256  # as executor.py's: the guest's own omission marker fits in it
TRANSFER_TTL_S = 3600  # a transfer the API never collected expires after this
CLAIM_WAIT_S = 30.0  # the API connects before it queues the call: this is only for a lost connection


@dataclass
class TrainerOps:
    store: Store
    backend: Backend
    settings: Settings
    clock: Clock = SYSTEM_CLOCK
    data_port: DataPort | None = None  # transfers straight from and to the API (data_port.py)

    def run(self, request: CallRequest, rec: RolloutRecord) -> CallResult:
        args = request.args
        started = self.clock.time()
        if isinstance(args, ExecArgs):
            outcome, reason, output, extra, exit_code = self._exec(request, args, rec)
        elif isinstance(args, UploadArgs):
            outcome, reason, output, extra, exit_code = self._upload(args, rec)
        else:
            assert isinstance(args, DownloadArgs)
            outcome, reason, output, extra, exit_code = self._download(args, rec)
        finished = self.clock.time()
        # Sizes: a transfer's bytes; an exec's, both streams (the guest's counts, under "exec").
        ran = extra.get("exec") or {}
        output_bytes = extra.get("bytes", int(ran.get("stdout_bytes", 0)) + int(ran.get("stderr_bytes", 0)))
        truncated = int(ran.get("stdout_truncated_bytes", 0)) + int(ran.get("stderr_truncated_bytes", 0))
        return request.result(
            outcome,
            reason,
            output,
            started=started,
            finished=finished,
            exit_code=exit_code,
            output_bytes=int(output_bytes),
            truncated_bytes=truncated,
            extra=extra,
        )

    def _exec(self, request: CallRequest, args: ExecArgs, rec: RolloutRecord) -> tuple[str, str, str, Any, int | None]:
        cap = request.output_cap or self.settings.exec.output_cap_bytes
        payload = exec_request(
            list(args.argv) if args.argv is not None else None,
            args.command,
            cwd=args.cwd,
            env=args.env,
            timeout=args.timeout_s,
            output_cap=cap,
            merge_stderr=args.merge_stderr,
        )
        reply = self.backend.request(rec.container_name, payload, args.timeout_s)
        outcome, reason, note = exec_outcome(reply)
        if "error" in reply:  # never ran (the process table is full): the answer says why
            return outcome, reason, note, {}, None
        ran = {k: v for k, v in reply.items() if k != "duration_ms"}
        for stream in ("stdout", "stderr"):  # the guest caps; cap again so no path exceeds the budget
            ran[stream], cut = cap_text(str(reply.get(stream, "")), cap + CAP_SLACK_BYTES)
            ran[f"{stream}_truncated_bytes"] = int(reply.get(f"{stream}_truncated_bytes", 0)) + cut
        return outcome, reason, ran["stdout"], {"exec": ran}, reply.get("exit_code")

    def _upload(self, args: UploadArgs, rec: RolloutRecord) -> tuple[str, str, str, Any, int | None]:
        header = upload_request(args.path, args.kind, args.size, args.mode, args.timeout_s)
        if args.direct:
            slot = self._claim(args.transfer)
            try:
                reply = self.backend.upload(rec.container_name, header, body_chunks(slot, args.size), args.timeout_s)
            finally:
                slot.done.set()
        else:
            chunks = self.store.transfers.chunks(args.transfer)
            reply = self.backend.upload(rec.container_name, header, chunks, args.timeout_s)
        outcome, reason, message = transfer_outcome(reply)
        extra = {"path": reply.get("path"), "bytes": int(reply.get("bytes", 0)), "kind": args.kind}
        return outcome, reason, message, extra, None

    def _download(self, args: DownloadArgs, rec: RolloutRecord) -> tuple[str, str, str, Any, int | None]:
        header = download_request(args.path, args.max_bytes, args.timeout_s)
        if args.direct:  # each piece goes on to the API at once; the reply says whether it is whole
            slot = self._claim(args.transfer)
            sent = 0

            def write(data: bytes) -> None:
                nonlocal sent
                frames(data)
                sent += len(data)

            frames, end = frame_sink(slot)
            try:
                reply = self.backend.download(rec.container_name, header, write, args.timeout_s)
                end()
            finally:
                slot.done.set()
            outcome, reason, message = transfer_outcome(reply)
            return outcome, reason, message, {"bytes": sent, "kind": reply.get("kind", "file")}, None
        sink = ChunkBuffer(self.store.transfers, args.transfer, TRANSFER_TTL_S)
        try:
            reply = self.backend.download(rec.container_name, header, sink.write, args.timeout_s)
            outcome, reason, message = transfer_outcome(reply)
        except BaseException:
            with contextlib.suppress(InfraError):  # half a transfer is no answer (it expires anyway)
                self.store.transfers.delete(args.transfer)
            raise
        if outcome == Outcome.OK:
            sink.flush()
        else:  # what came before the failure is not the whole thing
            self.store.transfers.delete(args.transfer)
        extra = {"bytes": sink.total, "kind": reply.get("kind", "file"), "transfer": args.transfer}
        return outcome, reason, message, extra, None

    def _claim(self, transfer: str) -> Slot:
        """The API's connection for this transfer (it connected before queueing the call)."""
        slot = self.data_port.claim(transfer, CLAIM_WAIT_S) if self.data_port is not None else None
        if slot is None:
            raise InternalError(f"the API did not connect to this host's data port within {CLAIM_WAIT_S:g} s")
        return slot
