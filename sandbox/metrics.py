"""Prometheus metrics. Names: `sandbox_` prefix, base units, counters end in `_total`.

Label values come from closed lists (outcomes.py, CALL_KINDS and the tuples below) and every
known combination starts at zero, so a rate() is defined before the first failure. Never a
rollout id, path or digest as a label. docs/metrics.md is the catalogue.

Counting across processes: the API may run several uvicorn workers; then prometheus-client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `sandbox api --workers N`) merges their
counters at scrape time. The Celery worker is one process (threads pool), so its registry is
whole. State gauges are not counted at all: `StateCollector` reads them from Redis at scrape
time, so a crashed process can never leave them wrong.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from . import __version__
from .domain.hosts import STATUSES, HostView
from .domain.outcomes import CALL_KINDS, OUTCOME_REASONS, InfraReason

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
CALL_COUNT_BUCKETS = (0, 1, 2, 4, 6, 8, 10, 15, 20, 30, 50, 100, 200)
ROLLOUT_SECONDS_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)

PROVISION_SOURCES = ("warm", "cold")
PROVISION_RESULTS = ("ok", "failed")
END_HOWS = ("graded", "released", "expired", "lost")
RECONCILER_KINDS = ("orphan_removed", "record_lost", "fork_image_removed")
FORK_RESULTS = ("ok", "failed", "refused")
# "multi": a list of graders (each also counted under its own name); "tests": hidden tests run.
GRADERS = ("file_f1", "numeric", "custom", "tests", "multi")
# infra_error: an infrastructure failure while grading (the rollout is tainted, answered 5xx);
# replayed: a rollout graded again got its stored answer (tests do not run twice).
GRADE_RESULTS = ("scored", "discarded_infra", "invalid", "infra_error", "replayed")
ZERO_CAUSES = ("model", "infra")
INFRA_REASONS = tuple(r.value for r in InfraReason)

# --- tool calls (API) ---
TOOL_CALLS = Counter(
    "sandbox_tool_calls_total", "Tool calls answered, by how they ended.", ["tool", "outcome", "reason"]
)
TOOL_CALL_DURATION = Histogram(
    "sandbox_tool_call_duration_seconds", "Time from request in to answer out.", ["tool"], buckets=LATENCY_BUCKETS
)
# --- the trainer API's file transfers (API); direction: upload | download; via: direct (the
# worker's data port) | store (Redis, where no data port is in reach) ---
TRANSFER_DIRECTIONS = ("upload", "download")
TRANSFER_VIAS = ("direct", "store")
TRANSFER_BYTES = Counter(
    "sandbox_transfer_bytes_total", "Bytes moved into or out of sandboxes by the trainer API's files routes.",
    ["direction", "via"],
)  # fmt: skip
# --- provisioning and hosts (worker) ---
PROVISIONS = Counter("sandbox_provisions_total", "Sandboxes provisioned, by source and result.", ["source", "result"])
PROVISION_DURATION = Histogram(
    "sandbox_provision_duration_seconds", "Time until a rollout's container answers.", ["source", "result"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
RECONCILER_ACTIONS = Counter("sandbox_reconciler_actions_total", "What the reconciler fixed.", ["action"])
GUEST_FALLBACKS = Counter(
    "sandbox_guest_fallbacks_total", "Calls served by docker exec because the container's guest was unreachable."
)
ENV_PREPARATIONS = Counter(
    "sandbox_environment_preparations_total", "Environment images prepared on a host, by result.", ["result"]
)
ENV_PREPARATION_DURATION = Histogram(
    "sandbox_environment_preparation_duration_seconds", "Time to build an environment's derived image.",
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900),
)  # fmt: skip
# --- rollouts ending (API and worker) ---
ROLLOUTS_ENDED = Counter("sandbox_rollouts_ended_total", "Rollouts that ended, by how.", ["how"])
ROLLOUTS_TAINTED = Counter(
    "sandbox_rollouts_tainted_total", "Rollouts marked infra-tainted, by the infra reason.", ["reason"]
)
ROLLOUT_TOOL_CALLS = Histogram(
    "sandbox_rollout_tool_calls", "Tool calls of a rollout, observed when it ends.", ["how"], buckets=CALL_COUNT_BUCKETS
)
ROLLOUT_DURATION = Histogram(
    "sandbox_rollout_duration_seconds", "Life of a rollout, observed when it ends.", ["how"],
    buckets=ROLLOUT_SECONDS_BUCKETS,
)  # fmt: skip
# --- forks (API) ---
# result: ok (every child ready) | failed (infra, 503; nothing left behind) | refused (400, 409, host full or down)
FORKS = Counter("sandbox_forks_total", "Fork requests answered, by result.", ["result"])
FORK_DURATION = Histogram(
    "sandbox_fork_duration_seconds", "Time from a fork request to all its children ready (successful forks).",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)  # fmt: skip
FORK_CHILDREN = Counter("sandbox_fork_children_total", "Child rollouts created by forks.")
# --- grading (API) ---
GRADES = Counter("sandbox_grades_total", "Grade requests answered, by grader and result.", ["grader", "result"])
REWARD = Histogram(
    "sandbox_reward",
    "Scores given, by grader.",
    ["grader"],
    buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
# cause: model (scored 0) | infra (refused: a tainted rollout that would have been a false 0)
ZERO_REWARDS = Counter(
    "sandbox_zero_rewards_total", "Rollouts that got (or would have got) reward 0, by cause.", ["cause"]
)
TEST_RUN_DURATION = Histogram(
    "sandbox_test_run_duration_seconds",
    "Grading test runs in the rollout's sandbox, from queueing to the guest's answer.",
    buckets=LATENCY_BUCKETS,
)
GRADED_TOOL_CALLS = Histogram(
    "sandbox_graded_rollout_tool_calls", "Tool calls of each graded rollout.", ["grader"], buckets=CALL_COUNT_BUCKETS
)
# --- the archive of ended rollouts (store/archive.py) ---
ARCHIVE_WRITES = Counter(
    "sandbox_archive_writes_total", "Ended rollouts written to the archive, by result.", ["result"]
)
ARCHIVE_BYTES = Counter("sandbox_archive_bytes_total", "Compressed bytes written to the archive.")
# --- E2B compatibility (api/e2b/) ---
E2B_EVENTS = ("created", "killed", "timed_out")
E2B_SANDBOXES = Counter("sandbox_e2b_sandboxes_total", "E2B-compatible sandboxes, by event.", ["event"])
# result: ok | client_error (4xx: the request's or the command's problem) | infra_error (5xx);
# the calls themselves are also in sandbox_tool_calls_total, classified as every call.
E2B_RESULTS = ("ok", "client_error", "infra_error")
E2B_REQUESTS = Counter(
    "sandbox_e2b_requests_total", "Requests to the E2B-compatible API, by plane and result.", ["plane", "result"]
)


def init_metrics() -> None:
    """Create every labelled series at zero."""
    for result in ("ok", "failed"):
        ARCHIVE_WRITES.labels(result)
    for event in E2B_EVENTS:
        E2B_SANDBOXES.labels(event)
    for plane in ("control", "envd"):
        for result in E2B_RESULTS:
            E2B_REQUESTS.labels(plane, result)
    for direction in TRANSFER_DIRECTIONS:
        for via in TRANSFER_VIAS:
            TRANSFER_BYTES.labels(direction, via)
    for tool in CALL_KINDS:
        TOOL_CALL_DURATION.labels(tool)
        for outcome, reason in OUTCOME_REASONS:
            TOOL_CALLS.labels(tool, outcome, reason)
    for source in PROVISION_SOURCES:
        for result in PROVISION_RESULTS:
            PROVISIONS.labels(source, result)
            PROVISION_DURATION.labels(source, result)
    for how in END_HOWS:
        ROLLOUTS_ENDED.labels(how)
        ROLLOUT_TOOL_CALLS.labels(how)
        ROLLOUT_DURATION.labels(how)
    for reason in INFRA_REASONS:
        ROLLOUTS_TAINTED.labels(reason)
    for action in RECONCILER_KINDS:
        RECONCILER_ACTIONS.labels(action)
    for result in ("ready", "failed"):
        ENV_PREPARATIONS.labels(result)
    for grader in GRADERS:
        REWARD.labels(grader)
        GRADED_TOOL_CALLS.labels(grader)
        for result in GRADE_RESULTS:
            GRADES.labels(grader, result)
    for cause in ZERO_CAUSES:
        ZERO_REWARDS.labels(cause)
    for result in FORK_RESULTS:
        FORKS.labels(result)


def observe_rollout_end(how: str, tool_calls: int, duration_s: float) -> None:
    ROLLOUTS_ENDED.labels(how).inc()
    ROLLOUT_TOOL_CALLS.labels(how).observe(tool_calls)
    ROLLOUT_DURATION.labels(how).observe(max(duration_s, 0.0))


class StateCollector(Collector):
    """Gauges read from Redis at scrape time: live sandboxes, backlog, queues, hosts, pools.

    `state` returns a snapshot dict (see sandbox/api/state.py); when it raises, the scrape
    still answers, with `sandbox_store_up 0`.
    """

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self._state = state

    def collect(self) -> Iterable[GaugeMetricFamily]:
        info = GaugeMetricFamily("sandbox_build_info", "Version of the service (always 1).", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        up = GaugeMetricFamily("sandbox_store_up", "1 when the state store answered this scrape.")
        try:
            snap = self._state()
        except Exception:  # Redis down must not break the scrape; it is what this gauge says
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        live = GaugeMetricFamily(
            "sandbox_live_sandboxes", "Rollouts holding or awaiting a container.", labels=["state", "host"]
        )
        for (state, host), n in sorted(snap["live"].items()):
            live.add_metric([state, host], n)
        yield live
        backlog = GaugeMetricFamily("sandbox_provisioning_backlog", "Rollouts waiting for their container.")
        backlog.add_metric([], snap["backlog"])
        yield backlog
        queues = GaugeMetricFamily("sandbox_queue_depth", "Messages waiting in each Celery queue.", labels=["queue"])
        for queue, n in sorted(snap["queues"].items()):
            queues.add_metric([queue], n)
        yield queues
        yield from _host_gauges(snap["hosts"])
        available = GaugeMetricFamily(
            "sandbox_warm_pool_available", "Pre-started containers ready to be claimed.", labels=["environment", "host"]
        )
        target = GaugeMetricFamily(
            "sandbox_warm_pool_target", "Configured warm pool size (0: no pool).", labels=["environment", "host"]
        )
        for (env, host), (n_available, n_target) in sorted(snap["pools"].items()):
            available.add_metric([env, host], n_available)
            target.add_metric([env, host], n_target)
        yield available
        yield target


def _host_gauges(views: dict[str, HostView]) -> Iterable[GaugeMetricFamily]:
    host_up = GaugeMetricFamily(
        "sandbox_host_up", "1 when the host's worker beats and its engine answers.", labels=["host"]
    )
    status = GaugeMetricFamily(
        "sandbox_host_status",
        "1 for the host's current status (up, full, quarantined, down), 0 for the others.",
        labels=["host", "status"],
    )
    containers = GaugeMetricFamily(
        "sandbox_host_containers", "Containers on the host (rollouts and warm pool).", labels=["host"]
    )
    capacity = GaugeMetricFamily(
        "sandbox_host_capacity", "Containers the host takes before it is full (0: no cap).", labels=["host"]
    )
    for host, view in sorted(views.items()):
        host_up.add_metric([host], 1 if view.serves else 0)
        current = view.status
        for name in STATUSES:
            status.add_metric([host, name], 1 if name == current else 0)
        containers.add_metric([host], view.containers)
        capacity.add_metric([host], view.capacity)
    hosts_up = GaugeMetricFamily("sandbox_hosts_up", "Sandbox hosts up (serving their rollouts).")
    hosts_up.add_metric([], sum(1 for view in views.values() if view.serves))
    yield from (host_up, hosts_up, status, containers, capacity)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(state_collector: Collector) -> bytes:
    """The text a /metrics scrape returns, correct with one API process or several."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(state_collector)
        return generate_latest(registry)
    return generate_latest(REGISTRY) + generate_latest(_single(state_collector))


_state_registries: dict[int, CollectorRegistry] = {}


def _single(collector: Collector) -> CollectorRegistry:
    registry = _state_registries.get(id(collector))
    if registry is None:
        registry = CollectorRegistry()
        registry.register(collector)
        _state_registries[id(collector)] = registry
    return registry
