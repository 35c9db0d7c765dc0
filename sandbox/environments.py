"""Environments: base image + workspace + limits + tool budget, stored in Redis so every
API replica and worker sees the same definitions.

A rollout picks its environment with `item["environment"]` on its first call (default:
`default`, the plain sandbox image). Registering an environment checks the workspace path
against the allowed roots, resolves a git commit to its sha, fingerprints the content and
lists its files (the grader's existence check). The fingerprint makes preparation
content-addressed: the same definition maps to the same derived image on every host.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import workspaces
from .config import Settings
from .errors import BadRequest, SandboxError
from .store import Store, translate_errors

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT = "default"


class UnknownEnvironment(SandboxError):
    code = "unknown_environment"
    http_status = 404


class WorkspaceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["git", "dir", "tar"]
    path: str
    commit: str | None = Field(None, description="git: a sha, tag or branch; resolved to a sha when registered")


class EnvLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    memory_bytes: int | None = Field(None, ge=64 * 1024**2)
    cpus: float | None = Field(None, gt=0, le=64)
    pids: int | None = Field(None, ge=32, le=100_000)


class EnvironmentSpec(BaseModel):
    """What a client sends to PUT /v1/environments/{name} (or writes in the YAML file)."""

    model_config = ConfigDict(extra="forbid")
    workspace: WorkspaceSpec | None = None
    image: str | None = Field(None, description="base image; default: the service's sandbox image")
    workdir: str = Field("/workspace", pattern=r"^/[^\x00]*$")
    limits: EnvLimits = EnvLimits()
    shell_timeout_s: float | None = Field(None, gt=0)
    output_cap_bytes: int | None = Field(None, ge=256, le=1024 * 1024)
    max_tool_calls: int | None = Field(None, ge=1)
    warm_pool_size: int = Field(0, ge=0, le=5000, description="pre-started containers kept ready on each host")


class Environment(BaseModel):
    """A registered environment: the spec plus what registration resolved."""

    name: str
    spec: EnvironmentSpec
    commit_sha: str | None = None
    source_path: str | None = None  # the resolved (symlink-free) host path
    source_digest: str | None = None
    definition_digest: str
    file_count: int = 0
    registered_at: float = 0.0

    @property
    def needs_preparation(self) -> bool:
        return self.spec.workspace is not None


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise BadRequest("environment names are 1-64 characters: letters, digits, '_', '.', '-'")
    return name


def _digest(spec: EnvironmentSpec, source_path: str | None, commit: str | None, source_digest: str | None) -> str:
    """Address of what the derived image contains; limits and budgets are not part of it."""
    identity = {
        "workspace": spec.workspace.type if spec.workspace else None,
        "path": source_path,
        "commit": commit,
        "content": source_digest,
        "image": spec.image,
        "workdir": spec.workdir,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class EnvironmentRegistry:
    """Definitions in Redis: `P:env:{name}` (JSON), `P:envs` (names), `P:envfiles:{digest}` (files),
    `P:envprep:{name}` (per-host preparation state)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.r = store.r
        self.p = store.p
        self.settings = settings

    def register(self, name: str, spec: EnvironmentSpec) -> Environment:
        """Check and store a definition. Raises WorkspaceForbidden (403), WorkspaceInvalid (400)."""
        check_name(name)
        commit = source_path = source_digest = None
        files: list[str] = []
        if spec.workspace is not None:
            ws = spec.workspace
            resolved = workspaces.confine(ws.path, self.settings.workspace_root_list)
            if not resolved.exists():
                raise workspaces.WorkspaceInvalid(f"{ws.path} does not exist")
            if ws.type == "git":
                commit = workspaces.resolve_commit(resolved, ws.commit or "")
            elif ws.type == "dir" and not resolved.is_dir():
                raise workspaces.WorkspaceInvalid(f"{ws.path} is not a directory")
            elif ws.type == "tar" and not resolved.is_file():
                raise workspaces.WorkspaceInvalid(f"{ws.path} is not a file")
            source_path = str(resolved)
            source_digest = workspaces.fingerprint(ws.type, resolved, commit)
            files = workspaces.list_files(ws.type, resolved, commit)
        env = Environment(
            name=name,
            spec=spec,
            commit_sha=commit,
            source_path=source_path,
            source_digest=source_digest,
            definition_digest=_digest(spec, source_path, commit, source_digest),
            file_count=len(files),
            registered_at=time.time(),
        )
        with translate_errors():
            pipe = self.r.pipeline(transaction=True)
            files_key = f"{self.p}:envfiles:{env.definition_digest}"
            pipe.delete(files_key)
            for i in range(0, len(files), 5000):
                pipe.sadd(files_key, *files[i : i + 5000])
            pipe.set(f"{self.p}:env:{name}", env.model_dump_json())
            pipe.sadd(f"{self.p}:envs", name)
            pipe.execute()
        return env

    def get(self, name: str) -> Environment:
        """The named environment; `default` exists even when nobody registered it."""
        with translate_errors():
            raw = self.r.get(f"{self.p}:env:{name}")
        if raw:
            return Environment.model_validate_json(raw)
        if name == DEFAULT:
            return Environment(name=DEFAULT, spec=EnvironmentSpec(), definition_digest="default")
        raise UnknownEnvironment(f"no environment named {name!r}; register it with PUT /v1/environments/{name}")

    def names(self) -> list[str]:
        with translate_errors():
            return sorted(set(self.r.smembers(f"{self.p}:envs")) | {DEFAULT})

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
        with translate_errors():
            return set(self.r.smembers(f"{self.p}:envfiles:{env.definition_digest}"))

    def set_preparation(self, name: str, host: str, state: dict[str, Any]) -> None:
        with translate_errors():
            self.r.hset(f"{self.p}:envprep:{name}", host, json.dumps(state))

    def preparation(self, name: str) -> dict[str, Any]:
        with translate_errors():
            raw = self.r.hgetall(f"{self.p}:envprep:{name}")
        return {host: json.loads(v) for host, v in raw.items()}

    def describe(self, env: Environment) -> dict[str, Any]:
        return {
            "name": env.name,
            **env.spec.model_dump(),
            "commit_sha": env.commit_sha,
            "definition_digest": env.definition_digest,
            "file_count": env.file_count,
            "registered_at": env.registered_at or None,
            "preparation": self.preparation(env.name),
            "pool": self.pool_view(env),
        }

    def pool_view(self, env: Environment) -> dict[str, dict[str, int]]:
        target = env.spec.warm_pool_size if env.registered_at or env.name != DEFAULT else self.settings.warm_pool_size
        sizes = self.store.pool_sizes(self.store.hosts(), {env.name: target})
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
