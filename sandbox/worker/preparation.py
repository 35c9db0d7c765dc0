"""Preparing an environment on a host: its derived image, built once per definition.

The image tag is derived from the definition's digest and the base image's id (a Harbor
task's: every image its Dockerfile builds FROM), so the same definition is never prepared
twice on a host, a changed one gets a new image, and a rebuilt base image is noticed. A
rollout's container then starts with the repository through copy-on-write instead of
copying files per rollout.
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
from . import harbor_image

log = logging.getLogger(__name__)
IMAGE_REPOSITORY = "rollout-env"
BASE_COPY = "/opt/sandbox-base/workdir"  # the guest's baseDir (guest/native/tests.go)


@dataclass(frozen=True)
class Prepared:
    """What a rollout's container starts from on this host."""

    image: str
    workdir: str | None = None  # None: the definition says (container_spec); a task's image says otherwise


@dataclass
class Preparer:
    registry: EnvironmentRegistry
    backend: Backend
    settings: Settings
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    _workdirs: dict[str, str] = field(default_factory=dict)  # task image tag -> its WORKDIR

    def image_for(self, env: Environment) -> str:
        return self.prepare(env).image

    def prepare(self, env: Environment) -> Prepared:
        """The image a rollout of `env` starts from on this host (and its workdir), preparing it if needed.

        Concurrent first uses prepare once: threads of this worker share a lock, and other
        processes on the same host wait on a Redis lock. Raises ProvisionFailed.
        """
        if not env.needs_preparation:
            return Prepared(env.spec.image or self.settings.image)
        tag = self._tag(env)
        if self.backend.image_id(tag) is None:
            with self._local_lock(tag):
                if self.backend.image_id(tag) is None:
                    self._prepare_once_on_host(env, tag)
        if env.spec.task is None:
            return Prepared(tag)
        if tag not in self._workdirs:  # the task image's WORKDIR, set by the build: read once per process
            self._workdirs[tag] = self.backend.image_workdir(tag) or env.spec.workdir
        return Prepared(tag, self._workdirs[tag])

    def _tag(self, env: Environment) -> str:
        if env.spec.task is not None:
            try:
                bases = harbor_image.base_ids(self.backend, env, self.settings.workspace_root_list)
            except SandboxError as exc:  # the task's configuration (or roots): shown in its preparation state too
                self._finished(env, "", time.time(), "failed", exc.message)
                raise ProvisionFailed(f"environment {env.name!r} could not be prepared: {exc.message}") from exc
        else:
            base = env.spec.image or self.settings.image
            base_id = self.backend.image_id(base)
            if base_id is None:
                raise ProvisionFailed(f"base image {base!r} of environment {env.name!r} is not on this host")
            bases = [base_id]
        key = ":".join([env.definition_digest, *bases])
        return f"{IMAGE_REPOSITORY}:{hashlib.sha256(key.encode()).hexdigest()[:24]}"

    def _local_lock(self, tag: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(tag, threading.Lock())

    def _prepare_once_on_host(self, env: Environment, tag: str) -> None:
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
                self._build(env, tag)
        finally:
            environments.unlock_preparation(s.host_id, tag, token)

    def _build(self, env: Environment, tag: str) -> None:
        s = self.settings
        started = time.time()
        self.registry.set_preparation(env.name, s.host_id, {"state": "preparing", "image": tag, "started_at": started})
        labels = {"sandbox.environment": env.name, "sandbox.definition_digest": env.definition_digest}
        try:
            if env.spec.task is not None:
                harbor_image.build(self.backend, env, tag, labels, s.sandbox_user, s.workspace_root_list)
            else:
                self._build_workspace_image(env, tag, labels)
        except (SandboxError, OSError) as exc:
            message = exc.message if isinstance(exc, SandboxError) else str(exc)
            self._finished(env, tag, started, "failed", message)
            raise ProvisionFailed(f"environment {env.name!r} could not be prepared: {message}") from exc
        self._finished(env, tag, started, "ready", "")

    def _build_workspace_image(self, env: Environment, tag: str, labels: dict[str, str]) -> None:
        s = self.settings
        ws = env.spec.workspace
        assert ws is not None and env.source_path is not None
        context = Path(tempfile.mkdtemp(prefix="sbx-env-"))
        try:
            source = workspaces.confine(env.source_path, s.workspace_root_list)  # re-checked where it is read
            workspaces.materialise(ws.type, source, context / "workspace", env.commit_sha)
            # The base state again, root's only (0700): what grading restores the agent's edits
            # of tests and test configuration from (the guest's run_tests). COPY copies a directory's
            # contents, so the 0700 directory travels inside opt/.
            base_copy = context / "opt" / BASE_COPY.strip("/").removeprefix("opt/")
            shutil.copytree(context / "workspace", base_copy, symlinks=True)
            (context / "opt" / "sandbox-base").chmod(0o700)
            (context / "Dockerfile").write_text(
                f"FROM {env.spec.image or s.image}\n"
                f"COPY --chown={s.sandbox_user}:{s.sandbox_user} workspace/ {env.spec.workdir}/\n"
                "COPY --chown=0:0 opt/ /opt/\n"
                f"WORKDIR {env.spec.workdir}\n"
            )
            self.backend.build_image(str(context), tag, labels)
        finally:
            shutil.rmtree(context, ignore_errors=True)

    def _finished(self, env: Environment, tag: str, started: float, state: str, error: str) -> None:
        duration = time.time() - started
        metrics.ENV_PREPARATIONS.labels(state).inc()
        metrics.ENV_PREPARATION_DURATION.observe(duration)
        record = {"state": state, "image": tag, "started_at": started, "duration_s": round(duration, 3)}
        if error:
            record["error"] = error[:2000]
        log.info("environment %s on %s: %s in %.1f s", env.name, self.settings.host_id, state, duration)
        self.registry.set_preparation(env.name, self.settings.host_id, record)
