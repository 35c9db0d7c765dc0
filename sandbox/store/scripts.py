"""Every Lua script of the store: the state transitions that racing API replicas and workers
must see in one order. Each names its KEYS and ARGV where it is called (the store modules).
"""

from __future__ import annotations

# Create the record if missing (state pending), never touching an existing one.
ENSURE = """
if redis.call('HEXISTS', KEYS[1], 'state') == 0 then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'created_at', ARGV[1], 'last_used_at', ARGV[1],
             'environment', ARGV[2], 'item', ARGV[3])
  return 1
end
return 0
"""

WAKE_TOKENS = 16  # callers waiting for one rollout's container woken at once; more wake at their next look


def wake_waiters(key_index: int) -> str:
    """Lua that wakes the callers blocked on a rollout's wake list (Store.wait_for_change)."""
    tokens = ", ".join(["'1'"] * WAKE_TOKENS)
    return f"redis.call('RPUSH', KEYS[{key_index}], {tokens})\nredis.call('EXPIRE', KEYS[{key_index}], 60)"


# Single-flight: exactly one caller wins the right to provision. Returns
# {won (0/1), state, attempt}. A failed attempt, or one stale past ARGV[2] seconds,
# may be claimed again: nothing was ever served from it.
CLAIM_PROVISIONING = """
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
MARK_READY = (
    """
if redis.call('HGET', KEYS[1], 'state') ~= 'provisioning' then return 0 end
if redis.call('HGET', KEYS[1], 'provision_attempt') ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'ready', 'host', ARGV[1], 'container_id', ARGV[2],
           'container_name', ARGV[3], 'ready_at', ARGV[4], 'last_used_at', ARGV[4])
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]), ARGV[6])
"""
    + wake_waiters(3)
    + """
return 1
"""
)

MARK_FAILED = (
    """
if redis.call('HGET', KEYS[1], 'state') ~= 'provisioning' then return 0 end
if redis.call('HGET', KEYS[1], 'provision_attempt') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'failed', 'provision_error', ARGV[1], 'provision_error_reason', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
"""
    + wake_waiters(4)
    + """
return 1
"""
)

# A worker took provisioning attempt ARGV[2]: record its host, so waiters notice if that host dies.
PROVISION_HOST = """
if redis.call('HGET', KEYS[1], 'state') ~= 'provisioning' then return 0 end
if redis.call('HGET', KEYS[1], 'provision_attempt') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'provision_host', ARGV[1])
return 1
"""

# Any live state -> an ended state (its keys then expire: KEYS 1-4 and 7, the children list).
# `lost` taints: the agent had a sandbox and it vanished.
# Returns the previous state ('' when nothing changed).
END = """
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
for _, i in ipairs({1, 2, 3, 4, 7}) do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[4])) end
return state
"""


BUDGET = """
local used = redis.call('HINCRBY', KEYS[1], 'budget_used', 1)
if used > tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'budget_used', -1)
  return 0
end
return 1
"""


# ready -> failed for a rollout whose sandbox died before serving any call: nothing the agent
# saw is lost, so the platform's retry may provision again.
UNSERVE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'ready' then return 0 end
if redis.call('HGET', KEYS[1], 'served') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'failed', 'provision_error', ARGV[1], 'provision_error_reason', 'provision_failed',
           'ready_at', '', 'container_name', '', 'container_id', '', 'host', '')
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

TAINT = """
if redis.call('HGET', KEYS[1], 'tainted') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'tainted', '1', 'taint_reason', ARGV[1])
return 1
"""


# Claim a warm container: pop from the first host pool that has one, atomically, so two
# rollouts can never get the same container. ARGV: the hosts of KEYS, in order. Returns {host, name} or nil.
POOL_CLAIM = """
for i, key in ipairs(KEYS) do
  local name = redis.call('LPOP', key)
  if name then return {ARGV[i], name} end
end
return nil
"""


# A fork's child: created straight into provisioning (attempt 1), with its parent, only if
# the id is new. ARGV: now, environment, item, rid, parent, at_call ('' for none), host.
# `served`: the trainer has seen results from this state (the parent's prefix), so losing the
# child's container loses work and is never answered by provisioning a fresh one.
CREATE_CHILD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'provisioning', 'created_at', ARGV[1], 'last_used_at', ARGV[1],
           'environment', ARGV[2], 'item', ARGV[3], 'provision_attempt', 1, 'provision_claimed_at', ARGV[1],
           'provision_host', ARGV[7], 'parent', ARGV[5], 'at_call', ARGV[6], 'served', '1')
redis.call('ZADD', KEYS[2], tonumber(ARGV[1]), ARGV[4])
redis.call('ZADD', KEYS[3], tonumber(ARGV[1]), ARGV[4])
return 1
"""

# Forget a fork's child that never came to be (the fork failed): only while it is still the
# provisioning attempt the fork created, so a rollout that became ready is never erased.
FORGET_CHILD = (
    """
if redis.call('HGET', KEYS[1], 'state') ~= 'provisioning' then return 0 end
if redis.call('HGET', KEYS[1], 'parent') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
"""
    + wake_waiters(4)  # a call waiting for the child learns at once that its fork failed
    + """
return 1
"""
)


# One of a rollout's run slots: a call may go to its host only while fewer than ARGV[3] of
# the rollout's calls hold one. Slots expire (ARGV[2]) so a crashed API cannot leak them.
# ARGV: now, expires_at, cap, token. Returns 1 when taken.
ACQUIRE_RUN_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]), ARGV[4])
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
return 1
"""

RELEASE_RUN_SLOT = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('EXPIRE', KEYS[2], 60)
end
return 1
"""
