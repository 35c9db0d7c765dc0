"""Environment definitions as the environment routes show them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ...domain.environment import EnvironmentSpec
from .common import _Open

# --- environments -------------------------------------------------------------------------------------------


class Preparation(_Open):
    """A host's derived image for the environment (workspace baked in)."""

    state: str = Field(description="preparing, ready or failed")
    image: str
    started_at: float
    duration_s: float | None = Field(None, description="absent while preparing")
    error: str | None = Field(None, description="present only when failed")


class PoolSize(_Open):
    available: int = Field(description="warm containers ready now")
    target: int = Field(description="warm containers the host keeps ready")


class _Named(BaseModel):
    name: str


class EnvironmentView(EnvironmentSpec, _Named):
    """A registered environment: its name, every field of its definition, and what registration resolved.

    Subclassing the spec keeps the view's fields in step with the definition (and in describe()'s order:
    name, the spec's fields, then these).
    """

    model_config = ConfigDict(extra="allow", json_schema_serialization_defaults_required=True)
    commit_sha: str | None = Field(description="git workspaces: the commit resolved at registration")
    definition_digest: str = Field(description="address of the derived image's content")
    file_count: int = Field(description="files in the workspace")
    registered_at: float | None = Field(description="Unix seconds; null for the built-in default environment")
    preparation: dict[str, Preparation] = Field(description="per host id")
    pool: dict[str, PoolSize] = Field(description="warm pool per host id")
    instruction: str | None = Field(
        None, description="task environments only: the task's instruction.md, the prompt for the model"
    )


class EnvironmentList(_Open):
    environments: list[EnvironmentView]


class EnvironmentDeleted(BaseModel):
    """What DELETE /v1/environments/{name} removed."""

    name: str
    deleted_definition_digest: str = Field(
        description="the removed definition's digest; its prepared images carry it as label sandbox.definition_digest"
    )
    registered_at: float = Field(description="when the removed definition was registered, Unix seconds")
    now: Literal["unknown", "builtin_default"] = Field(
        description="what the name means now: unknown (new rollouts naming it get 404), or for `default` the "
        "built-in default again"
    )
