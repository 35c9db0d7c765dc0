"""The report of the burst benchmark's loaded phases (burst_loaded.py): the targets of what users
see, judged PASS / FAIL / NOT MEASURED, and the tables of the "N live rollouts, httpx" subsection.
"""

from __future__ import annotations

from typing import Any

from tools.burst_cpu import GROUPS

VERDICT = {None: "NOT MEASURED", True: "PASS", False: "FAIL"}
TARGET_LIVE = 500  # the live rollouts the targets are stated for
Table = tuple[str, list[str], list[list[str]]]
CPU_COLUMNS = ["api", "worker", "containers", "dockerd", "containerd", "redis", "load_generator", "other"]
IDLE_COLUMNS = ["api", "worker", "guests", "shim", "docker_init", "dockerd", "containerd", "redis", "other"]


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, int | float) else str(v)


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _errors(phase: dict[str, Any]) -> int:
    return sum(phase.get("errors_by_outcome", {}).values())


# The service's own idle cost as issue 17 defines it: its processes and the engine work their
# polling causes (dockerd, containerd); the engine's own cost per container (shims, docker's
# init) and the kernel's are reported beside it, not in it.
OWN_IDLE_GROUPS = ("api", "worker", "guests", "dockerd", "containerd", "redis")
ENGINE_PER_CONTAINER_GROUPS = ("shim", "docker_init")


def idle_cost(loaded: dict[str, Any], groups: tuple[str, ...] = OWN_IDLE_GROUPS) -> float | None:
    """% of one core the live idle sandboxes add, summed over `groups`."""
    empty = _get(loaded, "idle_empty", "by_group_pct_of_one_core")
    live = _get(loaded, "idle_live", "by_group_pct_of_one_core")
    if empty is None or live is None:
        return None
    return round(sum(live.get(g, 0.0) - empty.get(g, 0.0) for g in groups), 2)


def loaded_targets(r: dict[str, Any]) -> list[dict[str, str]]:
    """Targets of the loaded phases, and of the bursts as stated beside them (1.1x, 3 s)."""
    ld: dict[str, Any] = r.get("loaded") or {}
    live = ld.get("live")
    at = "" if live == TARGET_LIVE else f" (measured with {live} live; the target is for {TARGET_LIVE})"
    rows: list[tuple[str, str, bool | None]] = []
    broke = f"could not run: {ld.get('error')}" if ld.get("error") else "not run"

    sus, raw = ld.get("sustained_httpx") or {}, _get(ld, "raw_docker_exec", "concurrent", "execs_per_s")
    target = f"{TARGET_LIVE} live, httpx, 32 clients `{ld.get('command')}`: >= 150 calls/s and >= 6x raw docker exec"
    if "calls_per_s" not in sus:
        rows.append((target, sus.get("error", broke), False if ld else None))
    else:
        cps, ratio = sus["calls_per_s"], sus["calls_per_s"] / raw if raw else None
        text = f"{sus['clients']} clients: {cps} calls/s"
        text += f" = {ratio:.1f}x raw docker exec ({raw}/s)" if ratio else ", no exec baseline"
        ok = cps >= 150 and (ratio is None or ratio >= 6) and not _errors(sus)
        rows.append((target, text + f", {_errors(sus)} errors{at}", None if ratio is None and ok else ok))

    single = ld.get("single_httpx") or {}
    target = f"{TARGET_LIVE} live, httpx, single echo: p50 <= 8 ms"
    if "latency_ms" not in single:
        rows.append((target, single.get("error", broke), False if ld else None))
    else:
        p50 = single["latency_ms"].get("p50")
        ok = p50 is not None and p50 <= 8 and not _errors(single)
        rows.append((target, f"p50 {_f(p50)} ms, {_errors(single)} errors{at}", ok))

    per_call = _get(sus, "cpu", "service_cpu_ms_per_call")
    target = "service CPU per call (machine - load generator) <= 5 ms"
    if per_call is None:
        rows.append((target, "not measured", False if ld else None))
    else:
        own = _get(sus, "cpu", "service_processes_cpu_ms_per_call")
        text = f"{per_call} ms (httpx sustained phase; {own} ms in the service's own processes){at}"
        rows.append((target, text, per_call <= 5))

    cost = idle_cost(ld)
    target = f"idle cost of {TARGET_LIVE} sandboxes <= 1% of a core above the empty host (service's own)"
    if cost is None:
        rows.append((target, "not measured", False if ld else None))
    else:
        engine = idle_cost(ld, ENGINE_PER_CONTAINER_GROUPS)
        kernel = idle_cost(ld, ("other",))
        text = f"{cost}% of a core (api, worker, guests, dockerd, containerd, redis); beside it the engine's "
        text += f"own per-container cost (shims, docker-init) {engine}%, kernel and other {kernel}%{at}"
        rows.append((target, text, cost <= 1))

    rss = _get(ld, "guest_memory", "rss_mib_per_sandbox")
    target = "guest RSS <= 4 MiB per sandbox"
    if rss is None:
        rows.append((target, _get(ld, "guest_memory", "error") or "not measured", False if ld else None))
    else:
        pss = _get(ld, "guest_memory", "pss_mib_per_sandbox")
        text = f"{rss} MiB VmRSS inside the container, shim excluded (PSS, shared pages split: {pss} MiB)"
        rows.append((target, text, rss <= 4))

    cold, raw_run = r.get("cold") or {}, _get(r, "baselines", "docker_run", "total_s")
    target = f"cold burst of {TARGET_LIVE} <= 1.1x raw docker run"
    if "all_provisioned_s" not in cold or not raw_run:
        rows.append((target, cold.get("error", "not run in this run"), False if cold.get("error") else None))
    else:
        ratio = cold["all_provisioned_s"] / raw_run
        text = f"{cold['rollouts']} in {cold['all_provisioned_s']} s = {ratio:.2f}x raw docker run ({raw_run} s)"
        text += f" (the cold burst of {r.get('date')})"
        rows.append((target, text, cold["errors"] == 0 and ratio <= 1.1))

    warm = r.get("warm") or {}
    target = "warm burst TTFO p99 <= 3 s"
    if "ttfo_s" not in warm:
        rows.append((target, warm.get("error", "not run in this run"), False if warm.get("error") else None))
    else:
        p99 = warm["ttfo_s"].get("p99")
        ok = warm["errors"] == 0 and p99 is not None and p99 <= 3
        rows.append(
            (target, f"{warm['rollouts']} rollouts: TTFO p99 {_f(p99)} s (the warm burst of {r.get('date')})", ok)
        )
    return [{"target": t, "measured": m, "result": VERDICT[ok]} for t, m, ok in rows]


