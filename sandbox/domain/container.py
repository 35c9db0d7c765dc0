"""A sandbox container as data: its labels, its name, and the one place its spec is built.

Rollout containers (provisioned for one rollout) and warm-pool containers (started ahead
of demand, claimed later) are the same container with a different role label, so both are
built here: two copies had drifted apart (ready timeouts of 30 and 60 s).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..config import Settings
from .environment import Environment

LABEL_ROLLOUT = "sandbox.rollout_id"
LABEL_ENVIRONMENT = "sandbox.environment"
LABEL_INSTANCE = "sandbox.instance"
LABEL_HOST = "sandbox.host"
LABEL_ROLE = "sandbox.role"
LABEL_USER = "sandbox.user"  # the docker exec fallback runs the guest for this user
LABEL_FORK_OF = "sandbox.fork_of"  # on a fork's image: the parent rollout it was committed from
LABEL_FORK_ID = "sandbox.fork_id"  # ... and the fork it was made for
ROLE_ROLLOUT = "rollout"
ROLE_POOL = "pool"
ROLE_FORK = "fork"  # the role label of a fork's committed image
FORK_IMAGE_REPOSITORY = "rollout-fork"
# How long a new container's guest may take to answer. A guest boots in about 0.1 s on a
# quiet host and takes seconds while a burst of hundreds boots beside it.
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class SandboxSpec:
    """Everything needed to create one sandbox container."""

    name: str
    image: str
    labels: dict[str, str]
    memory_bytes: int
    cpus: float
    pids: int
    workdir: str
    user: str
    runtime: str = "runc"  # the engine's OCI runtime: runc, or runsc (gVisor)


@dataclass(frozen=True)
class SandboxInfo:
    """A container as the engine reports it (for the reconciler, refills and the heartbeat)."""

    name: str
    container_id: str
    rollout_id: str
    running: bool
    created_at: float
    labels: dict[str, str] = field(default_factory=dict)
    image_id: str = ""


@dataclass(frozen=True)
class ImageInfo:
    """An image as the engine reports it (for removing a fork's image once unused)."""

    image_id: str
    tags: tuple[str, ...]
    created_at: float
    labels: dict[str, str] = field(default_factory=dict)


def fork_image_tag(instance: str, parent_id: str, fork_id: str) -> str:
    """One image per fork: the parent's filesystem at that instant."""
    digest = hashlib.sha256(f"{instance}:{parent_id}:{fork_id}".encode()).hexdigest()[:24]
    return f"{FORK_IMAGE_REPOSITORY}:{digest}"


def fork_image_labels(settings: Settings, parent_id: str, fork_id: str) -> dict[str, str]:
    return {
        **host_labels(settings),
        LABEL_ROLE: ROLE_FORK,
        LABEL_FORK_OF: parent_id,
        LABEL_FORK_ID: fork_id,
        **settings.extra_labels,
    }


def pool_container_prefix(instance: str) -> str:
    return f"sbx-{instance}-pool-"


def host_labels(settings: Settings) -> dict[str, str]:
    """The labels that select every container of this instance on this host."""
    return {LABEL_INSTANCE: settings.instance, LABEL_HOST: settings.host_id}


def container_spec(
    settings: Settings,
    env: Environment,
    image: str,
    name: str,
    *,
    role: str,
    rollout_id: str = "",
    workdir: str | None = None,
) -> SandboxSpec:
    """The container of a rollout (`rollout_id` given) or of a warm pool, with the environment's limits.

    `workdir`: where the image says work happens, when only the built image knows (a Harbor task's WORKDIR).
    """
    s = settings
    limits = env.spec.limits
    labels = {
        **host_labels(s),
        LABEL_ENVIRONMENT: env.name,
        LABEL_ROLE: role,
        LABEL_USER: s.sandbox_user,
        **s.extra_labels,
    }
    if rollout_id:
        labels[LABEL_ROLLOUT] = rollout_id
    return SandboxSpec(
        name=name,
        image=image,
        labels=labels,
        memory_bytes=limits.memory_bytes or s.limits.memory_bytes,
        cpus=limits.cpus or s.limits.cpus,
        pids=limits.pids or s.limits.pids,
        # An environment with its own workspace or image says where work happens.
        workdir=workdir or (env.spec.workdir if env.spec.workspace or env.spec.image else s.workdir),
        user=s.sandbox_user,
        runtime=env.spec.runtime,
    )
