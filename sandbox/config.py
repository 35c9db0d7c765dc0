"""Settings: one object, read from `SANDBOX_*` environment variables.

Nested areas use a double underscore, e.g. `SANDBOX_SHELL__DEFAULT_TIMEOUT_S=60`.
Build it through `get_settings()`, never at import time, so tests and processes can
set the environment first.
"""

from __future__ import annotations

import hashlib
import re
import socket
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .guest import PACKAGED_GUEST_DIR

PLACEHOLDER_TOKENS = {"", "changeme", "change-me", "token", "secret", "dev-token"}


class ShellSettings(BaseModel):
    default_timeout_s: float = Field(30.0, gt=0, description="Deadline of a shell command when the call names none.")
    max_timeout_s: float = Field(300.0, gt=0, description="Cap on the deadline a call may ask for.")
    max_command_bytes: int = Field(64 * 1024, gt=0, description="Longer commands are refused as a model error.")


class OutputSettings(BaseModel):
    cap_bytes: int = Field(16 * 1024, ge=256, description="Tool output kept per call (head and tail).")


class ExecSettings(BaseModel):
    output_cap_bytes: int = Field(
        128 * 1024, ge=256, description="Trainer API exec: stdout and stderr kept per call, each (head and tail)."
    )
    max_timeout_s: float = Field(3600.0, gt=0, description="Trainer API exec: cap on the deadline a call may ask for.")


class FilesSettings(BaseModel):
    max_upload_bytes: int = Field(
        512 * 1024**2, ge=0, description="Trainer API: largest upload body (a file or a tar stream); more is 413."
    )
    max_download_bytes: int = Field(
        512 * 1024**2, ge=0, description="Trainer API: largest download (a file, or a directory's tar); more is 413."
    )
    timeout_s: float = Field(
        600.0, gt=0, description="Trainer API: how long the sandbox may take to write or read one transfer."
    )


class LimitSettings(BaseModel):
    memory_bytes: int = Field(1024**3, ge=64 * 1024**2, description="Memory limit of a sandbox container (no swap).")
    cpus: float = Field(1.0, gt=0, description="CPU limit of a sandbox container.")
    pids: int = Field(256, ge=32, description="Process limit of a sandbox container (stops fork bombs).")


class LifecycleSettings(BaseModel):
    idle_ttl_s: float = Field(1800.0, gt=0, description="A rollout unused this long is released by the reaper.")
    max_lifetime_s: float = Field(7200.0, gt=0, description="A rollout older than this is released by the reaper.")
    reaper_interval_s: float = Field(30.0, gt=0, description="How often beat runs the reaper and reconciler.")
    orphan_grace_s: float = Field(
        60.0, ge=0, description="A container no record or pool owns is removed once older than this."
    )
    retention_s: float = Field(
        7 * 86400.0, gt=0, description="How long records and trajectories are kept after a rollout ends."
    )


class ArchiveSettings(BaseModel):
    dir: Path | None = Field(
        None,
        description="Ended rollouts (record, trajectory, grade) are archived here as gzip JSON, and read back "
        "when Redis no longer has them; unset: they stay in Redis for lifecycle.retention_s.",
    )
    redis_ttl_s: float = Field(
        300.0, gt=0, description="How long Redis keeps an archived rollout's keys (the archive keeps it after)."
    )


class TimeoutSettings(BaseModel):
    provision_s: float = Field(
        180.0, gt=0, description="A first call waits this long for its container before failing as queue_timeout."
    )
    queue_s: float = Field(60.0, gt=0, description="A tool call waits this long for a worker to pick it up.")
    provision_stale_s: float = Field(300.0, gt=0, description="A provisioning claim older than this may be taken over.")
    reply_slack_s: float = Field(
        20.0, gt=0, description="Wait past a call's own deadline before its worker counts as lost."
    )
    fork_s: float = Field(
        300.0, gt=0, description="A fork waits this long for its children to be ready before failing (503)."
    )
    grading_queue_s: float = Field(
        900.0,
        gt=0,
        description="A grading test run waits this long for its host (bursts of gradings queue, they do not fail).",
    )


