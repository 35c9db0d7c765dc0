"""A rollout as data: its states, its record, and the rules that name its container and environment.

States: `pending` (a call was recorded but no container asked for) -> `provisioning` ->
`ready` -> `released | expired | lost`; a failed provisioning attempt is `failed` and may
be claimed again (nothing was served from it). The transitions themselves are Lua scripts
in sandbox/store/scripts.py, so racing API replicas and workers see one order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest
from .outcomes import Outcome

DEFAULT_ENVIRONMENT = "default"

# Rollout states. `pending`: known (a call was recorded) but no container asked for yet.
PENDING, PROVISIONING, READY, FAILED = "pending", "provisioning", "ready", "failed"
RELEASED, EXPIRED, LOST = "released", "expired", "lost"
ENDED_STATES = (RELEASED, EXPIRED, LOST)


@dataclass(frozen=True)
class RolloutRecord:
    rollout_id: str
    state: str
    host: str = ""
    container_id: str = ""
    container_name: str = ""
    environment: str = "default"
    item: dict[str, Any] | None = None
    created_at: float = 0.0
    ready_at: float = 0.0
    last_used_at: float = 0.0
    ended_at: float = 0.0
    end_reason: str = ""
    provision_attempt: int = 0
    provision_claimed_at: float = 0.0
    provision_error: str = ""
    provision_error_reason: str = ""
    provision_host: str = ""  # the host whose worker took the current provisioning attempt
    tainted: bool = False
    taint_reason: str = ""
    served: bool = False  # a call ran in the sandbox and the agent saw its result
    calls: dict[str, int] | None = None
    parent: str = ""  # a fork's child: the rollout it was forked from
    at_call: int | None = None  # ... and the index of the parent's last call before the fork
    children: tuple[str, ...] = ()  # rollouts forked from this one (read apart from the record)

    @classmethod
    def from_hash(cls, rid: str, h: dict[str, str]) -> RolloutRecord:
        def f(key: str) -> float:
            return float(h.get(key) or 0.0)

        return cls(
            rollout_id=rid,
            state=h.get("state", PENDING),
            host=h.get("host", ""),
            container_id=h.get("container_id", ""),
            container_name=h.get("container_name", ""),
            environment=h.get("environment", ""),  # "" until the first call names it
            item=json.loads(h["item"]) if h.get("item") else None,
            created_at=f("created_at"),
            ready_at=f("ready_at"),
            last_used_at=f("last_used_at"),
            ended_at=f("ended_at"),
            end_reason=h.get("end_reason", ""),
            provision_attempt=int(h.get("provision_attempt") or 0),
            provision_claimed_at=f("provision_claimed_at"),
            provision_error=h.get("provision_error", ""),
            provision_error_reason=h.get("provision_error_reason", ""),
            provision_host=h.get("provision_host", ""),
            tainted=h.get("tainted") == "1",
            served=h.get("served") == "1",
            taint_reason=h.get("taint_reason", ""),
            calls={o.value: int(h.get(f"calls_{o.value}") or 0) for o in Outcome},
            parent=h.get("parent", ""),
            at_call=int(h["at_call"]) if h.get("at_call") not in (None, "") else None,
        )

    def public(self) -> dict[str, Any]:
        """The record as GET /v1/rollouts/{id} shows it."""
        calls = dict(self.calls or {})
        return {
            "rollout_id": self.rollout_id,
            "state": self.state,
            "host": self.host or None,
            "container_id": self.container_id or None,
            "environment": self.environment,
            "item": self.item,
            "created_at": self.created_at or None,
            "ready_at": self.ready_at or None,
            "last_used_at": self.last_used_at or None,
            "ended_at": self.ended_at or None,
            "end_reason": self.end_reason or None,
            "calls": {"total": sum(calls.values()), **calls},
            "infra_tainted": self.tainted,
            "taint_reason": self.taint_reason or None,
            "provision_error": self.provision_error or None,
            "parent": {"rollout_id": self.parent, "at_call": self.at_call} if self.parent else None,
            "children": list(self.children),
        }


def container_name(instance: str, rollout_id: str) -> str:
    """Deterministic, so a re-run provisioning task finds the container it already made."""
    digest = hashlib.sha256(rollout_id.encode()).hexdigest()[:24]
    return f"sbx-{instance}-{digest}"


def environment_of(item: dict[str, Any] | None) -> str:
    """The environment a dataset row asks for; `default` when it names none (absent, null or "").

    Raises BadRequest when it is something else than a name: a row meant for another environment
    must not silently run in `default`.
    """
    env = (item or {}).get("environment")
    if env is None or env == "":
        return DEFAULT_ENVIRONMENT
    if not isinstance(env, str):
        kind = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
        raise BadRequest(
            f"item.environment must be a string naming an environment, not {kind.get(type(env), type(env).__name__)}"
        )
    return env
