"""The key map: every Redis key the service uses, built here and nowhere else.

Prefix `P` = settings.key_prefix, so several instances (and the test suite) share one Redis.

Rollouts (sandbox/store/rollouts.py, calls.py):
  P:ro:{rid}                 hash    the rollout record (domain.rollout.RolloutRecord), budget_used
  P:ro:{rid}:calls           list    trajectory, one JSON CallResult per finished call
  P:ro:{rid}:results         hash    call_id -> JSON CallResult, for retries (ok / model_error only)
  P:ro:{rid}:inflight        hash    call_id -> claim time, while a call runs
  P:ro:{rid}:wake            list    wake-ups for callers waiting on the rollout's provisioning
  P:ro:{rid}:children        list    rollouts forked from this one, in order
  P:ro:{rid}:running         zset    token -> expiry, the rollout's calls running on its host now
  P:ro:{rid}:slotfree        list    wake-ups for calls waiting for one of those slots
  P:ro:{rid}:grade           string  JSON grade response of a grading that ran tests (grades.py)
  P:ro:{rid}:grading         string  a grading that runs tests is under way (its token; expires)
  P:live                     zset    rid -> last used time, rollouts that hold or await a container
  P:created                  zset    rid -> creation time, same members, for the max lifetime
  P:forking:{fork_id}        string  a fork is under way (its image is not yet used by a child)
E2B-compatible sandboxes (e2b.py), each a rollout of the same id:
  P:e2b:{rid}                hash    template, metadata, envVars, access token digest, start and end time
  P:e2b:{rid}:procs          hash    pid -> JSON process config, the commands running now
  P:e2b:{rid}:pid            string  the last pid handed out
  P:e2b:all                  zset    rid -> end time (the sandbox's timeout), for listing and the reaper
Call queues and replies (queues.py):
  P:calls:{host}:first       list    JSON CallRequests of rollouts' first calls, read first
  P:calls:{host}             list    JSON CallRequests of the other calls
  P:reply:{reply_id}         list    the worker's JSON CallReply to one call
  P:started:{reply_id}       string  set when a worker starts the call (worker_lost vs queue_timeout)
Transfers (transfers.py), the trainer API's file bytes between the API and a worker:
  P:xfer:{id}                list    the bytes in chunks of about 1 MiB, in order (expires)
Warm pools (pools.py):
  P:pool:{env}:{host}        list    names of warm containers ready to be claimed
  P:refilling:{host}:{env}   string  a refill of that pool is under way
  P:coalesce:refill:{host}   string  a refill of that host was asked for within the last second
Hosts (hosts.py):
  P:host:{id}                hash    a host's registration, renewed by its heartbeat; kept a day
  P:hosts                    set     host ids with a registration
  P:swept:{id}:{beat}        string  a down host's rollouts were ended for this outage
Environments (environments.py):
  P:env:{name}               string  JSON definition (domain.environment.Environment)
  P:env-retired:{name}       string  a deleted definition, kept for the rollouts that use it (expires)
  P:envs                     set     registered names
  P:envfiles:{digest}        set     the workspace's files at the base (the grader's existence check)
  P:envprep:{name}           hash    host -> JSON preparation state
  P:envlock:{host}:{tag}     string  one process of a host prepares that image

Celery's broker keys are Celery's own (sandbox/dispatch/celery_dispatcher.py reads their lengths).
"""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str) -> None:
        self.p = prefix

    # --- rollouts ---
    def rollout(self, rid: str) -> str:
        return f"{self.p}:ro:{rid}"

    def calls(self, rid: str) -> str:
        return f"{self.p}:ro:{rid}:calls"

    def results(self, rid: str) -> str:
        return f"{self.p}:ro:{rid}:results"

    def inflight(self, rid: str) -> str:
        return f"{self.p}:ro:{rid}:inflight"

    def wake(self, rid: str) -> str:
        return f"{self.p}:ro:{rid}:wake"

    def children(self, rid: str) -> str:
        return f"{self.p}:ro:{rid}:children"

    def running(self, rid: str) -> str:
        return f"{self.p}:ro:{rid}:running"

    def slot_free(self, rid: str) -> str:
        return f"{self.p}:ro:{rid}:slotfree"

    def grade(self, rid: str) -> str:
        return f"{self.p}:ro:{rid}:grade"

    def grading(self, rid: str) -> str:
        return f"{self.p}:ro:{rid}:grading"

    @property
    def live(self) -> str:
        return f"{self.p}:live"

    @property
    def created(self) -> str:
        return f"{self.p}:created"

    # --- E2B-compatible sandboxes ---
    def e2b(self, rid: str) -> str:
        return f"{self.p}:e2b:{rid}"

    def e2b_procs(self, rid: str) -> str:
        return f"{self.p}:e2b:{rid}:procs"

    def e2b_pid(self, rid: str) -> str:
        return f"{self.p}:e2b:{rid}:pid"

    @property
    def e2b_all(self) -> str:
        return f"{self.p}:e2b:all"

    def forking(self, fork_id: str) -> str:
        return f"{self.p}:forking:{fork_id}"

    # --- call queues and replies ---
    def call_queue(self, host: str, first: bool) -> str:
        return f"{self.p}:calls:{host}:first" if first else f"{self.p}:calls:{host}"

    def reply(self, reply_id: str) -> str:
        return f"{self.p}:reply:{reply_id}"

    def started(self, reply_id: str) -> str:
        return f"{self.p}:started:{reply_id}"

    def transfer(self, transfer_id: str) -> str:
        return f"{self.p}:xfer:{transfer_id}"

    # --- warm pools ---
    def pool(self, env: str, host: str) -> str:
        return f"{self.p}:pool:{env}:{host}"

    def refilling(self, host: str, env: str) -> str:
        return f"{self.p}:refilling:{host}:{env}"

    def refill_asked(self, host: str) -> str:
        return f"{self.p}:coalesce:refill:{host}"

    # --- hosts ---
    def host(self, host_id: str) -> str:
        return f"{self.p}:host:{host_id}"

    @property
    def hosts(self) -> str:
        return f"{self.p}:hosts"

    def swept(self, host_id: str, heartbeat_at: str) -> str:
        return f"{self.p}:swept:{host_id}:{heartbeat_at}"

    # --- environments ---
    def environment(self, name: str) -> str:
        return f"{self.p}:env:{name}"

    def retired_environment(self, name: str) -> str:
        return f"{self.p}:env-retired:{name}"

    @property
    def environments(self) -> str:
        return f"{self.p}:envs"

    def environment_files(self, digest: str) -> str:
        return f"{self.p}:envfiles:{digest}"

    def preparation(self, name: str) -> str:
        return f"{self.p}:envprep:{name}"

    def preparation_lock(self, host: str, tag: str) -> str:
        return f"{self.p}:envlock:{host}:{tag}"