def _cpu_row(name: str, cpu: dict[str, Any] | None) -> list[str] | None:
    if not cpu or "by_group_ms_per_call" not in cpu:
        return None
    by = cpu["by_group_ms_per_call"]
    head = [name, _f(cpu["calls"]), _f(cpu["machine_cpu_ms_per_call"]), _f(cpu["service_cpu_ms_per_call"])]
    return head + [_f(cpu.get("service_processes_cpu_ms_per_call"))] + [_f(by.get(g)) for g in CPU_COLUMNS]


def loaded_tables(r: dict[str, Any]) -> list[Table]:
    ld: dict[str, Any] = r.get("loaded") or {}
    if not ld:
        return []
    raw = ld.get("raw_docker_exec") or {}
    raw_cps, raw_single = _get(raw, "concurrent", "execs_per_s"), _get(raw, "single", "latency_ms")
    calls = []
    for key, name in (("sustained_httpx", "httpx"), ("sustained_lean", "lean client")):
        b = ld.get(key) or {}
        if "latency_ms" not in b:
            calls.append([f"{name}, sustained", f"could not run: {b.get('error', ld.get('error'))}"] + ["-"] * 5)
            continue
        lat, ratio = b["latency_ms"], f"{b['calls_per_s'] / raw_cps:.1f}x the calls/s" if raw_cps else "-"
        calls.append([f"{name}, {b['clients']} clients `{b['command']}`", _f(b["calls_per_s"]), ratio])
        calls[-1] += [_f(lat.get(q)) for q in ("p50", "p95", "p99")] + [_f(_errors(b))]
    for key, name in (("single_httpx", "httpx"), ("single_lean", "lean client")):
        b = ld.get(key) or {}
        if "latency_ms" not in b:
            calls.append([f"{name}, single", f"could not run: {b.get('error', ld.get('error'))}"] + ["-"] * 5)
            continue
        lat = b["latency_ms"]
        ratio = f"p50 {raw_single['p50'] / lat['p50']:.1f}x shorter" if raw_single and lat.get("p50") else "-"
        calls.append([f"{name}, one at a time `{b['command']}`", _f(b["calls_per_s"]), ratio])
        calls[-1] += [_f(lat.get(q)) for q in ("p50", "p95", "p99")] + [_f(_errors(b))]
    if "concurrent" in raw:
        c, lat = raw["concurrent"], raw["concurrent"]["latency_ms"]
        calls.append([f"raw docker exec, {c['parallel']} at a time", _f(c["execs_per_s"]), "1x"])
        calls[-1] += [_f(lat.get(q)) for q in ("p50", "p95", "p99")] + [_f(sum(c["errors"].values()))]
        s, lat = raw["single"], raw["single"]["latency_ms"]
        calls.append(["raw docker exec, one at a time", "-", "1x"] + [_f(lat.get(q)) for q in ("p50", "p95", "p99")])
        calls[-1].append(_f(sum(s["errors"].values())))
    elif raw.get("error"):
        calls.append(["raw docker exec", f"could not run: {raw['error']}"] + ["-"] * 5)

    cpu = [
        row
        for row in (
            _cpu_row("httpx, sustained", _get(ld, "sustained_httpx", "cpu")),
            _cpu_row("lean client, sustained", _get(ld, "sustained_lean", "cpu")),
            _cpu_row("httpx, single", _get(ld, "single_httpx", "cpu")),
            _cpu_row("lean client, single", _get(ld, "single_lean", "cpu")),
            _cpu_row("raw docker exec, concurrent", _get(raw, "concurrent", "cpu")),
        )
        if row is not None
    ]

    idle = []
    for key, name in (("idle_empty", "no sandboxes"), ("idle_live", f"{ld.get('live')} live idle sandboxes")):
        b = ld.get(key) or {}
        if "by_group_pct_of_one_core" not in b:
            continue
        by = b["by_group_pct_of_one_core"]
        idle.append([name, _f(b["containers_running"]), _f(b["seconds"]), _f(b["machine_pct_of_one_core"])])
        idle[-1] += [_f(b["service_pct_of_one_core"]), _f(b.get("service_processes_pct_of_one_core"))]
        idle[-1] += [_f(by.get(g)) for g in IDLE_COLUMNS]
        idle[-1].append(_f(by.get("load_generator")))
    if idle_cost(ld) is not None:
        empty, live = ld["idle_empty"]["by_group_pct_of_one_core"], ld["idle_live"]["by_group_pct_of_one_core"]
        differ = lambda key: round(ld["idle_live"][key] - ld["idle_empty"][key], 2)  # noqa: E731
        machine, service = differ("machine_pct_of_one_core"), differ("service_pct_of_one_core")
        idle.append(["difference", "-", "-", _f(machine), _f(service), _f(differ("service_processes_pct_of_one_core"))])
        idle[-1] += [_f(round(live.get(g, 0) - empty.get(g, 0), 2)) for g in IDLE_COLUMNS + ["load_generator"]]

    mem = ld.get("guest_memory") or {}
    memory = [["sandboxes measured", _f(mem.get("sandboxes", mem.get("error")))]]
    if "rss_mib_per_sandbox" in mem:
        memory.append(["all processes inside a sandbox (no shim)", f"{mem['rss_mib_per_sandbox']} MiB RSS"])
        memory[-1][1] += f", {mem['pss_mib_per_sandbox']} MiB PSS"
        for comm, b in mem["by_process"].items():
            each = f"{b['rss_mib_per_sandbox']} MiB RSS per sandbox ({b['processes']} processes, "
            each += f"{b['rss_mib_per_process']} MiB each), {b['pss_mib_per_sandbox']} MiB PSS per sandbox"
            memory.append([f"`{comm}`", each])

    prov = ld.get("provision") or {}
    settled = f"{_f(_get(ld, 'settle', 'seconds'))} s ({_f(_get(ld, 'settle', 'containers_left'))} left)"
    setup = [
        ["POST /v1/rollouts of all (batches of 100)", f"{_f(prov.get('queued_s'))} s"],
        ["all ready or failed", f"{_f(prov.get('all_settled_s'))} s, states {prov.get('states')}"],
        ["release of all; then until their containers were gone", f"{_f(_get(ld, 'release', 'seconds'))} s; {settled}"],
    ]
    targets = [[t["target"], t["measured"], f"**{t['result']}**"] for t in r.get("loaded_targets", [])]
    pct = ["machine", "service", "service processes", *IDLE_COLUMNS, "load generator"]
    return [
        (
            "Calls beside raw docker exec (latency in ms)",
            ["load", "calls/s", "vs raw docker exec", "p50", "p95", "p99", "errors"],
            calls,
        ),
        (
            "Machine CPU per call, ms, by process (service = machine - load generator)",
            ["phase", "calls", "machine", "service", "service processes", *CPU_COLUMNS],
            cpu,
        ),
        ("Idle cost, % of one core", ["host", "containers running", "s", *pct], idle),
        ("Guests' resident memory", ["measure", "value"], memory),
        ("Live rollouts", ["step", "time"], setup),
        ("Targets of what users see", ["target", "measured", "result"], targets),
    ]


def render_loaded_markdown(r: dict[str, Any], tables: list[Table]) -> str:
    ld = r.get("loaded") or {}
    if not tables:
        return ""
    load = ld.get("load_average_at_start")
    out = [
        f"### {ld.get('live', TARGET_LIVE)} live rollouts, httpx",
        "",
        f"Measured {ld.get('date')}"
        + (f" by `{ld['run_command']}`" if ld.get("run_command") else "")
        + (f", load average at its start {' / '.join(map(str, load))}" if load else "")
        + ". The live rollouts are provisioned with `POST /v1/rollouts` and stay idle, as during a training "
        "step where most rollouts wait on the model; the calls run on some of them. httpx: one "
        "`httpx.AsyncClient` (keep-alive, pool as large as the clients), the client Python trainers use; "
        "the lean client (the one of the phases above) beside it. CPU is read from /proc "
        f"(utime + stime of each process, {', '.join(GROUPS)}; `containers` = shim + docker_init + guests; "
        "`other` = the machine's busy time left: kernel work and any other workload; `service processes` = "
        "the service's groups only, which other work on the machine does not change).",
        "",
    ]
    for title, header, rows in tables:
        out += [f"#### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows] + [""]
    return "\n".join(out)
