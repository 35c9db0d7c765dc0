"""The environment registry, shared by the API (registers, describes) and the workers (prepare).

Registering an environment checks the workspace path against the allowed roots, resolves a
git commit to its sha, fingerprints the content and lists its files (the grader's existence
check). The fingerprint makes preparation content-addressed: the same definition maps to the
same derived image on every host. Definitions live in the store, so every API replica and
worker sees the same ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from . import harbor, workspaces
from .config import Settings
from .domain.environment import DEFAULT, DEFAULT_RUNTIME, Environment, EnvironmentSpec, check_name, digest_of
from .domain.errors import (
    ImageUnavailable,
    LimitsUnsatisfiable,
    SandboxError,
    UnknownEnvironment,
    UnsupportedRuntime,
    WorkspaceInvalid,
)
from .domain.hosts import views
from .domain.images import canonical
from .store import Store


class EnvironmentRegistry:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def register(self, name: str, spec: EnvironmentSpec) -> Environment:
        """Check and store a definition. Raises WorkspaceForbidden (403), WorkspaceInvalid (400)."""
        check_name(name)
        commit = source_path = source_digest = instruction = None
        files: list[str] = []
        if spec.task is not None:  # a Harbor task: its image is built per host, its tests/ stays hidden
            task = harbor.read_task(spec.task.path, self.settings.workspace_root_list)
            source_path, source_digest, instruction = str(task.path), task.context_digest, task.instruction
            spec = spec.model_copy(update={"tests": task.tests_defaults(spec.tests)})
        if spec.workspace is not None:
            ws = spec.workspace
            resolved = workspaces.confine(ws.path, self.settings.workspace_root_list)
            if not resolved.exists():
                raise WorkspaceInvalid(f"{ws.path} does not exist")
            if ws.type == "git":
                commit = workspaces.resolve_commit(resolved, ws.commit or "")
            elif ws.type == "dir" and not resolved.is_dir():
                raise WorkspaceInvalid(f"{ws.path} is not a directory")
            elif ws.type == "tar" and not resolved.is_file():
                raise WorkspaceInvalid(f"{ws.path} is not a file")
            source_path = str(resolved)
            source_digest = workspaces.fingerprint(ws.type, resolved, commit)
            files = workspaces.list_files(ws.type, resolved, commit)
        self._check_runtime(spec)
        self._check_image(spec)
        self._check_cpus(spec)
        if spec.tests is not None and spec.tests.dir is not None:  # read at grade time: checked now
            hidden = workspaces.confine(spec.tests.dir, self.settings.workspace_root_list)
            if not hidden.is_dir():
                raise WorkspaceInvalid(f"tests.dir {spec.tests.dir} is not a directory")
        env = Environment(
            name=name,
            spec=spec,
            commit_sha=commit,
            source_path=source_path,
            source_digest=source_digest,
            definition_digest=digest_of(spec, source_path, commit, source_digest),
            file_count=len(files),
            registered_at=time.time(),
            instruction=instruction,
        )
        self.store.environments.save(env, files)
        return env

    def _check_runtime(self, spec: EnvironmentSpec) -> None:
        """Refuse, now, an environment whose runtime no registered host offers: its rollouts could
        only ever fail to provision (retryable 503s forever). runc is every engine's default."""
        if spec.runtime == DEFAULT_RUNTIME:
            return
        offering = [v.host_id for v in views(self.store.hosts.registrations()).values() if spec.runtime in v.runtimes]
        if not offering:
            raise UnsupportedRuntime(
                f"runtime {spec.runtime!r}: no sandbox host offers it (set up gVisor on the hosts: "
                "deploy/install.sh installs Debian's runsc and deploy/deps.sh registers it with the engine)"
            )

    def _check_image(self, spec: EnvironmentSpec) -> None:
        """Refuse, now, an image no sandbox host holds: nothing is ever pulled, so its rollouts
        could only fail to provision. Hosts that have not listed their images (none registered
        yet, an engine down) cannot tell: with none that can, the image is taken on trust."""
        if spec.image is None:
            return  # the service's own sandbox image, on every host by construction
        listed = [v.images for v in views(self.store.hosts.registrations()).values() if v.images is not None]
        if not listed or any(canonical(spec.image) in images for images in listed):
            return
        raise ImageUnavailable(
            f"image {spec.image!r} is on no sandbox host ({len(listed)} checked), and images are never pulled: "
            "build or `docker load` it on the hosts, then register again (hosts list their images every 10 s)"
        )

    def _check_cpus(self, spec: EnvironmentSpec) -> None:
        """Refuse, now, more CPUs than any host's machine has: the engine refuses such a container
        ("Range of CPUs is from 0.01 to N"), so every rollout would fail to provision."""
        wanted = spec.limits.cpus
        if not wanted:
            return
        machines = [v.cpus for v in views(self.store.hosts.registrations()).values() if v.cpus]
        if machines and wanted > max(machines):
            raise LimitsUnsatisfiable(
                f"limits.cpus {wanted:g}: no sandbox host has that many CPUs (the largest has {max(machines)}); "
                "ask for at most that many"
            )

    def get(self, name: str) -> Environment:
        """The named environment; `default` exists even when nobody registered it. Raises UnknownEnvironment."""
        env = self.store.environments.load(name)
        if env is not None:
            return env
        if name == DEFAULT:
            return Environment(name=DEFAULT, spec=EnvironmentSpec(), definition_digest="default")
        raise UnknownEnvironment(f"no environment named {name!r}; register it with PUT /v1/environments/{name}")

    def of_rollout(self, name: str) -> Environment:
        """The environment a rollout started with: its definition even if deleted since (kept for
        the retention period), so running rollouts are not broken by a delete. Raises UnknownEnvironment."""
        try:
            return self.get(name)
        except UnknownEnvironment:
            retired = self.store.environments.load_retired(name)
            if retired is None:
                raise
            return retired

    def delete(self, name: str) -> Environment:
        """Remove a registered definition so no new rollout can pick it; answer what was removed.

        Raises UnknownEnvironment (404) when nothing of that name is registered, so a second delete
        is a 404; deleting a registered `default` brings back the built-in default. Also dropped:
        its file list (unless another environment shares the same content) and its warm pools, whose
        containers the reconciler then removes as orphans. Kept: each host's prepared image (labelled
        `sandbox.definition_digest`), for an operator or a later cleanup to remove, and, for the
        retention period, the definition and file list for the rollouts already using it
        (`of_rollout`): they go on calling, forking and grading as before.
        """
        env = self.store.environments.delete(name)
        if env is None:
            if name == DEFAULT:
                raise UnknownEnvironment("nothing to delete: 'default' is the built-in default already")
            raise UnknownEnvironment(f"nothing to delete: no environment named {name!r} is registered")
        for host in self.store.hosts.registrations():
            self.store.pools.drop_host(host, [name])  # never hand out a warm container of a deleted definition
        return env

    def names(self) -> list[str]:
        return sorted(self.store.environments.names() | {DEFAULT})

    def pool_targets(self) -> dict[str, int]:
        """Warm pool size per environment (per host). `default` follows SANDBOX_WARM_POOL_SIZE unless registered."""
        targets = {DEFAULT: self.settings.warm_pool_size}
        for name in self.names():
            env = self.get(name)
            if name != DEFAULT or env.registered_at:
                targets[name] = env.spec.warm_pool_size
        return targets  # zero targets included: a pool that shrank to nothing must be trimmed

    def files(self, env: Environment) -> set[str] | None:
        """The workspace's files at the base, or None when the environment has no workspace."""
        if env.spec.workspace is None:
            return None
        return self.store.environments.files(env.definition_digest)

    def set_preparation(self, name: str, host: str, state: dict[str, Any]) -> None:
        self.store.environments.set_preparation(name, host, state)

    def describe(self, env: Environment) -> dict[str, Any]:
        """The definition as GET /v1/environments/{name} shows it, with per-host state."""
        return {
            "name": env.name,
            **env.spec.model_dump(),
            "commit_sha": env.commit_sha,
            "definition_digest": env.definition_digest,
            "file_count": env.file_count,
            "registered_at": env.registered_at or None,
            "preparation": self.store.environments.preparation(env.name),
            "pool": self.pool_view(env),
            "instruction": env.instruction if env.spec.task is not None else None,
        }

    def pool_view(self, env: Environment) -> dict[str, dict[str, int]]:
        target = env.spec.warm_pool_size if env.registered_at or env.name != DEFAULT else self.settings.warm_pool_size
        sizes = self.store.pools.sizes(self.store.hosts.registrations(), {env.name: target})
        return {host: {"available": n, "target": t} for (_, host), (n, t) in sizes.items()}


def load_file(registry: EnvironmentRegistry, path: Path) -> list[str]:
    """Register every environment of a YAML file `{environments: {name: spec}}`; return the names.

    A broken file stops start-up with a message naming the environment, rather than
    serving with half the definitions.
    """
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read environments file {path}: {exc}") from exc
    envs = data.get("environments", {}) if isinstance(data, dict) else None
    if not isinstance(envs, dict):
        raise ValueError(f"{path}: expected a mapping 'environments: {{name: definition}}'")
    for name, raw in envs.items():
        try:
            registry.register(str(name), EnvironmentSpec.model_validate(raw or {}))
        except (ValidationError, SandboxError) as exc:
            raise ValueError(f"{path}: environment {name!r}: {exc}") from exc
    return list(envs)
