"""An in-memory sandbox backend with the Docker backend's contract (sandbox/backends/base.py).

Containers are records in a dict; each has a small in-memory filesystem, and its "guest"
understands a handful of shell commands (echo with > or >>, cat, sleep, exit, true, false,
pwd) and read_file with the real guest's statuses. tests/contract/ runs the same tests
against this and the Docker backend, so the fake cannot drift from the engine.

Faults are injected the way they happen for real: the engine stops answering
(`engine_down`), a container stops or vanishes behind the service's back (`stop`,
`vanish`), a creation or a snapshot is refused (`refuse_next_create`,
`refuse_next_snapshot`), the guest answers a scripted reply (`scripted_shell`).
"""

from __future__ import annotations

import posixpath
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.domain.container import LABEL_ROLLOUT, ImageInfo, SandboxInfo, SandboxSpec
from sandbox.domain.errors import EngineUnavailable, InfraError, ProvisionFailed, SandboxLost
from sandbox.guest.guest_protocol import Request

BINARY_PROBE = 8192


@dataclass
class FakeContainer:
    spec: SandboxSpec
    container_id: str
    created_at: float
    running: bool = True
    files: dict[str, bytes] = field(default_factory=dict)
    requests: int = 0
    image_id: str = ""


@dataclass
class FakeImage:
    image_id: str
    tag: str
    created_at: float
    labels: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # what containers of it start with
    workdir: str = ""  # its WORKDIR ("" = none set)


