"""Preparing an environment on a host: its derived image, built once per definition.

The image tag is derived from the definition's digest and the base image's id, so the
same definition is never prepared twice on a host, a changed one gets a new image, and a
rebuilt base image is noticed. A rollout's container then starts with the repository
through copy-on-write instead of copying files per rollout.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .. import metrics, workspaces
from ..backends.base import Backend
from ..config import Settings
from ..domain.environment import Environment
from ..domain.errors import ProvisionFailed, SandboxError
from ..environments import EnvironmentRegistry

log = logging.getLogger(__name__)
IMAGE_REPOSITORY = "rollout-env"
BASE_COPY = "/opt/sandbox-base/workdir"  # the guest's guest_tests.BASE_DIR


@dataclass
class Preparer:
    registry: EnvironmentRegistry
    backend: Backend
    settings: Settings
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)

    def image_for(self, env: Environment) -> str:
        """The image a rollout of `env` starts from on this host, preparing it if needed.

        Concurrent first uses prepare once: threads of this worker share a lock, and other
        processes on the same host wait on a Redis lock. Raises ProvisionFailed.
        """
        base = env.spec.image or self.settings.image
        if not env.needs_preparation:
            return base
        base_id = self.backend.image_id(base)
        if base_id is None:
            raise ProvisionFailed(f"base image {base!r} of environment {env.name!r} is not on this host")
        tag = f"{IMAGE_REPOSITORY}:{hashlib.sha256(f'{env.definition_digest}:{base_id}'.encode()).hexdigest()[:24]}"
        if self.backend.image_id(tag) is not None:
            return tag
        with self._local_lock(tag):
            if self.backend.image_id(tag) is not None:
                return tag
            self._prepare_once_on_host(env, base, tag)
        return tag

    def _local_lock(self, tag: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(tag, threading.Lock())

    def _prepare_once_on_host(self, env: Environment, base: str, tag: str) -> None:
        s = self.settings
        environments = self.registry.store.environments
        token = uuid.uuid4().hex
        deadline = time.monotonic() + s.prepare_timeout_s
        while True:
            if environments.lock_preparation(s.host_id, tag, token, int(s.prepare_timeout_s)):
                break
            if self.backend.image_id(tag) is not None:  # another process finished it
                return
            if time.monotonic() > deadline:
                raise ProvisionFailed(f"environment {env.name!r} is still being prepared by another process")
            time.sleep(0.5)
        try:
            if self.backend.image_id(tag) is None:
                self._build(env, base, tag)
        finally:
            environments.unlock_preparation(s.host_id, tag, token)

    def _build(self, env: Environment, base: str, tag: str) -> None:
        s = self.settings
        started = time.time()
        self.registry.set_preparation(env.name, s.host_id, {"state": "preparing", "image": tag, "started_at": started})
        ws = env.spec.workspace
        assert ws is not None and env.source_path is not None
        context = Path(tempfile.mkdtemp(prefix="sbx-env-"))
        try:
            source = workspaces.confine(env.source_path, s.workspace_root_list)  # re-checked where it is read
            workspaces.materialise(ws.type, source, context / "workspace", env.commit_sha)
            # The base state again, root's only (0700): what grading restores the agent's edits
            # of tests and test configuration from (guest_tests.py). COPY copies a directory's
            # contents, so the 0700 directory travels inside opt/.
            base_copy = context / "opt" / BASE_COPY.strip("/").removeprefix("opt/")
            shutil.copytree(context / "workspace", base_copy, symlinks=True)
            (context / "opt" / "sandbox-base").chmod(0o700)
            (context / "Dockerfile").write_text(
                f"FROM {base}\n"
                f"COPY --chown={s.sandbox_user}:{s.sandbox_user} workspace/ {env.spec.workdir}/\n"
                "COPY --chown=0:0 opt/ /opt/\n"
                f"WORKDIR {env.spec.workdir}\n"
            )
            labels = {"sandbox.environment": env.name, "sandbox.definition_digest": env.definition_digest}
            self.backend.build_image(str(context), tag, labels)
        except (SandboxError, OSError) as exc:
            message = exc.message if isinstance(exc, SandboxError) else str(exc)
            self._finished(env, tag, started, "failed", message)
            raise ProvisionFailed(f"environment {env.name!r} could not be prepared: {message}") from exc
        finally:
            shutil.rmtree(context, ignore_errors=True)
        self._finished(env, tag, started, "ready", "")

    def _finished(self, env: Environment, tag: str, started: float, state: str, error: str) -> None:
        duration = time.time() - started
        metrics.ENV_PREPARATIONS.labels(state).inc()
        metrics.ENV_PREPARATION_DURATION.observe(duration)
        record = {"state": state, "image": tag, "started_at": started, "duration_s": round(duration, 3)}
        if error:
            record["error"] = error[:2000]
        log.info("environment %s on %s: %s in %.1f s", env.name, self.settings.host_id, state, duration)
        self.registry.set_preparation(env.name, self.settings.host_id, record)
