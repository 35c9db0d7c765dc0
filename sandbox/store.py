"""Everything the service knows lives here, in Redis: rollout records, trajectories,
stored call results, the host registry. No state lives only in a process, so any API
replica or worker can die and another carries on.

Keys (prefix `P` = settings.key_prefix):
  P:ro:{rid}            hash   the rollout record (see RolloutRecord)
  P:ro:{rid}:calls      list   trajectory, one JSON CallResult per finished call
  P:ro:{rid}:results    hash   call_id -> JSON CallResult, for retries (ok/model_error only)
  P:ro:{rid}:inflight   hash   call_id -> claim time, while a call runs
  P:live                zset   rid -> last used time, rollouts that hold or await a container
  P:created             zset   rid -> creation time, same members, for the max lifetime
  P:host:{id}           hash   a sandbox host's registration, renewed by its heartbeat (hosts.py
                               judges it); kept a day after the last beat so a dead host shows
  P:hosts               set    host ids with a registration
  P:reply:{id}          list   a worker's reply to one dispatched task
  P:started:{id}        string set when a worker starts a dispatched task
State transitions are Lua scripts, so racing API replicas and workers see one order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from .calls import CallResult
from .errors import StoreUnavailable
from .hosts import views as host_views
from .outcomes import Outcome

# Rollout states. `pending`: known (a call was recorded) but no container asked for yet.
PENDING, PROVISIONING, READY, FAILED = "pending", "provisioning", "ready", "failed"
RELEASED, EXPIRED, LOST = "released", "expired", "lost"
LIVE_STATES = (PROVISIONING, READY)
HOST_RECORD_TTL_S = 86400
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
        }


# Create the record if missing (state pending), never touching an existing one.
_ENSURE = """
if redis.call('HEXISTS', KEYS[1], 'state') == 0 then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'created_at', ARGV[1], 'last_used_at', ARGV[1],
             'environment', ARGV[2], 'item', ARGV[3])
  return 1
end
return 0
"""

WAKE_TOKENS = 16  # callers waiting for one rollout's container woken at once; more wake at their next look


def _wake_waiters(key_index: int) -> str:
    """Lua that wakes the callers blocked on a rollout's wake list (Store.wait_for_change)."""
    tokens = ", ".join(["'1'"] * WAKE_TOKENS)
    return f"redis.call('RPUSH', KEYS[{key_index}], {tokens})\nredis.call('EXPIRE', KEYS[{key_index}], 60)"


# Single-flight: exactly one caller wins the right to provision. Returns
# {won (0/1), state, attempt}. A failed attempt, or one stale past ARGV[2] seconds,
# may be claimed again: nothing was ever served from it.
_CLAIM_PROVISIONING = """
local now = tonumber(ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state')
local claimable = (not state) or state == 'pending' or state == 'failed'
if state == 'provisioning' then
  local claimed = tonumber(redis.call('HGET', KEYS[1], 'provision_claimed_at') or '0')
  if now - claimed > tonumber(ARGV[2]) then claimable = true end
  -- The caller saw this attempt's host die: take it over (only once, the attempt moves on).
  if ARGV[6] ~= '' and redis.call('HGET', KEYS[1], 'provision_attempt') == ARGV[6] then claimable = true end
end
if not claimable then
  return {0, state, tonumber(redis.call('HGET', KEYS[1], 'provision_attempt') or '0')}
end
if not state then
  redis.call('HSET', KEYS[1], 'created_at', ARGV[1], 'environment', ARGV[3], 'item', ARGV[4])
  redis.call('ZADD', KEYS[3], now, ARGV[5])
elseif redis.call('ZSCORE', KEYS[3], ARGV[5]) == false then
  redis.call('ZADD', KEYS[3], tonumber(redis.call('HGET', KEYS[1], 'created_at') or ARGV[1]), ARGV[5])
end
local attempt = redis.call('HINCRBY', KEYS[1], 'provision_attempt', 1)
redis.call('HSET', KEYS[1], 'state', 'provisioning', 'provision_claimed_at', ARGV[1], 'last_used_at', ARGV[1],
           'provision_error', '', 'provision_host', '')
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('DEL', KEYS[4])  -- wake-ups of an earlier attempt must not wake this one's waiters
return {1, 'provisioning', attempt}
"""

