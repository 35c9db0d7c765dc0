"""Raw engine baselines of the burst benchmark, measured in the same run as the service:
`docker run -d` of N containers at the engine's best concurrency (probed first), and
`docker exec` of the burst's calls in 32 containers, 32 at a time, for 10 s.
For the loaded phases (burst_loaded.py), `docker exec` of the service's command in new containers
beside the live rollouts, as many at a time as the service had clients, and one at a time.

They are what the service's figures are compared with: the same work asked of the engine directly.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import docker

from tools.burst_cpu import cpu_split, snapshot
from tools.burst_measure import Progress, stats

RAW_EXECS = [
    ["echo", "hello"],
    ["ls", "-la"],
    ["cat", "/etc/os-release"],
    ["grep", "-r", "root", "/etc/passwd", "/etc/group"],
]
PROBE_LEVELS = (2, 4, 8, 16)
PROBE_SIZE = 30
REMOVE_CONCURRENCY = 16
EXEC_CONTAINERS = 32
EXEC_SECONDS = 10.0
SINGLE_EXECS = 100


def _parallel(
    fn: Callable[[Any], Any], items: Iterable[Any], concurrency: int, progress: Progress
) -> tuple[float, list, str]:
    """fn on every item, `concurrency` at once: (seconds, results, first error)."""
    results, first_error, t = [], "", time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for fut in as_completed([pool.submit(fn, x) for x in items]):
            try:
                results.append(fut.result())
                progress.tick()
            except Exception as exc:  # the engine's errors come in many types; count them all
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                progress.tick(False)
    return time.perf_counter() - t, results, first_error


def _remove(engine: docker.DockerClient, ids: list[str], progress: Progress, what: str) -> float:
    progress.begin(f"baseline: removing {len(ids)} {what} containers", len(ids))
    remove = engine.api.remove_container
    secs, _, _ = _parallel(lambda cid: remove(cid, force=True), ids, REMOVE_CONCURRENCY, progress)
    progress.end()
    return round(secs, 2)


def start_container(engine: docker.DockerClient, image: str, labels: dict[str, str]) -> str:
    """What `docker run -d --network none IMAGE sleep infinity` asks the engine."""
    api = engine.api
    config = api.create_host_config(network_mode="none")
    cid: str = api.create_container(image, ["sleep", "infinity"], labels=labels, host_config=config)["Id"]
    api.start(cid)
    return cid


def baselines(engine: docker.DockerClient, args: argparse.Namespace, labels: dict[str, str], p: Progress) -> dict:
    def create(_: Any = None) -> str:
        return start_container(engine, args.image, labels)

    probes: dict[int, float] = {}
    for level in PROBE_LEVELS:
        p.begin(f"baseline: docker run probe, {PROBE_SIZE} containers {level} at a time", PROBE_SIZE)
        secs, ids, err = _parallel(create, range(PROBE_SIZE), level, p)
        p.end()
        probes[level] = round(len(ids) / secs, 2)
        _remove(engine, ids, p, "probe")
        if err:
            raise RuntimeError(f"docker run failed during the probe: {err}")
    best = max(probes, key=lambda level: probes[level])
    p.begin(f"baseline: docker run of {args.rollouts} containers, {best} at a time", args.rollouts)
    secs, ids, err = _parallel(create, range(args.rollouts), best, p)
    p.end()
    run = {
        "probe_containers_per_s": probes,
        "best_concurrency": best,
        "containers": args.rollouts,
        "created": len(ids),
        "errors": args.rollouts - len(ids),
        "first_error": err,
        "total_s": round(secs, 2),
        "containers_per_s": round(len(ids) / secs, 2),
    }
    try:
        extra = max(0, EXEC_CONTAINERS - len(ids))
        if extra:
            p.begin(f"baseline: {extra} more containers for the exec baseline", extra)
            ids += _parallel(create, range(extra), best, p)[1]
            p.end()
        commands = [RAW_EXECS[j % len(RAW_EXECS)] for j in range(args.calls)]
        execs = exec_loop(engine, ids[:EXEC_CONTAINERS], commands, EXEC_SECONDS, p)
    finally:
        run["remove_s"] = _remove(engine, ids, p, "baseline")
    return {"docker_run": run, "docker_exec": execs}


def exec_loop(
    engine: docker.DockerClient, ids: list[str], commands: list[list[str]], seconds: float, p: Progress
) -> dict[str, Any]:
    """`docker exec` in each container at once, each looping over `commands` for `seconds`."""
    api, latencies, errors = engine.api, [], Counter[str]()
    p.begin(f"baseline: docker exec in {len(ids)} containers, {len(ids)} at a time, {seconds:.0f} s")
    deadline = time.perf_counter() + seconds

    def loop(cid: str) -> None:
        j = 0
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            ok, why = _exec(api, cid, commands[j % len(commands)])
            if ok:
                latencies.append(time.perf_counter() - t)
            else:
                errors.update([why])
            p.tick(ok)
            j += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(ids)) as pool:
        list(pool.map(loop, ids))
    elapsed = time.perf_counter() - t0
    p.end()
    return {
        "containers": len(ids),
        "parallel": len(ids),
        "seconds": round(elapsed, 2),
        "execs": len(latencies),
        "errors": dict(errors),
        "execs_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": stats(latencies, 1000, 1),
    }


def _exec(api: Any, cid: str, command: list[str]) -> tuple[bool, str]:
    """One `docker exec`: (exit status 0, why not); the engine's errors are counted, never raised."""
    try:
        eid = api.exec_create(cid, command)["Id"]
        api.exec_start(eid)
        code = api.exec_inspect(eid)["ExitCode"]  # what `docker exec` does for its exit status
    except Exception as exc:  # the rate is the measure
        return False, type(exc).__name__
    return code == 0, f"exit {code}"


def exec_sequential(engine: docker.DockerClient, cid: str, command: list[str], n: int, p: Progress) -> dict[str, Any]:
    """`docker exec` one at a time, n times (after 5 not counted): the latency of a lone exec."""
    p.begin(f"baseline: {n} docker exec one at a time", n)
    latencies, errors = [], Counter[str]()
    for i in range(n + 5):
        t = time.perf_counter()
        ok, why = _exec(engine.api, cid, command)
        if i < 5:
            continue
        if ok:
            latencies.append(time.perf_counter() - t)
        else:
            errors.update([why])
        p.tick(ok)
    p.end()
    return {"execs": len(latencies), "errors": dict(errors), "latency_ms": stats(latencies, 1000, 2)}


def loaded_exec_baseline(
    engine: docker.DockerClient,
    image: str,
    labels: dict[str, str],
    command: list[str],
    parallel: int,
    seconds: float,
    roots: dict[str, int],
    p: Progress,
) -> dict[str, Any]:
    """`docker exec` of `command` in `parallel` new containers, all at once for `seconds` (with the
    machine's CPU split), then one at a time; the containers are removed after."""
    p.begin(f"baseline: {parallel} containers for the docker exec baseline", parallel)
    _, ids, err = _parallel(lambda _: start_container(engine, image, labels), range(parallel), 8, p)
    p.end()
    try:
        if err:
            raise RuntimeError(f"docker run failed: {err}")
        before = snapshot()
        loop = exec_loop(engine, ids, [command], seconds, p)
        after, ours = snapshot(), {c["Id"] for c in engine.api.containers()}
        loop["cpu"] = cpu_split(before, after, roots, loop["execs"], ours)
        single = exec_sequential(engine, ids[0], command, SINGLE_EXECS, p)
    finally:
        _remove(engine, ids, p, "exec baseline")
    return {"command": command, "concurrent": loop, "single": single}
