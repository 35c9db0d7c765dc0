"""The guest alone: what one sandbox's guest costs, idle and busy, `python -m tools.bench_guest`.

Containers are started the way the worker starts them (same image, mounts, user, limits;
docker's init), with a guest given on the command line, so two guests can be compared in one
run on the same machine: the native binary of this checkout, and optionally a Python guest
from an older checkout (`--python-guest-dir DIR`, the directory holding its guest.py):

  idle: N containers, nothing asked of them for --idle-seconds: the containers' CPU (their
        cgroups' cpuacct), the guests' wake-ups (context switches of their processes), and
        resident memory per sandbox (VmRSS of every process in the container but docker's
        init, which the engine adds to every container whatever the guest).
  busy: --requests `echo` requests straight to one guest's socket, two at a time: latency
        and the container's CPU per request (the guest, bash and echo; no service involved).

Needs the engine and the sandbox image (`make deps`, images/build.sh). Removes what it made.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
from docker.types import Mount

from sandbox.backends.docker import GUEST_CAPABILITIES, GUEST_MOUNT, SOCKET_MOUNT, SOCKET_NAME
from sandbox.backends.guest_client import GuestUnreachable, call_guest
from sandbox.guest import GUEST_BINARY_NAME, PACKAGED_GUEST_DIR
from sandbox.guest.guest_protocol import PING

CGROUP = Path("/sys/fs/cgroup")
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def guest_command(kind: str) -> list[str]:
    options = ["--socket", f"{SOCKET_MOUNT}/{SOCKET_NAME}", "--user", "sandbox", "--workdir", "/workspace"]
    if kind == "native":
        return [f"{GUEST_MOUNT}/{GUEST_BINARY_NAME}", "supervise", *options]
    # The Python guest's container command, as the worker ran it before the native guest.
    loop = 'while :; do python3 "$0" serve "$@"; sleep 0.2; done'
    return ["/bin/sh", "-c", loop, f"{GUEST_MOUNT}/guest.py", *options]


class Sandboxes:
    """N containers of one guest kind, made like the worker makes them."""

    def __init__(self, engine: docker.DockerClient, image: str, kind: str, guest_dir: Path, count: int) -> None:
        self.engine, self.kind = engine, kind
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"bench-guest-{kind}-"))
        self.tag = uuid.uuid4().hex[:8]
        self.containers: list[Any] = []
        started = time.monotonic()

        def make(i: int) -> Any:
            sock_dir = self.run_dir / str(i)
            sock_dir.mkdir(mode=0o700)
            container = engine.containers.create(
                image, command=guest_command(kind), name=f"bench-guest-{kind}-{self.tag}-{i}",
                labels={"bench": "guest"}, init=True, user="0", network_mode="none",
                cap_drop=["ALL"], cap_add=GUEST_CAPABILITIES, security_opt=["no-new-privileges"],
                pids_limit=256, mem_limit=1 << 30, working_dir="/workspace",
                mounts=[
                    Mount(target=GUEST_MOUNT, source=str(guest_dir), type="bind", read_only=True),
                    Mount(target=SOCKET_MOUNT, source=str(sock_dir), type="bind"),
                ],
            )  # fmt: skip
            container.start()
            self.wait_ready(sock_dir / SOCKET_NAME)
            return container

        with ThreadPoolExecutor(8) as pool:
            self.containers = list(pool.map(make, range(count)))
        self.start_s = time.monotonic() - started

    @staticmethod
    def wait_ready(sock: Path, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if call_guest(sock, PING, timeout_s=2).get("ok"):
                    return
            except (GuestUnreachable, OSError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"guest at {sock} did not answer")

    def socket(self, i: int) -> Path:
        return self.run_dir / str(i) / SOCKET_NAME

    def remove(self) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda c: c.remove(force=True), self.containers))
        shutil.rmtree(self.run_dir, ignore_errors=True)  # the guests' socket directories


def cpu_ns(container_id: str) -> int:
    return int((CGROUP / "cpuacct" / "docker" / container_id / "cpuacct.usage").read_text())


def pids_of(container_id: str) -> list[int]:
    text = (CGROUP / "pids" / "docker" / container_id / "cgroup.procs").read_text()
    return [int(p) for p in text.split()]


def proc_status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}


def proportional_kib(pid: int) -> int:
    """Pss of a process: its private pages plus its share of those it shares."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("Pss:")), 0)


def process_name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if not words:
        return "?"
    if words[0].endswith("docker-init"):
        return "docker-init"
    for mode in ("supervise", "serve"):
        if mode in words:
            return f"guest {mode}"
    if words[0] == "/bin/sh":
        return "supervisor (sh loop)"
    return Path(words[0]).name


