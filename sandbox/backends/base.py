"""The backend protocol: what the service needs from a container engine.

The service speaks only this protocol; `docker.py` is the one implementation and the
only module that imports the Docker SDK. tests/fakes/backend.py is an in-memory one for
unit tests, held to the same contract tests (tests/contract/) as the Docker backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from ..domain.container import ImageInfo, SandboxInfo, SandboxSpec
from ..guest.guest_protocol import Request
from ..guest.guest_protocol_stream import DownloadRequest, UploadRequest


class Backend(Protocol):
    def create(self, spec: SandboxSpec) -> str:
        """Create and start the container, or adopt a running one of that name; return its id.

        Idempotent, because a provisioning task may run twice. Raises ProvisionFailed,
        EngineUnavailable.
        """
        ...

    def wait_ready(self, name: str, timeout_s: float) -> None:
        """Block until the container's guest answers. Raises ProvisionFailed."""
        ...

    def request(self, name: str, payload: Request, timeout_s: float) -> dict[str, Any]:
        """Send one request to the container's guest and return its reply (sandbox/guest/guest_protocol.py).

        Raises SandboxLost when the container is gone, EngineUnavailable when the engine
        does not answer.
        """
        ...

    def upload(self, name: str, header: UploadRequest, chunks: Iterable[bytes], timeout_s: float) -> dict[str, Any]:
        """Send the upload request and its bytes to the container's guest; its reply
        (sandbox/guest/guest_protocol_stream.py). Raises SandboxLost, EngineUnavailable, InternalError.
        """
        ...

    def download(
        self, name: str, header: DownloadRequest, sink: Callable[[bytes], None], timeout_s: float
    ) -> dict[str, Any]:
        """Send the download request; hand the bytes to `sink` as they come; return the reply
        (its status says whether they are the whole thing). Raises as `upload`."""
        ...

    def destroy(self, name: str) -> bool:
        """Remove the container; True if it existed. Idempotent."""
        ...

    def list(self, labels: dict[str, str]) -> list[SandboxInfo]:
        """Containers carrying all the given labels."""
        ...

    def ping(self) -> None:
        """Raises EngineUnavailable when the engine does not answer."""
        ...

    def runtimes(self) -> tuple[str, ...]:
        """The OCI runtimes this engine can run containers with (runc, and runsc when gVisor is set up)."""
        ...

    def cpus(self) -> int:
        """The CPUs the engine's machine has: no container may be given more."""
        ...

    def image_names(self) -> tuple[str, ...]:
        """Every local image's tags (`repo:tag`) and ids: what an environment may name on this host."""
        ...

    def image_id(self, name: str) -> str | None:
        """The id of a local image, or None if it is not on this host."""
        ...

    def image_workdir(self, name: str) -> str | None:
        """A local image's working directory (its WORKDIR), or None if it sets none or is not on this host."""
        ...

    def build_image(self, context_dir: str, tag: str, labels: dict[str, str]) -> None:
        """Build `context_dir`'s Dockerfile as `tag`, without network and without pulling: every
        image it names must be on this host. Raises ProvisionFailed with the builder's message."""
        ...

    def snapshot(self, name: str, tag: str, labels: dict[str, str]) -> str:
        """Commit the container's filesystem as image `tag` (copy-on-write: only its changes are
        copied), pausing it meanwhile so no half-written state is captured; return the image id.

        Raises SandboxLost when the container is gone, EngineUnavailable when the engine does
        not answer, ProvisionFailed when the engine refuses.
        """
        ...

    def list_images(self, labels: dict[str, str]) -> Sequence[ImageInfo]:
        """Images carrying all the given labels."""
        ...

    def remove_image(self, ref: str) -> bool:
        """Remove an image; False when it is gone already or a container (or a child image) still uses it."""
        ...