class HostSettings(BaseModel):
    capacity: int = Field(
        1000,
        ge=0,
        description="Containers (rollouts and warm pool) this host takes before it counts as full; 0: no cap.",
    )
    heartbeat_s: float = Field(5.0, gt=0, description="How often a worker renews its host's registration.")
    down_after_beats: int = Field(
        4, ge=2, description="Missed heartbeats after which a host is down and its rollouts are lost."
    )
    failure_window_s: float = Field(60.0, gt=0, description="Window in which engine failures are counted.")
    failure_min: int = Field(5, ge=1, description="Engine failures in the window that can quarantine a host.")
    failure_ratio: float = Field(
        0.5, gt=0, le=1, description="Share of failed engine operations in the window that quarantines a host."
    )
    quarantine_s: float = Field(30.0, gt=0, description="How long a failure spike keeps new rollouts off a host.")


class GradingSettings(BaseModel):
    default_grader: str = Field("file_f1", description="Grader used when item['grader'] names none.")
    beta: float = Field(1.0, gt=0, description="file_f1: the F-beta weight of recall (1 = F1).")
    release_after_grade: bool = Field(True, description="Release the rollout's container once it is graded.")
    custom_graders: str = Field("", description="Comma-separated 'module:function' graders a dataset row may name.")
    tool_call_target: int | None = Field(
        None, ge=0, description="Efficiency shaping: calls allowed before a penalty (off when unset)."
    )
    penalty_per_extra_call: float = Field(
        0.0, ge=0, le=1, description="Efficiency shaping: score taken per call beyond the target."
    )
    numeric_rel_tol: float = Field(1e-3, gt=0, description="numeric: relative tolerance for full credit.")
    numeric_partial_rel_tol: float = Field(
        1e-2, gt=0, description="numeric: relative tolerance for half credit (rounding-level misses)."
    )