class InMemoryBackend:
    def __init__(
        self, images: Iterable[str] = ("rollout-sandbox:bookworm",), runtimes: Iterable[str] = ("runc",)
    ) -> None:
        self.offered_runtimes = tuple(runtimes)
        self.machine_cpus = 2  # what the engine says its machine has (cpus())
        self.containers: dict[str, FakeContainer] = {}
        self.images: dict[str, FakeImage] = {}
        for name in images:
            self._add_image(name, {})
        self.builds: list[str] = []
        self.created: list[str] = []  # names, in order of creation (adoptions not counted)
        self.destroyed: list[str] = []
        self.engine_down = False
        self.scripted_shell: Callable[[str, str], dict[str, Any] | None] | None = None
        self._refusals: list[InfraError] = []
        self._snapshot_refusals: list[InfraError] = []
        self.removed_images: list[str] = []
        self._lock = threading.Lock()

    # --- fault injection ---
    def refuse_next_create(self, error: InfraError) -> None:
        self._refusals.append(error)

    def refuse_next_snapshot(self, error: InfraError) -> None:
        self._snapshot_refusals.append(error)

    def load_image(self, tag: str) -> None:
        """An operator builds or `docker load`s an image on this host."""
        self._add_image(tag, {})

    def stop(self, name: str) -> None:
        """The container stops (its init died, the engine's OOM killer): it still exists, not running."""
        self.containers[name].running = False

    def vanish(self, name: str) -> None:
        """Someone removed the container behind the service's back."""
        self.containers.pop(name, None)

    def add_container(self, spec: SandboxSpec, created_at: float | None = None) -> str:
        """A container the engine has without the service having asked (e.g. an orphan)."""
        box = FakeContainer(spec, uuid.uuid4().hex, time.time() if created_at is None else created_at)
        box.image_id = self.images[spec.image].image_id if spec.image in self.images else ""
        self.containers[spec.name] = box
        return box.container_id

    def _add_image(
        self, tag: str, labels: dict[str, str], files: dict[str, bytes] | None = None, created_at: float | None = None
    ) -> FakeImage:
        image = FakeImage(f"sha256:{uuid.uuid4().hex * 2}", tag, time.time() if created_at is None else created_at)
        image.labels, image.files = dict(labels), dict(files or {})
        self.images[tag] = image
        return image

    # --- the Backend protocol ---
    def create(self, spec: SandboxSpec) -> str:
        self._engine()
        with self._lock:
            if self._refusals:
                raise self._refusals.pop(0)
            if spec.image not in self.images:
                raise ProvisionFailed(f"image {spec.image!r} is not on this host (build it: images/build.sh)")
            if spec.runtime not in self.offered_runtimes:
                raise ProvisionFailed(f"engine refused to create the container: unknown runtime {spec.runtime!r}")
            existing = self.containers.get(spec.name)
            if existing is not None and existing.running:
                return existing.container_id  # adopted: a retried provisioning task
            image = self.images[spec.image]
            box = FakeContainer(spec, uuid.uuid4().hex, time.time(), files=dict(image.files), image_id=image.image_id)
            self.containers[spec.name] = box
            self.created.append(spec.name)
            return box.container_id

    def wait_ready(self, name: str, timeout_s: float) -> None:
        self._engine()
        box = self.containers.get(name)
        if box is None or not box.running:
            raise ProvisionFailed("sandbox container exited during start-up: the container is gone")

    def request(self, name: str, payload: Request, timeout_s: float) -> dict[str, Any]:
        self._engine()
        box = self.containers.get(name)
        if box is None:
            raise SandboxLost("the rollout's container no longer exists")
        if not box.running:
            raise SandboxLost("the rollout's container is exited (exit code 137, OOM killed: False)")
        box.requests += 1
        op = payload.get("op")
        if op == "ping":
            return {"ok": True, "version": 1, "pid": 1}
        if op == "shell":
            fields: dict[str, Any] = dict(payload)
            return self._shell(box, str(fields["command"]), float(fields.get("timeout") or 60.0))
        if op == "read_file":
            return self._read_file(box, dict(payload))
        return {"error": f"unknown op: {op}"}

    def destroy(self, name: str) -> bool:
        self._engine()
        with self._lock:
            existed = self.containers.pop(name, None) is not None
        if existed:
            self.destroyed.append(name)
        return existed

    def list(self, labels: dict[str, str]) -> list[SandboxInfo]:
        self._engine()
        return [
            SandboxInfo(
                name=name,
                container_id=box.container_id,
                rollout_id=box.spec.labels.get(LABEL_ROLLOUT, ""),
                running=box.running,
                created_at=box.created_at,
                labels=dict(box.spec.labels),
                image_id=box.image_id,
            )
            for name, box in list(self.containers.items())
            if all(box.spec.labels.get(k) == v for k, v in labels.items())
        ]

    def ping(self) -> None:
        self._engine()

    def runtimes(self) -> tuple[str, ...]:
        self._engine()
        return tuple(self.offered_runtimes)

    def cpus(self) -> int:
        self._engine()
        return self.machine_cpus

    def image_names(self) -> tuple[str, ...]:
        self._engine()
        return tuple(sorted({*self.images, *(image.image_id for image in self.images.values())}))

    def image_id(self, name: str) -> str | None:
        self._engine()
        image = self.images.get(name)
        return image.image_id if image is not None else None

    def image_workdir(self, name: str) -> str | None:
        self._engine()
        image = self.images.get(name)
        return (image.workdir or None) if image is not None else None

    def build_image(self, context_dir: str, tag: str, labels: dict[str, str]) -> None:
        """Reads the Dockerfile's FROM and WORKDIR lines (and `RUN exit N` fails): enough for the preparation."""
        self._engine()
        dockerfile = Path(context_dir, "Dockerfile")
        lines = [line.split(None, 1) for line in dockerfile.read_text().splitlines() if line.strip()]
        args = [(words[0].upper(), words[1].strip()) for words in lines if len(words) == 2]
        froms = [arg.split()[0] for word, arg in args if word == "FROM"]
        if froms and froms[-1] not in self.images:  # the real builder would try to pull it
            raise ProvisionFailed(f"building environment image {tag} failed: pull access denied for {froms[-1]}")
        if any(word == "RUN" and arg.startswith("exit ") for word, arg in args):  # a step that fails
            raise ProvisionFailed(f"building environment image {tag} failed: returned a non-zero code")
        workdirs = [arg for word, arg in args if word == "WORKDIR"]
        inherited = self.images[froms[-1]].workdir if froms else ""
        self._add_image(tag, {**(self.images[froms[-1]].labels if froms else {}), **labels}).workdir = (
            workdirs[-1] if workdirs else inherited
        )
        self.builds.append(tag)

    def snapshot(self, name: str, tag: str, labels: dict[str, str]) -> str:
        self._engine()
        with self._lock:
            if self._snapshot_refusals:
                raise self._snapshot_refusals.pop(0)
            box = self.containers.get(name)
            if box is None:
                raise SandboxLost("the rollout's container no longer exists")
            image = self._add_image(tag, {**box.spec.labels, **labels}, box.files)
            image.workdir = box.spec.workdir  # a commit keeps the container's working directory
            return image.image_id

    def list_images(self, labels: dict[str, str]) -> Sequence[ImageInfo]:
        self._engine()
        return [
            ImageInfo(image.image_id, (tag,), image.created_at, dict(image.labels))
            for tag, image in list(self.images.items())
            if all(image.labels.get(k) == v for k, v in labels.items())
        ]

    def remove_image(self, ref: str) -> bool:
        self._engine()
        with self._lock:
            image = self.images.get(ref) or next((i for i in self.images.values() if i.image_id == ref), None)
            if image is None or any(box.image_id == image.image_id for box in self.containers.values()):
                return False
            del self.images[image.tag]
            self.removed_images.append(image.tag)
            return True

    # --- the guest, in memory ---
    def _engine(self) -> None:
        if self.engine_down:
            raise EngineUnavailable("Docker engine unavailable: connection refused")

    def _path(self, box: FakeContainer, path: str) -> str:
        return posixpath.normpath(posixpath.join(box.spec.workdir, path))

    def _shell(self, box: FakeContainer, command: str, timeout_s: float) -> dict[str, Any]:
        if self.scripted_shell is not None:
            scripted = self.scripted_shell(box.spec.name, command)
            if scripted is not None:
                return scripted
        started = time.monotonic()
        try:
            words = shlex.split(command)
        except ValueError as exc:
            return _shell_reply(2, f"bash: {exc}\n", started)
        if not words:
            return _shell_reply(0, "", started)
        program, args = words[0], words[1:]
        if program == "echo":
            return self._echo(box, args, started)
        if program == "cat":
            out = b""
            for arg in args:
                data = box.files.get(self._path(box, arg))
                if data is None:
                    return _shell_reply(1, out.decode() + f"cat: {arg}: No such file or directory\n", started)
                out += data
            return _shell_reply(0, out.decode("utf-8", "replace"), started)
        if program == "sleep":
            seconds = float(args[0]) if args else 0.0
            time.sleep(min(seconds, timeout_s))
            if seconds > timeout_s:
                return {**_shell_reply(None, "", started), "timed_out": True, "signal": 9}
            return _shell_reply(0, "", started)
        if program == "exit":
            return _shell_reply(int(args[0]) if args else 0, "", started)
        if program in ("true", "false"):
            return _shell_reply(0 if program == "true" else 1, "", started)
        if program == "pwd":
            return _shell_reply(0, box.spec.workdir + "\n", started)
        return _shell_reply(127, f"bash: line 1: {program}: command not found\n", started)

    def _echo(self, box: FakeContainer, args: Sequence[str], started: float) -> dict[str, Any]:
        for redirect in (">>", ">"):
            if redirect in args:
                i = args.index(redirect)
                text = (" ".join(args[:i]) + "\n").encode()
                path = self._path(box, args[i + 1])
                box.files[path] = (box.files.get(path, b"") if redirect == ">>" else b"") + text
                return _shell_reply(0, "", started)
        return _shell_reply(0, " ".join(args) + "\n", started)

    def _read_file(self, box: FakeContainer, req: dict[str, Any]) -> dict[str, Any]:
        shown = str(req.get("path"))
        path = self._path(box, shown)
        data = box.files.get(path)
        if data is None:
            if any(p.startswith(path.rstrip("/") + "/") for p in box.files):
                return _file_reply("is_a_directory", f"{shown} is a directory")
            return _file_reply("not_found", f"no such file: {shown}")
        if b"\0" in data[:BINARY_PROBE]:
            return _file_reply("binary", f"binary file (NUL byte in the first 8 KiB): {shown}")
        lines = data.decode("utf-8", "replace").splitlines(keepends=True)
        first = req.get("start_line") or 1
        last = req.get("end_line") or len(lines)
        if lines and first > len(lines):
            return _file_reply("invalid_range", f"invalid line range: {shown} has {len(lines)} lines")
        content = "".join(lines[first - 1 : last])
        return {**_file_reply("ok", ""), "content": content, "total_lines": len(lines), "output_bytes": len(content)}


def _shell_reply(exit_code: int | None, output: str, started: float) -> dict[str, Any]:
    return {
        "exit_code": exit_code,
        "signal": None,
        "timed_out": False,
        "oom_killed": False,
        "output": output,
        "output_bytes": len(output.encode()),
        "truncated_bytes": 0,
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
    }


def _file_reply(status: str, message: str) -> dict[str, Any]:
    return {
        "status": status,
        "content": "",
        "total_lines": 0,
        "output_bytes": 0,
        "truncated_bytes": 0,
        "message": message,
    }