def idle(sandboxes: Sandboxes, seconds: float) -> dict[str, Any]:
    ids = [c.id for c in sandboxes.containers]
    pids = {cid: pids_of(cid) for cid in ids}
    switches = lambda: sum(  # noqa: E731
        int(proc_status(p).get("voluntary_ctxt_switches", 0)) + int(proc_status(p).get("nonvoluntary_ctxt_switches", 0))
        for cid in ids for p in pids[cid] if process_name(p) != "docker-init"
    )  # fmt: skip
    cpu0, sw0 = sum(cpu_ns(c) for c in ids), switches()
    time.sleep(seconds)
    cpu1, sw1 = sum(cpu_ns(c) for c in ids), switches()
    rss: dict[str, list[int]] = {}
    pss: dict[str, list[int]] = {}
    for cid in ids:
        for p in pids[cid]:
            rss.setdefault(process_name(p), []).append(int(proc_status(p).get("VmRSS", "0 kB").split()[0]))
            pss.setdefault(process_name(p), []).append(proportional_kib(p))
    guests = lambda by: sum(sum(v) for k, v in by.items() if k != "docker-init") / len(ids) / 1024  # noqa: E731
    return {
        "sandboxes": len(ids),
        "seconds": seconds,
        "cpu_percent_of_a_core": round((cpu1 - cpu0) / 1e9 / seconds * 100, 3),
        "wakeups_per_sandbox_per_s": round((sw1 - sw0) / len(ids) / seconds, 3),
        # Pss: each page shared by n processes counts 1/n (the binary's pages are one page-cache
        # copy for every sandbox); Rss counts them whole in each.
        "pss_per_sandbox_mib": round(guests(pss), 2),
        "rss_per_sandbox_mib": round(guests(rss), 2),
        "pss_mib_by_process": {k: round(statistics.median(v) / 1024, 2) for k, v in sorted(pss.items())},
        "rss_mib_by_process": {k: round(statistics.median(v) / 1024, 2) for k, v in sorted(rss.items())},
    }


def busy(sandboxes: Sandboxes, requests: int) -> dict[str, Any]:
    container, sock = sandboxes.containers[0], sandboxes.socket(0)
    request = {"op": "shell", "command": "echo k", "timeout": 30}
    for _ in range(20):  # warm up
        call_guest(sock, request, timeout_s=30)  # type: ignore[arg-type]

    def one(_: int) -> float:
        t = time.perf_counter()
        reply = call_guest(sock, request, timeout_s=30)  # type: ignore[arg-type]
        assert reply.get("exit_code") == 0, reply
        return time.perf_counter() - t

    cpu0 = cpu_ns(container.id)
    with ThreadPoolExecutor(2) as pool:
        latencies = sorted(pool.map(one, range(requests)))
    cpu1 = cpu_ns(container.id)
    return {
        "requests": requests,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 2),
        "container_cpu_ms_per_request": round((cpu1 - cpu0) / 1e6 / requests, 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = docker.DockerClient(base_url=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"), timeout=300)
    kinds: list[tuple[str, Path]] = [("native", PACKAGED_GUEST_DIR)]
    if args.python_guest_dir:
        kinds.insert(0, ("python", Path(args.python_guest_dir).resolve()))
    results: dict[str, Any] = {"image": args.image, "machine_cpus": os.cpu_count(), "guests": {}}
    for kind, guest_dir in kinds:
        print(f"[{kind}] starting {args.sandboxes} sandboxes ...", flush=True)
        boxes = Sandboxes(engine, args.image, kind, guest_dir, args.sandboxes)
        try:
            ready = f"{args.sandboxes} ready in {boxes.start_s:.1f} s"
            print(f"[{kind}] {ready}; idle for {args.idle_seconds:g} s ...", flush=True)
            figures = {"start_s": round(boxes.start_s, 2), "idle": idle(boxes, args.idle_seconds)}
            print(f"[{kind}] {args.requests} echo requests ...", flush=True)
            figures["busy"] = busy(boxes, args.requests)
            results["guests"][kind] = figures
            print(json.dumps({kind: figures}, indent=2), flush=True)
        finally:
            boxes.remove()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_guest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="rollout-sandbox:bookworm")
    parser.add_argument("--sandboxes", type=int, default=100, help="idle sandboxes per guest kind")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--python-guest-dir", help="the sandbox/guest directory of a checkout with the Python guest")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    results = run(args)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