class Settings(BaseSettings):
    """Every knob of the service. README.md has the table of these with their defaults."""

    model_config = SettingsConfigDict(env_prefix="SANDBOX_", env_nested_delimiter="__", extra="ignore")

    env: str = Field("development", description="`development` or `production`; production refuses placeholder tokens.")
    api_tokens: str = Field("", description="Comma-separated bearer tokens accepted by /v1/ routes.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="State store (rollouts, trajectories, hosts).")
    broker_url: str = Field("", description="Celery broker; empty means redis_url.")
    key_prefix: str = Field("sbx", description="Prefix of every Redis key, so instances can share a Redis.")
    instance: str = Field("default", description="Service instance name, put on container labels and queue names.")
    host_id: str = Field(
        default_factory=socket.gethostname, description="Stable id of this sandbox host (the worker's Docker engine)."
    )
    docker_host: str = Field("unix:///var/run/docker.sock", description="Docker engine the worker drives.")
    image: str = Field("rollout-sandbox:bookworm", description="Image of the default environment.")
    workdir: str = Field("/workspace", description="Working directory of tool commands inside the sandbox.")
    sandbox_user: str = Field("sandbox", description="Unprivileged user that runs tool commands.")
    run_dir: Path = Field(
        Path("/var/lib/rollout-sandbox/run"),
        description="Host directory holding each container's guest socket directory.",
    )
    guest_dir: Path = Field(
        PACKAGED_GUEST_DIR,
        description="Host directory holding the guest binary (sandbox-guest), mounted read-only into sandboxes.",
    )
    extra_labels: dict[str, str] = Field(
        default_factory=dict, description="Extra container labels (JSON), e.g. for tests."
    )
    worker_concurrency: int = Field(
        64, ge=1, description="Tool calls a worker runs at once (call threads), and its Celery threads."
    )
    rollout_parallel_calls: int = Field(
        8,
        ge=1,
        description="Calls of one rollout running at once; more wait their turn, so one rollout cannot hold "
        "every call thread of its host.",
    )
    provision_concurrency: int = Field(
        8, ge=1, description="Container creations at once per host (what the engine sustains)."
    )
    warm_pool_size: int = Field(0, ge=0, description="Warm containers kept per host for the default environment.")
    fork_max_children: int = Field(64, ge=1, description="Most children one fork request may create.")
    worker_metrics_port: int = Field(9101, ge=0, description="Port of the worker's /metrics; 0 disables it.")
    worker_metrics_host: str = Field(
        "127.0.0.1", description="Address of the worker's /metrics (0.0.0.0 in a pod, for the PodMonitor)."
    )
    worker_data_host: str = Field(
        "127.0.0.1",
        description="Address the worker's data port binds (the trainer API's file bytes straight from the API); "
        "empty turns it off: the bytes then go through Redis.",
    )
    worker_data_port: int = Field(0, ge=0, description="Port of the worker's data port; 0: any free port.")
    worker_data_advertise: str = Field(
        "",
        description="Address the API reaches the data port at (default: the bound one); needed when it binds "
        "0.0.0.0, e.g. the pod IP, else the bytes go through Redis.",
    )
    api_host: str = Field("127.0.0.1", description="Address the API binds.")
    api_port: int = Field(8000, description="Port the API binds.")
    api_workers: int = Field(
        1, ge=1, le=64, description="uvicorn worker processes; >1 turns on Prometheus multiprocess mode."
    )
    workspace_roots: str = Field(
        "", description="Comma-separated host directories environments may take workspaces from."
    )
    environments_file: Path | None = Field(None, description="YAML file of environments registered at API start-up.")
    prepare_timeout_s: float = Field(900.0, gt=0, description="Longest an environment's image preparation may take.")

    shell: ShellSettings = ShellSettings()
    output: OutputSettings = OutputSettings()
    exec: ExecSettings = ExecSettings()
    files: FilesSettings = FilesSettings()
    limits: LimitSettings = LimitSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    archive: ArchiveSettings = ArchiveSettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    grading: GradingSettings = GradingSettings()
    hosts: HostSettings = HostSettings()

    @field_validator("env")
    @classmethod
    def _known_env(cls, value: str) -> str:
        if value not in {"development", "production"}:
            raise ValueError("env must be 'development' or 'production'")
        return value

    @model_validator(mode="after")
    def _no_placeholder_tokens_in_production(self) -> Settings:
        if self.env == "production":
            tokens = self.token_list
            if not tokens or any(t.lower() in PLACEHOLDER_TOKENS or len(t) < 16 for t in tokens):
                raise ValueError("production needs SANDBOX_API_TOKENS of at least 16 characters, no placeholders")
        return self

    @property
    def token_list(self) -> list[str]:
        return [t.strip() for t in self.api_tokens.split(",") if t.strip()]

    @property
    def workspace_root_list(self) -> list[Path]:
        return [Path(p.strip()) for p in self.workspace_roots.split(",") if p.strip()]

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def host_run_dir(self) -> Path:
        """This host's guest socket directories: one subdirectory per host, so hosts sharing a
        filesystem (two engines on one machine) never clean up each other's sockets."""
        safe = re.fullmatch(r"[A-Za-z0-9._-]{1,32}", self.host_id) is not None
        # A unix socket path must stay under 108 bytes: long host ids are shortened.
        return self.run_dir / (self.host_id if safe else hashlib.sha256(self.host_id.encode()).hexdigest()[:16])

    @property
    def host_queue(self) -> str:
        return host_queue_name(self.instance, self.host_id)

    @property
    def provision_queue(self) -> str:
        return f"{self.instance}.provision"

    @property
    def maintenance_queue(self) -> str:
        return f"{self.instance}.maintenance"


def host_queue_name(instance: str, host_id: str) -> str:
    """Every call touching an existing container goes to the queue of the host that owns it."""
    return f"{instance}.host.{host_id}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def settings_table() -> str:
    """The README's table of settings, generated so it cannot drift from the code."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str, values: BaseModel) -> None:
        for name, field in model.model_fields.items():
            value = getattr(values, name)
            if isinstance(value, BaseModel):
                walk(type(value), f"{prefix}{name.upper()}__", value)
                continue
            shown = {"host_id": "the hostname", "guest_dir": "the package's sandbox/guest/native/bin"}.get(name, value)
            shown = '""' if shown == "" else "{}" if shown == {} else "unset" if shown is None else shown
            rows.append(f"| `SANDBOX_{prefix}{name.upper()}` | `{shown}` | {field.description} |")

    walk(Settings, "", Settings())
    return "\n".join(rows) + "\n"


def update_readme(path: Path) -> None:
    """Replace the settings table in the README with a freshly generated one."""
    text = path.read_text()
    start = text.index("| variable | default | meaning |")
    end = text.index("\n## ", start)
    path.write_text(text[:start] + settings_table() + text[end:])


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--update-readme"]:
        update_readme(Path(sys.argv[2] if len(sys.argv) > 2 else "README.md"))
    else:
        print(settings_table(), end="")
