"""Prometheus metrics. Names: `sandbox_` prefix, base units, counters end in `_total`.

Label values come from closed lists (outcomes.py, TOOLS, provisioning results) and every
known combination starts at zero, so a rate() is defined before the first failure.
Never a rollout id, path or digest as a label.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from . import __version__
from .outcomes import OUTCOME_REASONS, TOOLS

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# tool: TOOLS; outcome/reason: OUTCOME_REASONS
TOOL_CALLS = Counter(
    "sandbox_tool_calls_total", "Tool calls answered, by how they ended.", ["tool", "outcome", "reason"]
)
# tool: TOOLS
TOOL_CALL_DURATION = Histogram(
    "sandbox_tool_call_duration_seconds", "Time from request in to answer out.", ["tool"], buckets=LATENCY_BUCKETS
)
# result: ok | failed
PROVISIONS = Counter("sandbox_provisions_total", "Sandbox containers provisioned, by result.", ["result"])
PROVISION_DURATION = Histogram(
    "sandbox_provision_duration_seconds",
    "Time to create a container until its guest answers.",
    ["result"],
    buckets=LATENCY_BUCKETS,
)
# how: graded | released | expired | lost
ROLLOUTS_ENDED = Counter("sandbox_rollouts_ended_total", "Rollouts that ended, by how.", ["how"])
# action: orphan_removed | record_lost
RECONCILER_ACTIONS = Counter("sandbox_reconciler_actions_total", "What the reconciler fixed.", ["action"])
GUEST_FALLBACKS = Counter(
    "sandbox_guest_fallbacks_total", "Calls served by docker exec because the container's guest was unreachable."
)
BUILD_INFO = Info("sandbox_build", "Version of the service.")
# result: ready | failed
ENV_PREPARATIONS = Counter(
    "sandbox_environment_preparations_total", "Environment images prepared on a host, by result.", ["result"]
)
ENV_PREPARATION_DURATION = Histogram(
    "sandbox_environment_preparation_duration_seconds", "Time to build an environment's derived image.",
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900),
)  # fmt: skip
# grader: GRADERS; result: scored | discarded_infra | invalid
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
GRADED_TOOL_CALLS = Histogram(
    "sandbox_graded_rollout_tool_calls", "Tool calls of each graded rollout.", ["grader"],
    buckets=(0, 1, 2, 4, 6, 8, 10, 15, 20, 30, 50, 100),
)  # fmt: skip

PROVISION_RESULTS = ("ok", "failed")
GRADERS = ("file_f1", "numeric", "custom")
GRADE_RESULTS = ("scored", "discarded_infra", "invalid")
ZERO_CAUSES = ("model", "infra")
END_HOWS = ("graded", "released", "expired", "lost")
RECONCILER_KINDS = ("orphan_removed", "record_lost")


def init_metrics() -> None:
    """Create every labelled series at zero."""
    BUILD_INFO.info({"version": __version__})
    for tool in TOOLS:
        TOOL_CALL_DURATION.labels(tool)
        for outcome, reason in OUTCOME_REASONS:
            TOOL_CALLS.labels(tool, outcome, reason)
    for result in PROVISION_RESULTS:
        PROVISIONS.labels(result)
        PROVISION_DURATION.labels(result)
    for how in END_HOWS:
        ROLLOUTS_ENDED.labels(how)
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


class LiveSandboxesCollector(Collector):
    """Live sandboxes by state and host, read from Redis at scrape time.

    Computed, not counted, so a crashed process can never leave the gauge wrong.
    """

    def __init__(self, store_factory) -> None:  # type: ignore[no-untyped-def]
        self._store_factory = store_factory

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "sandbox_live_sandboxes", "Rollouts holding or awaiting a container.", labels=["state", "host"]
        )
        up = GaugeMetricFamily("sandbox_store_up", "1 when the state store answered this scrape.")
        try:
            records = self._store_factory().live_rollouts()
        except Exception:  # a scrape must not fail because Redis is down; say so instead
            up.add_metric([], 0)
            yield up
            return
        counts: dict[tuple[str, str], int] = {}
        for rec in records:
            key = (rec.state, rec.host or "unplaced")
            counts[key] = counts.get(key, 0) + 1
        for state in ("provisioning", "ready"):
            counts.setdefault((state, "unplaced" if state == "provisioning" else ""), 0)
        for (state, host), n in sorted(counts.items()):
            if host:
                gauge.add_metric([state, host], n)
        up.add_metric([], 1)
        yield gauge
        yield up
