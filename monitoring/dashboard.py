"""Generate the Grafana dashboard "Training health" of the rollout sandbox service.

    python monitoring/dashboard.py            write monitoring/grafana/dashboards/training-health.json
    python monitoring/dashboard.py --check    exit 1 if the committed JSON differs from what this generates
    python monitoring/dashboard.py --exprs-as-rules FILE
                                              also write every panel query, with the template
                                              variables replaced by `.*`, as a Prometheus rule
                                              file, so `promtool check rules FILE` parses them all

Built with grafana-foundation-sdk (`.venv/bin/pip install grafana-foundation-sdk`). The
question the dashboard answers, top left first: are the failures and zero rewards of this
training run the model's, or ours? Metric catalogue and a walk-through: docs/metrics.md.

Query rules, checked by lint_expr() at generation time:
- fixed range windows ([5m], [15m], [1h]), never Grafana macros such as $__rate_interval,
  so every query runs as is against Prometheus (an end-to-end test does exactly that);
- the template variables $host and $environment only inside `=~"..."` matchers, so a
  query stays valid when a variable is "All" (`.*`) or several values (`a|b`);
- no `> 0` filters on graph queries: counters start at zero for every label, so a graph
  has series even on a quiet service and an empty graph means a missing target (the
  ratio stats alone divide by `(total > 0)`, to say "no traffic" rather than NaN);
- counters exported by both jobs are summed (`sum by (...)` drops instance and job);
  gauges computed from Redis are the same on every API replica and are taken with max.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import prometheus as pm

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "grafana" / "dashboards" / "training-health.json"

UID = "sandbox-training-health"
TITLE = "Training health"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="prometheus")
VARIABLES = ("environment", "host")

# Colours that mean the same thing on every panel.
INFRA = "red"
MODEL = "blue"
OK = "green"

WIDTH = 24  # Grafana's grid

Target = cogbuilder.Builder[cogvariants.Dataquery]


# ----------------------------------------------------------------------------------------
# Query hygiene


# $name or ${name}; "$1" in a label_replace() replacement is not a variable.
VARIABLE_REF = re.compile(r"\$\{?([A-Za-z_]\w*)\}?")


def lint_expr(expr: str) -> None:
    """Refuse a query the live-Prometheus test or an "All" selection would break."""
    if "$__" in expr:
        raise ValueError(f"Grafana macro in {expr!r}: use a fixed window")
    for match in VARIABLE_REF.finditer(expr):
        name = match.group(1)
        if name not in VARIABLES:
            raise ValueError(f"unknown variable ${name} in {expr!r}")
        # The variable must sit inside the value of a regex matcher: label=~"...$name...".
        before = expr[: match.start()]
        opening = before.rfind('"')
        if opening < 2 or before[opening - 2 : opening] != "=~" or before.count('"') % 2 == 0:
            raise ValueError(f"${name} outside a =~ matcher in {expr!r}")


def substitute_all(expr: str) -> str:
    """The query as Prometheus sees it when every variable is "All"."""
    return VARIABLE_REF.sub(".*", expr)


# ----------------------------------------------------------------------------------------
# Small builders


def query(expr: str, legend: str, ref: str) -> prometheus.Dataquery:
    lint_expr(expr)
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE).range()


def refs(*queries: tuple[str, str]) -> list[Target]:
    """(expr, legend) pairs -> queries A, B, C..."""
    return [query(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


DASHED = dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})


def color(name: str) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": name})


def thresholds(base: str, *steps: tuple[float, str]) -> db.ThresholdsConfig:
    values = [dm.Threshold(value=None, color=base)] + [dm.Threshold(value=v, color=c) for v, c in steps]
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(values)


def legend_table(*calcs: str, sort_by: str | None = None) -> cb.VizLegendOptions:
    """A legend table with these calculations; sort_by (e.g. "Max") puts the busiest series first."""
    legend = (
        cb.VizLegendOptions()
        .display_mode(cm.LegendDisplayMode.TABLE)
        .placement(cm.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(list(calcs))
    )
    return legend.sort_by(sort_by).sort_desc(True) if sort_by else legend


def legend_list() -> cb.VizLegendOptions:
    return (
        cb.VizLegendOptions()
        .display_mode(cm.LegendDisplayMode.LIST)
        .placement(cm.LegendPlacement.BOTTOM)
        .show_legend(True)
    )


def tooltip() -> cb.VizTooltipOptions:
    return cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)


def ts(title: str, description: str, unit: str, *queries: tuple[str, str], stacked: bool = False,
       legend: cb.VizLegendOptions | None = None) -> timeseries.Panel:  # fmt: skip
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(refs(*queries))
        .unit(unit)
        .min(0)
        .line_width(1)
        .fill_opacity(25 if stacked else 10)
        .show_points(cm.VisibilityMode.NEVER)
        .legend(legend or legend_list())
        .tooltip(tooltip())
    )
    if stacked:
        panel = panel.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL)).draw_style(cm.GraphDrawStyle.BARS)
    return panel


def big_number(title: str, description: str, expr: str, unit: str, th: db.ThresholdsConfig,
               *, no_value: str = "no traffic", decimals: int | None = None) -> stat.Panel:  # fmt: skip
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(refs((expr, title)))
        .unit(unit)
        .thresholds(th)
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .no_value(no_value)
        .graph_mode(cm.BigValueGraphMode.AREA)
        .color_mode(cm.BigValueColorMode.VALUE)
        .text_mode(cm.BigValueTextMode.VALUE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


class Layout:
    """Places panels left to right in rows of the 24-column grid, with section headers."""

    def __init__(self, builder: db.Dashboard) -> None:
        self.builder = builder
        self.y = 0
        self.next_id = 1

    def section(self, title: str) -> None:
        row = db.Row(title).id(self.next_id).grid_pos(dm.GridPos(h=1, w=WIDTH, x=0, y=self.y))
        self.next_id += 1
        self.builder.with_row(row)
        self.y += 1

    def line(self, height: int, *panels: tuple[int, object]) -> None:
        """(width, panel builder) pairs side by side; the widths must add up to 24."""
        if sum(width for width, _ in panels) != WIDTH:
            raise ValueError("a line of panels must fill the 24 columns")
        x = 0
        for width, panel in panels:
            self._place(panel, dm.GridPos(h=height, w=width, x=x, y=self.y))
            x += width
        self.y += height

    def left_and_grid(self, height: int, left_width: int, left: object, cell_w: int, cell_h: int,
                      *cells: object) -> None:  # fmt: skip
        """One panel on the left, small panels (stats) in a grid filling the columns to its right."""
        self._place(left, dm.GridPos(h=height, w=left_width, x=0, y=self.y))
        per_row = (WIDTH - left_width) // cell_w
        if (len(cells) + per_row - 1) // per_row * cell_h > height:
            raise ValueError("the grid of small panels is taller than the panel beside it")
        for i, cell in enumerate(cells):
            x = left_width + (i % per_row) * cell_w
            y = self.y + (i // per_row) * cell_h
            self._place(cell, dm.GridPos(h=cell_h, w=cell_w, x=x, y=y))
        self.y += height

    def _place(self, panel: object, pos: dm.GridPos) -> None:
        panel.id(self.next_id).grid_pos(pos)  # type: ignore[attr-defined]
        self.next_id += 1
        self.builder.with_panel(panel)  # type: ignore[arg-type]


def variable(name: str, label: str, query_text: str, description: str) -> db.QueryVariable:
    return (
        db.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(query_text)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text="All", value="$__all"))
    )


# ----------------------------------------------------------------------------------------
# The dashboard

TOOL_CALLS = "sandbox_tool_calls_total"
SHARE = f'sum(rate({TOOL_CALLS}{{outcome="%s"}}[5m])) / (sum(rate({TOOL_CALLS}[5m])) > 0)'


def build() -> db.Dashboard:
    builder = (
        db.Dashboard(TITLE)
        .uid(UID)
        .description(
            "Rollout sandbox service during RL training: are failures and zero rewards the model's "
            "or the infrastructure's? Infra (ours) is red, the model's is blue, everywhere. "
            "Guide: docs/metrics.md#how-to-tell-model-from-infra-in-a-minute. Alerts: docs/runbook.md."
        )
        .tags(["rollout-sandbox", "training"])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .time("now-3h", "now")
        .timezone("browser")
        .refresh("30s")
        .variables(
            [
                variable(
                    "environment",
                    "Environment",
                    "label_values(sandbox_warm_pool_target, environment)",
                    "Environment of the warm-pool panels.",
                ),
                variable(
                    "host",
                    "Host",
                    "label_values(sandbox_host_up, host)",
                    "Sandbox host of the capacity panels (All also shows rollouts not yet placed).",
                ),
            ]
        )
    )
    layout = Layout(builder)

    # --- 1. The answer -------------------------------------------------------------------
    layout.section("Model or infrastructure?")
    headline = ts(
        "Tool-call errors per second: infra (ours) vs model (theirs)",
        "infra_error: we failed the call (503, the trainer retries or discards; the rollout is "
        "tainted if it had a working sandbox). model_error: the model's command or arguments "
        "failed (200 with an explanation it can learn from). A red line rising while blue stays "
        "flat is an infrastructure incident, not a training signal.",
        "reqps",
        (f'sum(rate({TOOL_CALLS}{{outcome="infra_error"}}[5m]))', "infra_error (ours)"),
        (f'sum(rate({TOOL_CALLS}{{outcome="model_error"}}[5m]))', "model_error (the model's)"),
        legend=legend_table("mean", "max", "lastNotNull"),
    )
    headline = headline.override_by_name("infra_error (ours)", [color(INFRA)]).override_by_name(
        "model_error (the model's)", [color(MODEL)]
    )
    layout.left_and_grid(
        8,
        12,
        headline,
        4,
        4,
        big_number(
            "Infra error share (5m)",
            "Share of all tool calls that were infra_error. Pages above 2 % (SandboxInfraErrorRatioHigh).",
            SHARE % "infra_error",
            "percentunit",
            thresholds(OK, (0.005, "orange"), (0.02, INFRA)),
        ),
        big_number(
            "Model error share (5m)",
            "Share of all tool calls that were the model's errors. Not an alert: it is what training improves.",
            SHARE % "model_error",
            "percentunit",
            thresholds(MODEL),
        ),
        big_number(
            "OK share (5m)",
            "Share of all tool calls answered with the command's output.",
            SHARE % "ok",
            "percentunit",
            thresholds(OK),
        ),
        big_number(
            "Rollouts tainted by infra (1h)",
            "Rollouts that lost their sandbox or hit another infra failure after having one: "
            "their grade is refused (503), so no false zero reaches training, but the sample is lost.",
            "sum(increase(sandbox_rollouts_tainted_total[1h]))",
            "short",
            thresholds(OK, (1, "orange"), (10, INFRA)),
            no_value="0",
            decimals=0,
        ),
        big_number(
            "Zero rewards caused by infra (1h)",
            "Of the rollouts that got (or would have got) reward 0 in the last hour, the share "
            "refused because infra tainted them. Near 0 on a healthy run.",
            'sum(increase(sandbox_zero_rewards_total{cause="infra"}[1h])) '
            "/ (sum(increase(sandbox_zero_rewards_total[1h])) > 0)",
            "percentunit",
            thresholds(OK, (0.01, "orange"), (0.05, INFRA)),
            no_value="no zero rewards",
        ),
        big_number(
            "Sandbox hosts up",
            "Healthy sandbox hosts (workers with a Docker engine). 0 pages (SandboxNoHostUp).",
            "max(sandbox_hosts_up)",
            "short",
            thresholds(INFRA, (1, OK)),
            no_value="store down?",
            decimals=0,
        ),
    )
    layout.line(
        9,
        (
            12,
            ts(
                "Infra errors by reason (ours)",
                "Tool calls answered 503, by reason: provision_failed, engine_unavailable, "
                "sandbox_lost, queue_timeout, worker_lost, store_unavailable, internal. "
                "docs/runbook.md maps each to its first checks.",
                "reqps",
                (f'sum by (reason) (rate({TOOL_CALLS}{{outcome="infra_error"}}[5m]))', "{{reason}}"),
                stacked=True,
                legend=legend_table("mean", "max", sort_by="Max"),
            ),
        ),
        (
            12,
            ts(
                "Model errors by reason (the model's)",
                "Tool calls the model got wrong (answered 200 with an explanation), by reason. "
                "A shift here is a change in the policy, not in the service.",
                "reqps",
                (f'sum by (reason) (rate({TOOL_CALLS}{{outcome="model_error"}}[5m]))', "{{reason}}"),
                stacked=True,
                legend=legend_table("mean", "max", sort_by="Max"),
            ),
        ),
    )

    # --- 2. Rollouts and rewards ---------------------------------------------------------
    layout.section("Rollouts and rewards")
    layout.line(
        8,
        (
            8,
            ts(
                "Rollouts lost to infra (per 5 min)",
                "Rollouts tainted by an infra failure, by reason, and rollouts that ended as lost "
                "(container gone). Pages when above 5 % of ended rollouts (SandboxRolloutsLostToInfra).",
                "short",
                ("sum by (reason) (increase(sandbox_rollouts_tainted_total[5m]))", "tainted: {{reason}}"),
                ('sum(increase(sandbox_rollouts_ended_total{how="lost"}[5m]))', "ended as lost"),
                legend=legend_table("max", sort_by="Max"),
            ).override_by_name("ended as lost", [color(INFRA)]),
        ),
        (
            8,
            ts(
                "Rollouts ended, by how (per 5 min)",
                "graded: scored; released: the trainer let it go; expired: reaped idle or too old; "
                "lost: its container vanished. Summed over the API and the worker.",
                "short",
                ("sum by (how) (increase(sandbox_rollouts_ended_total[5m]))", "{{how}}"),
                stacked=True,
            ).override_by_name("lost", [color(INFRA)]),
        ),
        (
            8,
            ts(
                "Zero rewards by cause (per 5 min)",
                "model: scored 0 by the grader (a real training signal). infra: the grade was refused "
                "because the rollout was tainted, a false zero that was kept out of training.",
                "short",
                ("sum by (cause) (increase(sandbox_zero_rewards_total[5m]))", "{{cause}}"),
                stacked=True,
            )
            .override_by_name("infra", [color(INFRA)])
            .override_by_name("model", [color(MODEL)]),
        ),
    )
    reward_buckets: list[Target] = [
        query("sum by (le) (increase(sandbox_reward_bucket[5m]))", "{{le}}", "A").format(pm.PromQueryFormat.HEATMAP)
    ]
    reward_heatmap = (
        heatmap.Panel()
        .title("Reward distribution (rollouts per bucket, 5 min)")
        .description(
            "Scores given, by bucket (0 is exactly zero, then steps of 0.1). Mass moving up over "
            "the run is learning; mass collapsing to 0 with red above is infrastructure."
        )
        .datasource(DATASOURCE)
        .targets(reward_buckets)
        .calculate(False)
        .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("Oranges").steps(64))
        .rows_frame(heatmap.RowsHeatmapOptions().layout(cm.HeatmapCellLayout.LE))
        .y_axis(heatmap.YAxisConfig().unit("short").decimals(1))
        .cell_values(heatmap.CellValues().unit("short").decimals(0))
        .show_tooltip()
        .show_legend()
    )
    layout.line(
        8,
        (8, reward_heatmap),
        (
            8,
            ts(
                "Mean reward by grader (5 min)",
                "Mean score of the rollouts graded in the window, by grader.",
                "none",
                (
                    "sum by (grader) (rate(sandbox_reward_sum[5m])) / sum by (grader) (rate(sandbox_reward_count[5m]))",
                    "{{grader}}",
                ),
            ).max(1),
        ),
        (
            8,
            ts(
                "Grade requests by result (per 5 min)",
                "scored; discarded_infra: refused because the rollout was tainted (503); invalid: "
                "a bad request (unknown grader, missing reference).",
                "short",
                ("sum by (result) (increase(sandbox_grades_total[5m]))", "{{result}}"),
                stacked=True,
            ).override_by_name("discarded_infra", [color(INFRA)]),
        ),
    )
    layout.line(
        8,
        (
            12,
            ts(
                "Tool calls per rollout (p50 / p90, 15 min)",
                "Distribution of tool calls per ended rollout. If lost rollouts have many more calls "
                "than the rest, long trajectories are the ones infra takes away: a bias in the data.",
                "short",
                ("histogram_quantile(0.5, sum by (le) (rate(sandbox_rollout_tool_calls_bucket[15m])))", "p50"),
                ("histogram_quantile(0.9, sum by (le) (rate(sandbox_rollout_tool_calls_bucket[15m])))", "p90"),
                (
                    'histogram_quantile(0.5, sum by (le) (rate(sandbox_rollout_tool_calls_bucket{how="lost"}[15m])))',
                    "p50 of lost rollouts",
                ),
                (
                    "histogram_quantile(0.5, sum by (grader, le) "
                    "(rate(sandbox_graded_rollout_tool_calls_bucket[15m])))",
                    "p50 of graded rollouts ({{grader}})",
                ),
            ).override_by_name("p50 of lost rollouts", [color(INFRA)]),
        ),
        (
            12,
            ts(
                "Rollout duration (p50 / p90, 15 min)",
                "Time from a rollout's first call to its end, by how it ended.",
                "s",
                (
                    "histogram_quantile(0.5, sum by (how, le) (rate(sandbox_rollout_duration_seconds_bucket[15m])))",
                    "p50 {{how}}",
                ),
                (
                    "histogram_quantile(0.9, sum by (how, le) (rate(sandbox_rollout_duration_seconds_bucket[15m])))",
                    "p90 {{how}}",
                ),
            ),
        ),
    )

    layout.line(
        8,
        (
            12,
            ts(
                "Grading test runs (p50 / p95, 15 min)",
                "The tests grader: time from queueing a test run on the rollout's host to the guest's "
                "answer (restore, hidden files, the suite, results). Grows with the suites and with "
                "the queue at the end of a training step.",
                "s",
                ("histogram_quantile(0.5, sum by (le) (rate(sandbox_test_run_duration_seconds_bucket[15m])))", "p50"),
                ("histogram_quantile(0.95, sum by (le) (rate(sandbox_test_run_duration_seconds_bucket[15m])))", "p95"),
            ),
        ),
        (
            12,
            ts(
                "Tests grader: answers by result (per 5 min)",
                "scored; replayed: a second request got the stored answer; infra_error: our failure "
                "while the tests ran (5xx, the rollout is tainted); discarded_infra: refused, tainted "
                "before; invalid: a bad item.",
                "short",
                ('sum by (result) (increase(sandbox_grades_total{grader=~"tests|multi"}[5m]))', "{{result}}"),
                stacked=True,
            )
            .override_by_name("infra_error", [color(INFRA)])
            .override_by_name("discarded_infra", [color(INFRA)]),
        ),
    )

    # --- 3. Latency and provisioning -----------------------------------------------------
    layout.section("Latency and provisioning")
    layout.line(
        8,
        (
            8,
            ts(
                "Tool-call latency by tool (p50 / p99, 5 min)",
                "HTTP in to answer out. shell includes the model's own command time; read_file is "
                "the clean infrastructure signal (SandboxToolLatencyHigh watches its p99).",
                "s",
                (
                    "histogram_quantile(0.5, sum by (tool, le) (rate(sandbox_tool_call_duration_seconds_bucket[5m])))",
                    "p50 {{tool}}",
                ),
                (
                    "histogram_quantile(0.99, sum by (tool, le) (rate(sandbox_tool_call_duration_seconds_bucket[5m])))",
                    "p99 {{tool}}",
                ),
            ),
        ),
        (
            8,
            ts(
                "Provisioning latency: warm vs cold (p50 / p99, 5 min)",
                "Time to hand a rollout a ready container: from the warm pool (already started) or "
                "a cold start (create, start, guest ready).",
                "s",
                (
                    "histogram_quantile(0.5, sum by (source, le) "
                    "(rate(sandbox_provision_duration_seconds_bucket[5m])))",
                    "p50 {{source}}",
                ),
                (
                    "histogram_quantile(0.99, sum by (source, le) "
                    "(rate(sandbox_provision_duration_seconds_bucket[5m])))",
                    "p99 {{source}}",
                ),
            ),
        ),
        (
            8,
            ts(
                "Provisioning backlog",
                "Rollouts waiting for a container. A backlog that does not drain while no provision "
                "succeeds pages (SandboxProvisioningBacklogStuck).",
                "short",
                ("max(sandbox_provisioning_backlog)", "waiting for a container"),
            ),
        ),
    )
    layout.line(
        8,
        (
            8,
            ts(
                "Provisions by source and result (per second)",
                "Containers handed out per second: warm or cold, ok or failed.",
                "reqps",
                ("sum by (source, result) (rate(sandbox_provisions_total[5m]))", "{{source}} {{result}}"),
                stacked=True,
            ),
        ),
        (
            8,
            ts(
                "Queue depth",
                "Messages waiting per queue: the shared provisioning and maintenance queues, "
                "and the task and tool-call queues of each selected host (first calls of rollouts apart).",
                "short",
                (
                    'max by (queue) (sandbox_queue_depth{queue!~".*[.]host[.].*"}) '
                    'or max by (queue) (sandbox_queue_depth{queue=~".*[.]host[.]($host)([.](first-calls|calls))?"})',
                    "{{queue}}",
                ),
            ),
        ),
        (
            8,
            ts(
                "Environment preparations (per 5 min)",
                "Derived images built per host, by result. A failure makes that environment "
                "unusable on that host (SandboxEnvironmentPreparationFailed).",
                "short",
                ("sum by (result) (increase(sandbox_environment_preparations_total[5m]))", "{{result}}"),
                stacked=True,
            ).override_by_name("failed", [color(INFRA)]),
        ),
    )

    # --- 4. Hosts and capacity -----------------------------------------------------------
    layout.section("Hosts and capacity ($host, $environment)")
    layout.line(
        8,
        (
            8,
            ts(
                "Live sandboxes per host",
                "Rollouts holding (ready) or awaiting (provisioning) a container, by host; "
                "'unplaced' is provisioning not yet assigned to a host.",
                "short",
                ('max by (host, state) (sandbox_live_sandboxes{host=~"$host"})', "{{host}} {{state}}"),
                stacked=True,
            ),
        ),
        (
            8,
            ts(
                "Warm pool per host: available vs target",
                "Ready pre-started containers against the configured pool size (target 0 = no pool). "
                "Available at 0 under a target > 0 for 10 min warns (SandboxWarmPoolExhausted).",
                "short",
                (
                    "max by (environment, host) "
                    '(sandbox_warm_pool_available{environment=~"$environment", host=~"$host"})',
                    "available {{environment}} @ {{host}}",
                ),
                (
                    'max by (environment, host) (sandbox_warm_pool_target{environment=~"$environment", host=~"$host"})',
                    "target {{environment}} @ {{host}}",
                ),
            ).override_by_regexp("^target .*", [DASHED]),
        ),
        (
            8,
            statetimeline.Panel()
            .title("Up: hosts, scrape targets, state store")
            .description(
                "Each sandbox host's health, whether Prometheus reaches the API and the worker, and "
                "whether the API could read Redis at its last scrape."
            )
            .datasource(DATASOURCE)
            .targets(
                refs(
                    ('max by (host) (sandbox_host_up{host=~"$host"})', "host {{host}}"),
                    ('up{job=~"sandbox-api|sandbox-worker"}', "{{job}} {{instance}}"),
                    ("min(sandbox_store_up)", "state store (Redis)"),
                )
            )
            .mappings(
                [
                    dm.ValueMap(
                        options={
                            "0": dm.ValueMappingResult(text="down", color=INFRA, index=0),
                            "1": dm.ValueMappingResult(text="up", color=OK, index=1),
                        },
                    )
                ]
            )
            .thresholds(thresholds(INFRA, (1, OK)))
            .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
            .show_value(cm.VisibilityMode.NEVER)
            .legend(legend_list()),
        ),
    )
    layout.line(
        7,
        (
            12,
            ts(
                "Guest fallbacks and reconciler actions (per 5 min)",
                "guest fallbacks: calls served by docker exec because the container's guest executor "
                "was unreachable. orphan_removed: containers without a live record; record_lost: "
                "records whose container vanished (those rollouts are lost); fork_image_removed: a "
                "fork's committed image removed once no container uses it (housekeeping, not a fault).",
                "short",
                ("sum(increase(sandbox_guest_fallbacks_total[5m]))", "guest fallbacks"),
                ("sum by (action) (increase(sandbox_reconciler_actions_total[5m]))", "reconciler: {{action}}"),
            ).override_by_name("reconciler: record_lost", [color(INFRA)]),
        ),
        (
            12,
            ts(
                "Tool calls by outcome (per second)",
                "All answered tool calls by tool and outcome: the traffic behind the shares above.",
                "reqps",
                (f"sum by (tool, outcome) (rate({TOOL_CALLS}[5m]))", "{{tool}} {{outcome}}"),
                stacked=True,
            )
            .override_by_regexp(".* infra_error$", [color(INFRA)])
            .override_by_regexp(".* model_error$", [color(MODEL)]),
        ),
    )

    # --- 5. Forks ------------------------------------------------------------------------
    # Last, so that adding it moved no panel above (their ids and links stay the same).
    layout.section("Forks")
    layout.line(
        8,
        (
            8,
            ts(
                "Forks by result (per second)",
                "Fork requests answered (POST /v1/rollouts/{id}/fork), by result. ok (green): all "
                "children ready. failed (red, ours): an infrastructure failure while forking (503; "
                "nothing half-created is left). refused (blue): no fork was attempted because the "
                "parent cannot be forked (ended, lost, tainted or not ready: 409; its host full or "
                "down: 503) or the request is invalid (400).",
                "reqps",
                ("sum by (result) (rate(sandbox_forks_total[5m]))", "{{result}}"),
                stacked=True,
            )
            .override_by_name("failed", [color(INFRA)])
            .override_by_name("refused", [color(MODEL)])
            .override_by_name("ok", [color(OK)]),
        ),
        (
            8,
            ts(
                "Fork latency (p50 / p95, 15 min)",
                "Time from a fork request to all its children ready, successful forks only "
                "(a failed or refused fork is not observed).",
                "s",
                ("histogram_quantile(0.5, sum by (le) (rate(sandbox_fork_duration_seconds_bucket[15m])))", "p50"),
                ("histogram_quantile(0.95, sum by (le) (rate(sandbox_fork_duration_seconds_bucket[15m])))", "p95"),
            ),
        ),
        (
            8,
            ts(
                "Fork children created and fork images removed (per 5 min)",
                "Child rollouts created by forks, and forks' committed images the reconciler removed "
                "once no container used them. Over a run, images removed should follow successful "
                "forks (later, as their children end); a gap that keeps growing is images piling up "
                "on the hosts.",
                "short",
                ("sum(increase(sandbox_fork_children_total[5m]))", "children created"),
                ('sum(increase(sandbox_forks_total{result="ok"}[5m]))', "successful forks"),
                (
                    'sum(increase(sandbox_reconciler_actions_total{action="fork_image_removed"}[5m]))',
                    "fork images removed",
                ),
            ).override_by_name("fork images removed", [DASHED]),
        ),
    )
    return builder


# ----------------------------------------------------------------------------------------
# Output


def render() -> str:
    """The dashboard JSON, deterministic: sorted keys, fixed ids and positions, no timestamps."""
    model = build().build()
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def exprs(rendered: str) -> list[tuple[str, str]]:
    """(panel title, expr) of every query, in panel order."""
    found = []

    def walk(panels: list[dict]) -> None:  # type: ignore[type-arg]
        for panel in panels:
            for target in panel.get("targets", []):
                if "expr" in target:
                    found.append((panel.get("title", ""), target["expr"]))
            walk(panel.get("panels", []))

    walk(json.loads(rendered)["panels"])
    return found


def exprs_as_rules(rendered: str) -> str:
    """Every query as a recording rule (variables as "All"), for `promtool check rules`."""
    rules = [
        {"record": f"dashboard_query:{i:03d}", "expr": substitute_all(expr)}
        for i, (_, expr) in enumerate(exprs(rendered))
    ]
    return json.dumps({"groups": [{"name": "dashboard-queries", "rules": rules}]}, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is not up to date")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="dashboard JSON path (default: %(default)s)")
    parser.add_argument("--exprs-as-rules", type=Path, metavar="FILE",
                        help="also write every panel query as a rule file for promtool")  # fmt: skip
    args = parser.parse_args(argv)

    rendered = render()
    if args.exprs_as_rules:
        args.exprs_as_rules.write_text(exprs_as_rules(rendered))
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != rendered:
            diff = difflib.unified_diff(
                current.splitlines(), rendered.splitlines(), str(args.output), "generated", lineterm="", n=1
            )
            sys.stdout.writelines(line + "\n" for _, line in zip(range(40), diff, strict=False))
            print(f"{args.output} is out of date: run `.venv/bin/python monitoring/dashboard.py`", file=sys.stderr)
            return 1
        print(f"{args.output.name} is up to date ({len(exprs(rendered))} queries)")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(rendered)
    print(f"wrote {args.output} ({len(exprs(rendered))} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
