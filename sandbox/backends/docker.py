"""Docker implementation of the backend: one container per rollout.

The only module that imports the Docker SDK. Requests go to the container's guest over
its unix socket (about 3 ms); `docker exec` is only the fallback when the guest is dead
but the container runs (the engine makes exec 20x slower).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import docker
import requests
from docker.errors import APIError, BuildError, DockerException, ImageNotFound, NotFound
from docker.types import Mount

from ..domain.container import LABEL_ROLLOUT, LABEL_USER, ImageInfo, SandboxInfo, SandboxSpec
from ..domain.errors import EngineUnavailable, InternalError, ProvisionFailed, SandboxLost
from ..guest import GUEST_BINARY_NAME
from ..guest.guest_protocol import PING, Request
from ..guest.guest_protocol_stream import DownloadRequest, UploadRequest
from . import guest_stream
from .guest_client import GuestProtocolError, GuestUnreachable, call_guest

GUEST_MOUNT = "/opt/sandbox-guest"
GUEST_BINARY = f"{GUEST_MOUNT}/{GUEST_BINARY_NAME}"
SOCKET_MOUNT = "/run/sandbox-guest"
SOCKET_NAME = "guest.sock"
# What the guest needs to run commands as the sandbox user and kill their process
# groups, and, for grading, to restore and write files whatever owner and mode the agent
# left on them (CHOWN, DAC_OVERRIDE, FOWNER); everything else is dropped. The sandbox
# user's processes hold none of them: a switch away from uid 0 clears them, and
# no-new-privileges keeps a setuid file from giving them back.
GUEST_CAPABILITIES = ["SETUID", "SETGID", "KILL", "CHOWN", "DAC_OVERRIDE", "FOWNER"]
# A paused container is alive: a fork pauses its parent while the layer is copied, and the
# reconciler must not take that moment for a stopped container (it would end the rollout lost).
ALIVE_STATES = ("running", "paused")
# Slack over a command's own deadline before the guest is deemed hung.
REPLY_SLACK_S = 15.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BUILDER_LINE = re.compile(r"^(Step \d+/\d+ : | ---> |Removing intermediate container )")


class DockerBackend:
    def __init__(
        self,
        docker_host: str,
        run_dir: Path,
        guest_dir: Path,
        *,
        api_timeout_s: float = 120.0,
        max_pool_size: int = 64,
        on_fallback: Any = None,
    ) -> None:
        self.client = docker.DockerClient(base_url=docker_host, timeout=int(api_timeout_s), max_pool_size=max_pool_size)
        self.run_dir = Path(run_dir)
        self.guest_dir = Path(guest_dir)
        binary = self.guest_dir / GUEST_BINARY_NAME
        if not os.access(binary, os.X_OK):  # a configuration problem: no container could ever start
            raise ValueError(
                f"no guest binary at {binary} (SANDBOX_GUEST_DIR): build it with sandbox/guest/native/build.sh"
            )
        self.on_fallback = on_fallback or (lambda: None)

    # --- lifecycle ---
    def socket_dir(self, name: str) -> Path:
        return self.run_dir / name

    def create(self, spec: SandboxSpec) -> str:
        sock_dir = self.socket_dir(spec.name)
        sock_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(sock_dir, 0o700)  # the sandbox user must not reach the guest's socket
        try:
            return self._run(spec, sock_dir)
        except APIError as exc:
            if exc.status_code != 409:
                raise ProvisionFailed(f"engine refused to create the container: {exc.explanation}") from exc
        # A container of that name exists: a retried task, or a stale provisioning claim.
        existing = self._get(spec.name)
        if existing is not None and existing.status == "running":
            return str(existing.id)
        self.destroy(spec.name)
        sock_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(sock_dir, 0o700)
        try:
            return self._run(spec, sock_dir)
        except APIError as exc:
            raise ProvisionFailed(f"engine refused to create the container: {exc.explanation}") from exc

    def _run(self, spec: SandboxSpec, sock_dir: Path) -> str:
        # The guest's supervise mode restarts the guest if something outside kills it (the
        # model cannot: it runs as another user); without it the container would stop with
        # its init's only child. Between death and restart, docker exec serves the calls.
        # Nothing of the image runs first: an image needs no shell, no Python, nothing.
        command = [
            GUEST_BINARY, "supervise",
            "--socket", f"{SOCKET_MOUNT}/{SOCKET_NAME}",
            "--user", spec.user, "--workdir", spec.workdir,
        ]  # fmt: skip
        try:
            with _engine_errors():
                # create + start, not containers.run: run pulls a missing image from a registry,
                # and nothing here may reach one (an image is on a host because it was built or loaded).
                container = self.client.containers.create(
                    spec.image,
                    command=command,
                    name=spec.name,
                    labels=spec.labels,
                    init=True,
                    user="0",
                    network_mode="none",
                    cap_drop=["ALL"],
                    cap_add=GUEST_CAPABILITIES,
                    security_opt=["no-new-privileges"],
                    runtime=None if spec.runtime == "runc" else spec.runtime,  # None: the engine's default
                    pids_limit=spec.pids,
                    mem_limit=spec.memory_bytes,
                    memswap_limit=spec.memory_bytes,
                    nano_cpus=int(spec.cpus * 1e9),
                    working_dir=spec.workdir,
                    hostname="sandbox",
                    mounts=[
                        Mount(target=GUEST_MOUNT, source=str(self.guest_dir), type="bind", read_only=True),
                        Mount(target=SOCKET_MOUNT, source=str(sock_dir), type="bind"),
                    ],
                )
                container.start()
        except ImageNotFound as exc:
            raise ProvisionFailed(f"image {spec.image!r} is not on this host (build it: images/build.sh)") from exc
        return str(container.id)

    def wait_ready(self, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        sock = self.socket_dir(name) / SOCKET_NAME
        next_state_check = time.monotonic() + 1.0
        nap = 0.01
        while True:
            try:
                if call_guest(sock, PING, timeout_s=2.0).get("ok"):
                    return
            except (GuestUnreachable, GuestProtocolError, OSError):
                pass
            now = time.monotonic()
            if now >= next_state_check:  # an engine round trip: not every nap
                next_state_check = now + 1.0
                container = self._get(name)
                if container is None or container.status not in ("created", "running"):
                    logs = _tail_logs(container)
                    raise ProvisionFailed(f"sandbox container exited during start-up: {logs}")
            if now >= deadline:
                raise ProvisionFailed(f"sandbox guest did not answer within {timeout_s:g} s")
            # A guest boots in about 0.1 s on a quiet host, seconds in a burst of 500: look
            # often at first, then back off so hundreds of waiting creations cost little CPU.
            time.sleep(nap)
            nap = min(nap * 1.5, 0.1)

    def destroy(self, name: str) -> bool:
        existed = False
        try:
            with _engine_errors():
                self.client.api.remove_container(name, force=True, v=True)
                existed = True
        except NotFound:
            pass
        except APIError as exc:
            if "removal of container" not in str(exc) or "already in progress" not in str(exc):
                raise EngineUnavailable(f"engine failed to remove {name}: {exc.explanation}") from exc
        shutil.rmtree(self.socket_dir(name), ignore_errors=True)
        return existed

    def list(self, labels: dict[str, str]) -> list[SandboxInfo]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        with _engine_errors():
            raw = self.client.api.containers(all=True, filters=filters)
        return [
            SandboxInfo(
                name=c["Names"][0].lstrip("/"),
                container_id=c["Id"],
                rollout_id=c.get("Labels", {}).get(LABEL_ROLLOUT, ""),
                running=c.get("State") in ALIVE_STATES,
                created_at=float(c.get("Created", 0)),
                labels=c.get("Labels", {}),
                image_id=c.get("ImageID", ""),
            )
            for c in raw
        ]

    def ping(self) -> None:
        with _engine_errors():
            self.client.ping()

    def runtimes(self) -> tuple[str, ...]:
        with _engine_errors():
            return tuple(sorted((self.client.info().get("Runtimes") or {}).keys()))

    def cpus(self) -> int:
        with _engine_errors():
            return int(self.client.info().get("NCPU") or 0)

    def container_events(self, labels: dict[str, str], since: float) -> Iterator[tuple[str, str]]:
        """(event, container id) for each container of `labels` created or destroyed from `since`
        (the engine replays what happened since then first), as the engine reports them. One
        long-lived request that stays silent while nothing changes; it ends when the engine goes."""
        filters = {
            "type": "container",
            "event": ["create", "destroy"],
            "label": [f"{k}={v}" for k, v in labels.items()],
        }
        with _engine_errors():
            stream = self.client.api.events(since=int(since), filters=filters, decode=True)
            for event in stream:
                if isinstance(event, dict) and event.get("id"):
                    yield str(event.get("Action") or event.get("status") or ""), str(event["id"])

    def image_names(self) -> tuple[str, ...]:
        with _engine_errors():
            listed = self.client.api.images()
        names = {str(image["Id"]) for image in listed}
        names.update(tag for image in listed for tag in image.get("RepoTags") or () if tag != "<none>:<none>")
        return tuple(sorted(names))

    def image_id(self, name: str) -> str | None:
        try:
            with _engine_errors():
                return str(self.client.api.inspect_image(name)["Id"])
        except (NotFound, ImageNotFound):
            return None

    def image_workdir(self, name: str) -> str | None:
        try:
            with _engine_errors():
                return str(self.client.api.inspect_image(name)["Config"].get("WorkingDir") or "") or None
        except (NotFound, ImageNotFound):
            return None

    def build_image(self, context_dir: str, tag: str, labels: dict[str, str]) -> None:
        try:
            with _engine_errors():
                # network none: an environment's build must not depend on (or reach) anything outside.
                self.client.images.build(
                    path=context_dir, tag=tag, labels=labels, rm=True, forcerm=True, network_mode="none", pull=False
                )
        except BuildError as exc:
            # The error alone says "returned a non-zero code: 1"; the step's own output says why.
            raise ProvisionFailed(f"building environment image {tag} failed: {exc}{_log_tail(exc.build_log)}") from exc
        except APIError as exc:
            raise ProvisionFailed(f"building environment image {tag} failed: {exc}") from exc

    # --- fork: a container's filesystem as an image ---
    def snapshot(self, name: str, tag: str, labels: dict[str, str]) -> str:
        repository, _, version = tag.partition(":")
        try:
            with _engine_errors():
                # pause: the guest and every command are frozen while the layer is copied, so a
                # call running meanwhile finishes after, never half inside the snapshot.
                result = self.client.api.commit(
                    name, repository=repository, tag=version, pause=True, conf={"Labels": labels}
                )
        except NotFound as exc:
            raise SandboxLost("the rollout's container no longer exists") from exc
        except APIError as exc:
            self._require_running(name)
            raise ProvisionFailed(f"engine refused to snapshot {name}: {exc.explanation}") from exc
        return str(result["Id"])

    def list_images(self, labels: dict[str, str]) -> Sequence[ImageInfo]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        with _engine_errors():
            raw = self.client.api.images(filters=filters)
        return [
            ImageInfo(
                image_id=i["Id"],
                tags=tuple(i.get("RepoTags") or ()),
                created_at=float(i.get("Created", 0)),
                labels=i.get("Labels") or {},
            )
            for i in raw
        ]

    def remove_image(self, ref: str) -> bool:
        try:
            with _engine_errors():
                self.client.api.remove_image(ref, force=False, noprune=False)
        except NotFound:
            return False
        except APIError as exc:
            if exc.status_code == 409:  # a container or a child image still uses it
                return False
            raise EngineUnavailable(f"engine failed to remove image {ref}: {exc.explanation}") from exc
        return True

    # --- requests to the guest ---
    def request(self, name: str, payload: Request, timeout_s: float) -> dict[str, Any]:
        sock = self.socket_dir(name) / SOCKET_NAME
        try:
            return call_guest(sock, payload, timeout_s + REPLY_SLACK_S)
        except GuestUnreachable:
            pass
        except TimeoutError as exc:
            self._require_running(name)
            raise InternalError(f"sandbox guest did not answer within {timeout_s + REPLY_SLACK_S:g} s") from exc
        except GuestProtocolError as exc:
            raise InternalError(str(exc)) from exc
        # The guest is unreachable. The model cannot kill it (it runs as another user), so
        # either the container is gone (the rollout is lost) or something outside killed
        # the guest: then the container still runs, and docker exec serves the call.
        container = self._require_running(name)
        self.on_fallback()
        return self._exec_once(container, payload)

    # --- byte streams to the guest (the trainer API's uploads and downloads; no exec fallback) ---
    def upload(self, name: str, header: UploadRequest, chunks: Iterable[bytes], timeout_s: float) -> dict[str, Any]:
        sock = self.socket_dir(name) / SOCKET_NAME
        send = lambda: guest_stream.upload(sock, header, chunks, timeout_s + REPLY_SLACK_S)  # noqa: E731
        return guest_stream.guarded(sock, send, lambda: self._require_running(name))

    def download(
        self, name: str, header: DownloadRequest, sink: Callable[[bytes], None], timeout_s: float
    ) -> dict[str, Any]:
        sock = self.socket_dir(name) / SOCKET_NAME
        send = lambda: guest_stream.download(sock, header, sink, timeout_s + REPLY_SLACK_S)  # noqa: E731
        return guest_stream.guarded(sock, send, lambda: self._require_running(name))

    def _require_running(self, name: str) -> Any:
        container = self._get(name)
        if container is None:
            raise SandboxLost("the rollout's container no longer exists")
        if container.status not in ALIVE_STATES:
            state = container.attrs.get("State", {})
            raise SandboxLost(
                f"the rollout's container is {container.status} "
                f"(exit code {state.get('ExitCode')}, OOM killed: {state.get('OOMKilled')})"
            )
        return container

    def _exec_once(self, container: Any, payload: Request) -> dict[str, Any]:
        encoded = base64.b64encode(json.dumps(payload).encode()).decode()
        user = container.labels.get(LABEL_USER, "sandbox")
        workdir = container.attrs["Config"].get("WorkingDir") or "/"
        cmd = [GUEST_BINARY, "once", encoded, "--user", user, "--workdir", workdir]
        try:
            with _engine_errors():
                result = container.exec_run(cmd, user="0", demux=False)
        except NotFound as exc:
            raise SandboxLost("the rollout's container no longer exists") from exc
        except APIError as exc:
            self._require_running(container.name)
            raise InternalError(f"docker exec failed: {exc.explanation}") from exc
        try:
            reply = json.loads(result.output.decode("utf-8", "replace").strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError) as exc:
            raise InternalError(f"docker exec of the guest gave no reply (exit {result.exit_code})") from exc
        if not isinstance(reply, dict):
            raise InternalError("docker exec of the guest gave a malformed reply")
        return reply

    def _get(self, name: str) -> Any:
        try:
            with _engine_errors():
                return self.client.containers.get(name)
        except NotFound:
            return None


class _engine_errors:
    """Map transport failures to EngineUnavailable; let API and build errors through to the caller."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        # A failed build step is the builder's verdict on the Dockerfile, not a sick engine.
        if exc is None or isinstance(exc, APIError | BuildError):
            return False
        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError):
            raise EngineUnavailable(f"Docker engine unavailable: {exc}") from exc
        if isinstance(exc, DockerException):
            raise EngineUnavailable(f"Docker engine error: {exc}") from exc
        return False


def _log_tail(build_log: Any, lines: int = 12) -> str:
    """The last lines the failed build's steps printed (the builder's own step lines left out)."""
    try:
        text = "".join(str(chunk.get("stream") or "") for chunk in build_log if isinstance(chunk, dict))
    except (TypeError, DockerException):
        return ""
    text = _ANSI.sub("", text)
    tail = [line for line in text.splitlines() if line.strip() and not _BUILDER_LINE.match(line)][-lines:]
    return "\n" + "\n".join(tail) if tail else ""


def _tail_logs(container: Any) -> str:
    if container is None:
        return "the container is gone"
    try:
        return container.logs(tail=20).decode("utf-8", "replace").strip() or f"status {container.status}"
    except DockerException:
        return f"status {container.status}"
