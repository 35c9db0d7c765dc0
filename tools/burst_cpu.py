"""Where the machine's CPU and the sandboxes' memory go, read from /proc: the whole machine split
by process group, so that "CPU per call" and "idle cost" name who pays.

A process belongs to the group of the nearest ancestor (itself included) that names one: the API
and worker trees (by their pid files), the bench's own process (the load generator), dockerd,
containerd, Redis, a containerd-shim (with the runc it starts). Below a shim, the container's init
(docker-init) is kept apart from the rest (the guest, its supervisor and every command), so the
engine's own per-container cost shows beside the guest's. What no group claims is `other`.

CPU is utime + stime + cutime + cstime in clock ticks: a command that exits during the window is
counted through the process that reaped it (the guest), so the short-lived `ls` and `head` of
each call land in `guests`, not in `other`.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Groups, in report order. `containers` in reports = shim + docker_init + guests.
GROUPS = ("api", "worker", "guests", "shim", "docker_init", "dockerd", "containerd", "redis", "load_generator")
CONTAINER_GROUPS = ("shim", "docker_init", "guests")
SERVICE_GROUPS = ("api", "worker", *CONTAINER_GROUPS, "dockerd", "containerd", "redis")
TICK = os.sysconf("SC_CLK_TCK")
_NAMED = {"dockerd": "dockerd", "containerd": "containerd"}
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Proc:
    ppid: int
    comm: str
    ticks: int
    started: int  # clock ticks after boot: a pid used again is another process


@dataclass(frozen=True)
class Snapshot:
    at: float
    busy: int  # machine ticks (all CPUs) spent in user, nice, system, irq, softirq
    total: int  # the same plus idle, iowait and steal
    procs: dict[int, Proc]


def _machine_ticks() -> tuple[int, int]:
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    busy = user + nice + system + irq + softirq  # guest time is already inside user and nice
    return busy, busy + idle + iowait + steal


def snapshot() -> Snapshot:
    procs: dict[int, Proc] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                text = f.read()
        except OSError:  # exited meanwhile
            continue
        head, _, rest = text.rpartition(")")
        fields = rest.split()
        ticks = sum(int(x) for x in fields[11:15])
        procs[int(name)] = Proc(int(fields[1]), head.partition("(")[2], ticks, int(fields[19]))
    busy, total = _machine_ticks()
    return Snapshot(time.monotonic(), busy, total, procs)


def classify(
    procs: dict[int, Proc], roots: dict[str, int], me: int, containers: set[str] | None = None
) -> dict[int, str]:
    """Each pid's group (see the module's docstring). roots: the API and worker pids, and dockerd's
    and Redis's when known (another engine or Redis on the machine is then `other`); containers: the
    ids of this engine's containers (processes of other engines' containers are then `other`)."""
    by_root = {pid: name for name, pid in roots.items()} | {me: "load_generator"}

    def own(pid: int, p: Proc) -> str | None:
        if pid in by_root:
            return by_root[pid]
        if p.comm.startswith("containerd-shim"):
            return "shim"
        group = "redis" if p.comm.startswith("redis-server") else _NAMED.get(p.comm)
        if group is None:
            return None
        known = roots.get("dockerd" if group == "containerd" else group)
        mine = known is None or (p.ppid == known if group == "containerd" else pid == known)
        return group if mine else "other"

    groups: dict[int, str] = {}
    checked: set[int] = set()  # shims whose container was looked at
    for start in procs:
        chain, pid, found = [], start, "other"
        while pid in procs and pid not in groups:
            p = procs[pid]
            if (g := own(pid, p)) is not None:
                groups[pid] = g
                break
            chain.append(pid)
            pid = p.ppid
        if pid in groups:
            found = groups[pid]
        if found == "shim" and containers is not None and pid not in checked:
            checked.add(pid)
            if _shim_container(pid) not in containers:
                found = groups[pid] = "other"
        for child in reversed(chain):  # from the nearest ancestor with a group down to `start`
            if found == "shim" and not procs[child].comm.startswith("runc"):  # runc works for the shim
                found = "docker_init" if procs[child].comm == "docker-init" else "guests"
            elif found == "docker_init":
                found = "guests"
            groups[child] = found
    return groups


def _shim_container(pid: int) -> str | None:
    """The container a containerd-shim serves: its `-id` argument."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((argv[i + 1].decode() for i, a in enumerate(argv[:-1]) if a == b"-id"), None)