# provisioning -> ready, only for the attempt that is still current.
_MARK_READY = (
    """
if redis.call('HGET', KEYS[1], 'state') ~= 'provisioning' then return 0 end
if redis.call('HGET', KEYS[1], 'provision_attempt') ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'ready', 'host', ARGV[1], 'container_id', ARGV[2],
           'container_name', ARGV[3], 'ready_at', ARGV[4], 'last_used_at', ARGV[4])
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]), ARGV[6])
"""
    + _wake_waiters(3)
    + """
return 1
"""
)

_MARK_FAILED = (
    """
if redis.call('HGET', KEYS[1], 'state') ~= 'provisioning' then return 0 end
if redis.call('HGET', KEYS[1], 'provision_attempt') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'failed', 'provision_error', ARGV[1], 'provision_error_reason', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
"""
    + _wake_waiters(4)
    + """
return 1
"""
)

# A worker took provisioning attempt ARGV[2]: record its host, so waiters notice if that host dies.
_PROVISION_HOST = """
if redis.call('HGET', KEYS[1], 'state') ~= 'provisioning' then return 0 end
if redis.call('HGET', KEYS[1], 'provision_attempt') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'provision_host', ARGV[1])
return 1
"""

# Any live state -> an ended state. `lost` taints: the agent had a sandbox and it vanished.
# Returns the previous state ('' when nothing changed).
_END = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state == 'released' or state == 'expired' or state == 'lost' then return '' end
local fields = {'state', ARGV[1], 'ended_at', ARGV[2], 'end_reason', ARGV[3]}
if ARGV[1] == 'lost' and redis.call('HGET', KEYS[1], 'tainted') ~= '1' then
  table.insert(fields, 'tainted'); table.insert(fields, '1')
  table.insert(fields, 'taint_reason'); table.insert(fields, 'sandbox_lost')
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZREM', KEYS[5], ARGV[5])
redis.call('ZREM', KEYS[6], ARGV[5])
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[4])) end
return state
"""


_BUDGET = """
local used = redis.call('HINCRBY', KEYS[1], 'budget_used', 1)
if used > tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'budget_used', -1)
  return 0
end
return 1
"""


# ready -> failed for a rollout whose sandbox died before serving any call: nothing the agent
# saw is lost, so the platform's retry may provision again.
_UNSERVE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'ready' then return 0 end
if redis.call('HGET', KEYS[1], 'served') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'failed', 'provision_error', ARGV[1], 'provision_error_reason', 'provision_failed',
           'ready_at', '', 'container_name', '', 'container_id', '', 'host', '')
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

_TAINT = """
if redis.call('HGET', KEYS[1], 'tainted') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'tainted', '1', 'taint_reason', ARGV[1])
return 1
"""


# Claim a warm container: pop from the first host pool that has one and record its owner,
# atomically, so two rollouts can never get the same container. Returns {host, name} or nil.
_POOL_CLAIM = """
for i, key in ipairs(KEYS) do
  local name = redis.call('LPOP', key)
  if name then
    redis.call('SET', ARGV[1] .. name, ARGV[2], 'EX', tonumber(ARGV[3]))
    return {ARGV[3 + i], name}
  end
