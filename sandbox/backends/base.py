"""The backend protocol: what the service needs from a container engine.

The service speaks only this protocol; `docker.py` is the one implementation and the
only module that imports the Docker SDK.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

LABEL_ROLLOUT = "sandbox.rollout_id"
LABEL_ENVIRONMENT = "sandbox.environment"
LABEL_INSTANCE = "sandbox.instance"
LABEL_HOST = "sandbox.host"
LABEL_ROLE = "sandbox.role"


@dataclass(frozen=True)
class SandboxSpec:
    """Everything needed to create one rollout's container."""

    name: str
    image: str
    labels: dict[str, str]
    memory_bytes: int
    cpus: float
    pids: int
    workdir: str
    user: str


@dataclass(frozen=True)
class SandboxInfo:
    """A container as the engine reports it (for the reconciler)."""

    name: str
    container_id: str
    rollout_id: str
    running: bool
    created_at: float
    labels: dict[str, str] = field(default_factory=dict)


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

    def request(self, name: str, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request to the container's guest and return its reply.

        Raises SandboxLost when the container is gone, EngineUnavailable when the engine
        does not answer.
        """
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

    def image_id(self, name: str) -> str | None:
        """The id of a local image, or None if it is not on this host."""
        ...

    def build_image(self, context_dir: str, tag: str, labels: dict[str, str]) -> None:
        """Build `context_dir`'s Dockerfile as `tag`, without network. Raises ProvisionFailed."""
        ...