def cpu_split(
    before: Snapshot, after: Snapshot, roots: dict[str, int], calls: int = 0, containers: set[str] | None = None
) -> dict[str, Any]:
    """CPU between two snapshots: the machine's, each group's, `other` (the rest), in seconds and in %
    of one core; per call in ms when calls > 0. `service` is the machine minus the load generator
    (kernel work included); `service_processes` the groups of the service only (what another
    workload on the machine, in `other`, does not change)."""
    groups = classify(after.procs, roots, os.getpid(), containers)
    seconds = after.at - before.at
    used: dict[str, float] = dict.fromkeys(GROUPS, 0.0)
    for pid, p in after.procs.items():
        if groups[pid] not in used:  # `other` is what the groups leave of the machine's time
            continue
        old = before.procs.get(pid)
        delta = p.ticks - old.ticks if old is not None and old.started == p.started else p.ticks
        used[groups[pid]] += max(0, delta) / TICK
    machine = (after.busy - before.busy) / TICK
    used["other"] = machine - sum(used.values())
    used["containers"] = sum(used[g] for g in CONTAINER_GROUPS)
    service = machine - used["load_generator"]
    named = sum(used[g] for g in SERVICE_GROUPS)  # what the service's own processes used: blind to other work
    out: dict[str, Any] = {
        "seconds": round(seconds, 2),
        "machine_cpu_s": round(machine, 2),
        "machine_busy_pct_of_all_cpus": round(100 * (after.busy - before.busy) / max(1, after.total - before.total), 1),
        "machine_pct_of_one_core": round(100 * machine / seconds, 2),
        "service_pct_of_one_core": round(100 * service / seconds, 2),
        "service_processes_pct_of_one_core": round(100 * named / seconds, 2),
        "by_group_s": {g: round(v, 3) for g, v in used.items()},
        "by_group_pct_of_one_core": {g: round(100 * v / seconds, 2) for g, v in used.items()},
    }
    if calls:
        out["calls"] = calls
        out["machine_cpu_ms_per_call"] = round(1000 * machine / calls, 3)
        out["service_cpu_ms_per_call"] = round(1000 * service / calls, 3)
        out["service_processes_cpu_ms_per_call"] = round(1000 * named / calls, 3)
        out["by_group_ms_per_call"] = {g: round(1000 * v / calls, 3) for g, v in used.items()}
    return out


def pid_files(run_dir: Path, names: tuple[str, ...] = ("dockerd", "redis")) -> dict[str, int]:
    """Pids that `make up` recorded for these daemons and that still run (classify's roots)."""
    found: dict[str, int] = {}
    for name in names:
        try:
            pid = int((run_dir / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if Path(f"/proc/{pid}").exists():
            found[name] = pid
    return found


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(key)), 0)
    except OSError:
        return 0


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
    except OSError:
        return 0


def _kind(pid: int, comm: str) -> str:
    """The command name and its mode when it has one (`sandbox-guest supervise` beside `sandbox-guest
    serve`, `python3 serve`): the first plain word of the first two arguments."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return comm
    mode = next((a.decode() for a in argv[1:3] if a.isalpha()), "")
    return f"{comm} {mode}".strip()


def _container_of(pid: int) -> str | None:
    try:
        found = _CONTAINER_ID.findall(Path(f"/proc/{pid}/cgroup").read_text())
    except OSError:
        return None
    return found[-1] if found else None


def sandbox_memory(container_ids: set[str], roots: dict[str, int]) -> dict[str, Any]:
    """Resident memory of the processes inside these containers (shims excluded): the sum per
    sandbox, and each kind of process (the guest, its supervisor, the init: see _kind)."""
    snap = snapshot()
    groups = classify(snap.procs, roots, os.getpid())
    rss: Counter[str] = Counter()
    pss: Counter[str] = Counter()
    count: Counter[str] = Counter()
    seen: dict[str, int] = defaultdict(int)
    for pid, p in snap.procs.items():
        if groups[pid] not in ("docker_init", "guests"):
            continue
        cid = _container_of(pid)
        if cid not in container_ids:
            continue
        seen[cid] += 1
        kind = _kind(pid, p.comm)
        rss[kind] += _status_kib(pid, "VmRSS:")
        pss[kind] += _pss_kib(pid)
        count[kind] += 1
    n = len(seen)
    if not n:
        return {"error": f"no process of the {len(container_ids)} sandbox containers found under /proc"}
    mib = 1024.0
    return {
        "sandboxes": n,
        "processes": sum(count.values()),
        "rss_mib_per_sandbox": round(sum(rss.values()) / mib / n, 2),
        "pss_mib_per_sandbox": round(sum(pss.values()) / mib / n, 2),
        "by_process": {
            kind: {
                "processes": count[kind],
                "rss_mib_per_sandbox": round(rss[kind] / mib / n, 2),
                "rss_mib_per_process": round(rss[kind] / mib / count[kind], 2),
                "pss_mib_per_sandbox": round(pss[kind] / mib / n, 2),
            }
            for kind in sorted(count, key=lambda c: -rss[c])
        },
    }