end
return nil
"""


class Store:
    """Typed access to the service's Redis state. Methods raise StoreUnavailable when Redis does not answer."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "sbx",
        retention_s: float = 7 * 86400,
        blocking: redis.Redis | None = None,
    ) -> None:
        # decode_responses=True: every reply is str; redis-py's stubs cannot express that.
        self.r: Any = client
        # Blocking waits (BLPOP for a worker's reply) last as long as a command may run, far
        # past any socket read timeout, so they use their own connections without one.
        self.blocking: Any = blocking or client
        self.p = prefix
        self.retention_s = int(retention_s)
        self._ensure = client.register_script(_ENSURE)
        self._claim = client.register_script(_CLAIM_PROVISIONING)
        self._ready = client.register_script(_MARK_READY)
        self._failed = client.register_script(_MARK_FAILED)
        self._end = client.register_script(_END)
        self._budget = client.register_script(_BUDGET)
        self._taint = client.register_script(_TAINT)
        self._pool_claim = client.register_script(_POOL_CLAIM)
        self._unserve = client.register_script(_UNSERVE)
        self._provision_host = client.register_script(_PROVISION_HOST)

    @classmethod
    def from_url(cls, url: str, prefix: str, retention_s: float, max_connections: int = 1024) -> Store:
        common = {"decode_responses": True, "socket_connect_timeout": 5, "socket_keepalive": True, "timeout": 10}
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, socket_timeout=10, health_check_interval=30, **common
        )
        blocking_pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, socket_timeout=None, **common
        )
        return cls(redis.Redis(connection_pool=pool), prefix, retention_s, redis.Redis(connection_pool=blocking_pool))

    # --- keys ---
    def k_rollout(self, rid: str) -> str:
        return f"{self.p}:ro:{rid}"

    def k_calls(self, rid: str) -> str:
        return f"{self.p}:ro:{rid}:calls"

    def k_results(self, rid: str) -> str:
        return f"{self.p}:ro:{rid}:results"

    def k_wake(self, rid: str) -> str:
        return f"{self.p}:ro:{rid}:wake"

    def k_inflight(self, rid: str) -> str:
        return f"{self.p}:ro:{rid}:inflight"

    @property
    def k_live(self) -> str:
        return f"{self.p}:live"

    @property
    def k_created(self) -> str:
        return f"{self.p}:created"

    def k_reply(self, reply_id: str) -> str:
        return f"{self.p}:reply:{reply_id}"

    def k_started(self, reply_id: str) -> str:
        return f"{self.p}:started:{reply_id}"

    # --- rollouts ---
    def get_rollout(self, rid: str) -> RolloutRecord | None:
        with translate_errors():
            h = self.r.hgetall(self.k_rollout(rid))
        return RolloutRecord.from_hash(rid, h) if h else None

    def ensure_rollout(self, rid: str, environment: str, item: dict[str, Any] | None) -> None:
        with translate_errors():
            self._ensure(keys=[self.k_rollout(rid)], args=[time.time(), environment, _dump_item(item)])

    def claim_provisioning(
        self, rid: str, environment: str, item: dict[str, Any] | None, stale_s: float, take_over: int = 0
    ) -> tuple[bool, str, int]:
        """Try to become the one caller that provisions `rid`: (won, state, attempt).

        `take_over`: an attempt whose host is known dead; it may be claimed again at once.
        """
        with translate_errors():
            won, state, attempt = self._claim(
                keys=[self.k_rollout(rid), self.k_live, self.k_created, self.k_wake(rid)],
                args=[time.time(), stale_s, environment, _dump_item(item), rid, take_over or ""],
            )
        return bool(won), str(state), int(attempt)

    def wait_for_change(self, rid: str, timeout_s: float) -> None:
        """Block until the rollout's provisioning ends (ready or failed) or `timeout_s` passes.

        Waiting callers of a burst block here instead of polling the record (the API's CPU
        in a cold burst of 500 fell from 44.8 to 9.8 CPU-s, docs/benchmarks.md).
        """
        with translate_errors():
            self.blocking.blpop([self.k_wake(rid)], timeout=max(timeout_s, 0.01))

    def set_provision_host(self, rid: str, attempt: int, host: str) -> bool:
        with translate_errors():
            return bool(self._provision_host(keys=[self.k_rollout(rid)], args=[host, attempt]))

    def mark_ready(self, rid: str, attempt: int, host: str, container_id: str, container_name: str) -> bool:
        with translate_errors():
            return bool(
                self._ready(
                    keys=[self.k_rollout(rid), self.k_live, self.k_wake(rid)],
                    args=[host, container_id, container_name, time.time(), attempt, rid],
                )
            )

    def mark_provision_failed(self, rid: str, attempt: int, message: str, reason: str = "provision_failed") -> bool:
        """End a provisioning attempt; `reason` is the infra reason the waiting callers answer with."""
        with translate_errors():
            return bool(
                self._failed(
                    keys=[self.k_rollout(rid), self.k_live, self.k_created, self.k_wake(rid)],
                    args=[message[:2000], attempt, rid, reason],
                )
            )

    def end_rollout(self, rid: str, state: str, reason: str) -> str:
        """Move a live rollout to an ended state; return the state it left ('' if none)."""
        assert state in ENDED_STATES
        with translate_errors():
            return str(
                self._end(
                    keys=[
                        self.k_rollout(rid),
                        self.k_calls(rid),
                        self.k_results(rid),
                        self.k_inflight(rid),
                        self.k_live,
                        self.k_created,
                    ],
                    args=[state, time.time(), reason, self.retention_s, rid],
                )
                or ""
            )

    def fail_unserved(self, rid: str, message: str) -> bool:
        """A sandbox lost before it served anything: make the rollout provisionable again."""
        with translate_errors():
            return bool(self._unserve(keys=[self.k_rollout(rid), self.k_live], args=[message[:2000], rid]))

    def taint(self, rid: str, reason: str) -> bool:
        """Mark the rollout infra-tainted; True only the first time (so it is counted once)."""
        with translate_errors():
            return bool(self._taint(keys=[self.k_rollout(rid)], args=[reason]))

    def rollouts_idle_since(self, cutoff: float, limit: int = 1000) -> list[str]:
        with translate_errors():
            return list(self.r.zrangebyscore(self.k_live, "-inf", cutoff, start=0, num=limit))

    def rollouts_created_before(self, cutoff: float, limit: int = 1000) -> list[str]:
        with translate_errors():
            return list(self.r.zrangebyscore(self.k_created, "-inf", cutoff, start=0, num=limit))

    def live_rollouts(self) -> list[RolloutRecord]:
        """Records of every rollout holding or awaiting a container (for gauges and the reconciler)."""
        with translate_errors():
            rids = self.r.zrange(self.k_live, 0, -1)
            pipe = self.r.pipeline(transaction=False)
            for rid in rids:
                pipe.hgetall(self.k_rollout(rid))
            hashes = pipe.execute()
        return [RolloutRecord.from_hash(rid, h) for rid, h in zip(rids, hashes, strict=True) if h]

    def state_snapshot(
        self,
        queue_names: list[str],
        broker: Any = None,
        pool_targets: dict[str, int] | None = None,
        *,
        call_queue_prefix: str,
    ) -> dict[str, Any]:
        """What the scrape-time gauges show (metrics.StateCollector), read in a few round trips."""
        live: dict[tuple[str, str], int] = {}
        backlog = 0
        for rec in self.live_rollouts():
            key = (rec.state, rec.host or "unplaced")
            live[key] = live.get(key, 0) + 1
            backlog += rec.state == PROVISIONING
        hosts = host_views(self.hosts())
        for host in hosts:
            live.setdefault((READY, host), 0)
        live.setdefault((PROVISIONING, "unplaced"), 0)
        with translate_errors():
            pipe = (broker or self.r).pipeline(transaction=False)
            for name in queue_names:
                for queue_key in _celery_queue_keys(name):
                    pipe.llen(queue_key)
            lengths = pipe.execute()
        per_queue = len(_celery_queue_keys("x"))
        queues = {name: sum(lengths[i * per_queue : (i + 1) * per_queue]) for i, name in enumerate(queue_names)}
        for host, (first, rest) in self.call_queue_depths(hosts).items():
            queues[f"{call_queue_prefix}.{host}.first-calls"] = first
            queues[f"{call_queue_prefix}.{host}.calls"] = rest
        pools = self.pool_sizes(hosts, pool_targets or {})
        return {"live": live, "backlog": backlog, "queues": queues, "hosts": hosts, "pools": pools}

    def pool_sizes(self, hosts: Iterable[str], targets: dict[str, int]) -> dict[tuple[str, str], tuple[int, int]]:
        """(available, target) warm containers per (environment, host)."""
        pairs = [(env, host) for env in targets for host in hosts]
        with translate_errors():
            pipe = self.r.pipeline(transaction=False)
            for env, host in pairs:
                pipe.llen(self.k_pool(env, host))
            lengths = pipe.execute()
        return {pair: (n, targets[pair[0]]) for pair, n in zip(pairs, lengths, strict=True)}

    # --- warm pools ---
    def k_pool(self, env: str, host: str) -> str:
        return f"{self.p}:pool:{env}:{host}"

    def pool_push(self, env: str, host: str, name: str) -> None:
        with translate_errors():
            self.r.rpush(self.k_pool(env, host), name)

    def pool_length(self, env: str, host: str) -> int:
        with translate_errors():
            return int(self.r.llen(self.k_pool(env, host)))

    def pool_members(self, env: str, host: str) -> list[str]:
        with translate_errors():
            return list(self.r.lrange(self.k_pool(env, host), 0, -1))

    def pool_remove(self, env: str, host: str, name: str) -> bool:
        with translate_errors():
            return bool(self.r.lrem(self.k_pool(env, host), 0, name))

    def pool_claim(self, env: str, hosts: list[str], rid: str) -> tuple[str, str] | None:
        """Take one warm container of `env` from the first of `hosts` that has one: (host, name)."""
        if not hosts:
            return None
        keys = [self.k_pool(env, h) for h in hosts]
        with translate_errors():
            got = self._pool_claim(keys=keys, args=[f"{self.p}:owner:", rid, self.retention_s, *hosts])
        return (str(got[0]), str(got[1])) if got else None

    def owner_of(self, name: str) -> str | None:
        with translate_errors():
            return self.r.get(f"{self.p}:owner:{name}")

    # --- calls ---
    def call_context(self, rid: str, call_id: str) -> tuple[CallResult | None, RolloutRecord | None]:
        """A call arriving: its stored result (a retry) and the rollout's record, in one round trip."""
        with translate_errors():
            pipe = self.r.pipeline(transaction=False)
            pipe.hget(self.k_results(rid), call_id)
            pipe.hgetall(self.k_rollout(rid))
            raw, h = pipe.execute()
        stored = CallResult.from_dict(json.loads(raw)) if raw else None
        return stored, (RolloutRecord.from_hash(rid, h) if h else None)

    def stored_result(self, rid: str, call_id: str) -> CallResult | None:
        with translate_errors():
            raw = self.r.hget(self.k_results(rid), call_id)
        return CallResult.from_dict(json.loads(raw)) if raw else None

    def begin_execution(self, reply_id: str, rid: str, call_id: str) -> tuple[CallResult | None, RolloutRecord | None]:
        """A worker starting a call: mark it started, and read its stored result and the record, in one round trip."""
        with translate_errors():
            pipe = self.r.pipeline(transaction=False)
            pipe.set(self.k_started(reply_id), "1", ex=3600)
            pipe.hget(self.k_results(rid), call_id)
            pipe.hgetall(self.k_rollout(rid))
            _, raw, h = pipe.execute()
        stored = CallResult.from_dict(json.loads(raw)) if raw else None
        return stored, (RolloutRecord.from_hash(rid, h) if h else None)

    def claim_call(self, rid: str, call_id: str, stale_s: float) -> bool:
        """Mark a call as running so a concurrent retry waits instead of running it again."""
        key = self.k_inflight(rid)
        now = time.time()
        with translate_errors():
            if self.r.hsetnx(key, call_id, now):
                return True
            claimed = float(self.r.hget(key, call_id) or 0)
            if now - claimed > stale_s:  # its runner died; a new attempt may go
                self.r.hset(key, call_id, now)
                return True
            return False

    def consume_budget(self, rid: str, limit: int) -> bool:
        """Count one tool call against the rollout's budget; False (and nothing counted) past it."""
        with translate_errors():
            return bool(self._budget(keys=[self.k_rollout(rid)], args=[limit]))

    def refund_budget(self, rid: str) -> None:
        """A call that failed on our side did not use the model's budget."""
        with translate_errors():
            self.r.hincrby(self.k_rollout(rid), "budget_used", -1)

    def release_call(self, rid: str, call_id: str) -> None:
        with translate_errors():
            self.r.hdel(self.k_inflight(rid), call_id)

    def record_call(self, rid: str, result: CallResult, served: bool = False) -> None:
        """Append to the trajectory, keep the result for retries, count it; one transaction.

        Infra errors go into the trajectory (the grader must see them) but are not kept for
        replay: a retry after an infra error may run the call, since it never completed.
        """
        data = json.dumps(result.to_dict(), ensure_ascii=False)
        with translate_errors():
            pipe = self.r.pipeline(transaction=True)
            pipe.rpush(self.k_calls(rid), data)
            if result.outcome != Outcome.INFRA_ERROR:
                pipe.hset(self.k_results(rid), result.call_id, data)
            if served:  # the agent has now seen results from this sandbox
                pipe.hset(self.k_rollout(rid), "served", "1")
            pipe.hdel(self.k_inflight(rid), result.call_id)
            pipe.hincrby(self.k_rollout(rid), f"calls_{result.outcome}", 1)
            pipe.hset(self.k_rollout(rid), "last_used_at", result.finished_at)
            pipe.zadd(self.k_live, {rid: result.finished_at}, xx=True)
            pipe.execute()

    def trajectory(self, rid: str) -> list[dict[str, Any]]:
        with translate_errors():
            return [json.loads(x) for x in self.r.lrange(self.k_calls(rid), 0, -1)]

    def touch(self, rid: str) -> None:
        now = time.time()
        with translate_errors():
            pipe = self.r.pipeline(transaction=False)
            pipe.hset(self.k_rollout(rid), "last_used_at", now)
            pipe.zadd(self.k_live, {rid: now}, xx=True)
            pipe.execute()

    # --- tool calls waiting for a host (see sandbox/worker/call_queue.py for why not Celery) ---
    def k_call_queue(self, host: str, first: bool) -> str:
        return f"{self.p}:calls:{host}:first" if first else f"{self.p}:calls:{host}"

    def push_call(self, host: str, request: dict[str, Any], first: bool, ttl_s: int) -> None:
        """Queue a call for `host`; the list expires once no call was pushed for `ttl_s`
        (a host that never comes back leaves nothing behind)."""
        key = self.k_call_queue(host, first)
        with translate_errors():
            pipe = self.r.pipeline(transaction=False)
            pipe.rpush(key, json.dumps(request, ensure_ascii=False))
            pipe.expire(key, ttl_s)
            pipe.execute()

    def pop_call(self, host: str, timeout_s: float) -> dict[str, Any] | None:
        """The next call for `host`, first calls of rollouts before the others; None after `timeout_s`."""
        with translate_errors():
            got = self.blocking.blpop(
                [self.k_call_queue(host, first=True), self.k_call_queue(host, first=False)], timeout=timeout_s
            )
        return json.loads(got[1]) if got else None

    def call_queue_depths(self, hosts: Iterable[str]) -> dict[str, tuple[int, int]]:
        """(first calls, other calls) waiting per host."""
        hosts = list(hosts)
        with translate_errors():
            pipe = self.r.pipeline(transaction=False)
            for host in hosts:
                pipe.llen(self.k_call_queue(host, first=True))
                pipe.llen(self.k_call_queue(host, first=False))
            n = pipe.execute()
        return {host: (n[2 * i], n[2 * i + 1]) for i, host in enumerate(hosts)}

    # --- replies from workers ---
    def push_reply(self, reply_id: str, payload: dict[str, Any], ttl_s: int = 300) -> None:
        with translate_errors():
            pipe = self.r.pipeline(transaction=False)
            pipe.rpush(self.k_reply(reply_id), json.dumps(payload, ensure_ascii=False))
            pipe.expire(self.k_reply(reply_id), ttl_s)
            pipe.execute()

    def wait_reply(self, reply_id: str, timeout_s: float) -> dict[str, Any] | None:
        with translate_errors():
            got = self.blocking.blpop([self.k_reply(reply_id)], timeout=max(timeout_s, 0.01))
        return json.loads(got[1]) if got else None

    def was_started(self, reply_id: str) -> bool:
        with translate_errors():
            return bool(self.r.exists(self.k_started(reply_id)))

    # --- hosts ---
    def k_host(self, host_id: str) -> str:
        return f"{self.p}:host:{host_id}"

    def register_host(self, host_id: str, info: dict[str, Any]) -> None:
        """A worker's heartbeat. The record outlives the worker by a day, so a dead host shows as down."""
        with translate_errors():
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(
                self.k_host(host_id), mapping={k: str(v) for k, v in info.items()} | {"heartbeat_at": str(time.time())}
            )
            pipe.expire(self.k_host(host_id), HOST_RECORD_TTL_S)
            pipe.sadd(f"{self.p}:hosts", host_id)
            pipe.execute()

    def hosts(self) -> dict[str, dict[str, str]]:
        """Every host's latest registration, alive or not (hosts.views judges them)."""
        with translate_errors():
            ids = sorted(self.r.smembers(f"{self.p}:hosts"))
            pipe = self.r.pipeline(transaction=False)
            for host_id in ids:
                pipe.hgetall(self.k_host(host_id))
            infos = pipe.execute()
            gone = [h for h, info in zip(ids, infos, strict=True) if not info]
            if gone:  # silent for a day: forget it
                self.r.srem(f"{self.p}:hosts", *gone)
        return {h: info for h, info in zip(ids, infos, strict=True) if info}

    def mark_host_swept(self, host_id: str, heartbeat_at: str) -> bool:
        """Remember that a down host's rollouts were ended, once per outage: False if done already."""
        with translate_errors():
            return bool(self.r.set(f"{self.p}:swept:{host_id}:{heartbeat_at}", "1", nx=True, ex=HOST_RECORD_TTL_S))

    def live_on_host(self, host_id: str) -> list[RolloutRecord]:
        """Live rollouts whose container is on `host_id`, or whose provisioning that host took."""
        return [
            r
            for r in self.live_rollouts()
            if r.host == host_id or (r.state == PROVISIONING and r.provision_host == host_id)
        ]

    def drop_pools_of(self, host_id: str, environments: list[str]) -> None:
        """A lost host's warm containers are gone with it: never hand them out."""
        with translate_errors():
            if environments:
                self.r.delete(*[self.k_pool(env, host_id) for env in environments])

    def ping(self) -> None:
        with translate_errors():
            self.r.ping()


def _celery_queue_keys(name: str) -> list[str]:
    """Kombu's Redis transport keeps a queue as one list per priority step."""
    return [name] + [f"{name}\x06\x16{step}" for step in (3, 6, 9)]


def _dump_item(item: dict[str, Any] | None) -> str:
    return json.dumps(item, ensure_ascii=False) if item is not None else ""


@contextmanager
def translate_errors() -> Iterator[None]:
    """Redis being down is an infra failure, never a crash or a model's fault."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"state store unavailable: {exc}") from exc
