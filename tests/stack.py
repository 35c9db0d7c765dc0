"""A real stack for integration tests: the API (uvicorn) and a Celery worker as
subprocesses, talking to the real Redis and the real Docker engine.

Each test session gets its own instance name, Redis key prefix and Redis database, so
it never touches a `make up` stack running on the same machine, and its containers carry
a test label that the session-end hook removes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
TEST_LABEL = "sandbox.test-session"


def wait_until(predicate: Any, timeout_s: float = 60.0, interval_s: float = 0.3) -> Any:
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError("condition not met in time")


def answers_ok(url: str) -> bool:
    """Whether GET `url` answers 200 now (False while the server is not up yet)."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server for the test session, so a test may stop it without harm."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sbxt-redis-", dir="/tmp"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make deps installs it)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--maxclients", "10000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class DockerEngine:
    """A dockerd of the test's own (socket, data root, exec root, pidfile), so a test may stop it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sbxp-", dir="/tmp"))
        self.sock = f"unix://{self.dir}/docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.dir / "dockerd.log", "ab")  # noqa: SIM115 - lives as long as the daemon
        self.proc = subprocess.Popen(
            ["dockerd", "-H", self.sock, "--data-root", str(self.dir / "data"), "--exec-root", str(self.dir / "exec"),
             "--pidfile", str(self.dir / "docker.pid"), "--bridge=none", "--iptables=false", "--ip-masq=false"],
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "-H", self.sock, "info"], capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.dir / "dockerd.log").read_text()[-2000:])
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
        self.proc = None

    def load_image(self, image: str) -> None:
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", self.sock, "load", "-q"], stdin=save.stdout, check=True, capture_output=True)
        assert save.wait() == 0

    def close(self) -> None:
        if self.proc is None:
            self.start()  # to remove what it holds cleanly
        ids = subprocess.run(["docker", "-H", self.sock, "ps", "-aq"], capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "-H", self.sock, "rm", "-f", *ids], capture_output=True)
        self.stop()
        subprocess.run(["umount", "-R", str(self.dir / "exec")], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class Stack:
    def __init__(self, redis_url: str, **overrides: str) -> None:
        self.session = uuid.uuid4().hex[:8]
        self.instance = f"t{self.session}"
        self.token = f"test-token-{uuid.uuid4().hex}"
        self.api_port = free_port()
        self.worker_metrics_port = free_port()
        self.run_dir = Path(tempfile.mkdtemp(prefix="sbxt-", dir="/tmp"))
        self.redis_url = redis_url
        self.workspace_root = self.run_dir / "workspaces"
        self.workspace_root.mkdir()
        (self.workspace_root / "yaml-demo").mkdir()
        (self.workspace_root / "yaml-demo" / "hello.txt").write_text("from the yaml file\n")
        self.environments_file = self.run_dir / "environments.yaml"
        self.environments_file.write_text(
            f"environments:\n  yaml-demo:\n    workspace: {{type: dir, path: {self.workspace_root / 'yaml-demo'}}}\n"
            "    max_tool_calls: 50\n"
        )
        self.env = {
            **os.environ,
            "SANDBOX_API_TOKENS": self.token,
            "SANDBOX_REDIS_URL": self.redis_url,
            "SANDBOX_KEY_PREFIX": f"sbxtest-{self.session}",
            "SANDBOX_INSTANCE": self.instance,
            "SANDBOX_HOST_ID": "testhost",
            "SANDBOX_RUN_DIR": str(self.run_dir),
            "SANDBOX_EXTRA_LABELS": json.dumps({TEST_LABEL: self.session}),
            "SANDBOX_WORKER_METRICS_PORT": str(self.worker_metrics_port),
            "SANDBOX_WORKER_CONCURRENCY": "48",
            "SANDBOX_LIFECYCLE__REAPER_INTERVAL_S": "1",
            "SANDBOX_LIFECYCLE__ORPHAN_GRACE_S": "5",
            "SANDBOX_WORKSPACE_ROOTS": str(self.workspace_root),
            "SANDBOX_ARCHIVE__DIR": str(self.run_dir / "archive"),  # every ended rollout goes through it
            "SANDBOX_ENVIRONMENTS_FILE": str(self.environments_file),
            "SANDBOX_GRADING__CUSTOM_GRADERS": "tests.custom_grader:grade_by_calls",
            "SANDBOX_TIMEOUTS__PROVISION_S": "120",
            "PYTHONUNBUFFERED": "1",
            **overrides,
        }
        self.logs = self.run_dir / "logs"
        self.logs.mkdir()
        self.api_proc: subprocess.Popen[bytes] | None = None
        self.worker_proc: subprocess.Popen[bytes] | None = None
        self.host_procs: dict[str, subprocess.Popen[bytes]] = {}
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.api_port}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=180,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        self.docker = docker.DockerClient(base_url=self.env.get("SANDBOX_DOCKER_HOST", "unix:///var/run/docker.sock"))
        self.redis = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self.prefix = self.env["SANDBOX_KEY_PREFIX"]
        self.registered_digests: list[str] = []

    def put_environment(self, name: str, spec: dict[str, Any]) -> httpx.Response:
        r = self.http.put(f"/v1/environments/{name}", json=spec)
        if r.status_code == 200:
            self.registered_digests.append(r.json()["definition_digest"])
        return r

    # --- processes ---
    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        return subprocess.Popen(
            [sys.executable, "-m", "sandbox.cli", *args],
            env={**self.env, **(env or {})},
            cwd=ROOT,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )

    def start_worker(self) -> None:
        self.worker_proc = self._spawn(
            "worker",
            ["worker", "--beat", "--beat-schedule", str(self.run_dir / "beat-schedule"), "--log-level", "warning"],
        )

    def start_host(self, host_id: str, docker_host: str, metrics_port: int) -> None:
        """Another sandbox host: a worker (no beat) for another Docker engine, under its own host id."""
        env = {
            "SANDBOX_HOST_ID": host_id,
            "SANDBOX_DOCKER_HOST": docker_host,
            "SANDBOX_WORKER_METRICS_PORT": str(metrics_port),
        }
        self.host_procs[host_id] = self._spawn(f"worker-{host_id}", ["worker", "--log-level", "warning"], env)

    def stop_host(self, host_id: str) -> None:
        self._stop(self.host_procs.pop(host_id, None))

    def start_api(self) -> None:
        self.api_proc = self._spawn("api", ["api", "--port", str(self.api_port), "--log-level", "warning"])

    def start(self) -> None:
        self.start_worker()
        self.start_api()
        self.wait_ready()

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            for proc, name in ((self.api_proc, "api"), (self.worker_proc, "worker")):
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.tail(name)}")
            try:
                last = httpx.get(f"http://127.0.0.1:{self.api_port}/readyz", timeout=5)
                if last.status_code == 200:
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError(
            f"stack not ready: {last!r} {getattr(last, 'text', '')}\n{self.tail('worker')}\n{self.tail('api')}"
        )

    def stop_worker(self, sig: int = signal.SIGTERM) -> None:
        self._stop(self.worker_proc, sig)
        self.worker_proc = None

    def kill_worker(self) -> None:
        """SIGKILL the worker and its embedded beat (its own process group), like a crash."""
        if self.worker_proc is not None:
            os.killpg(self.worker_proc.pid, signal.SIGKILL)
            self.worker_proc.wait(timeout=10)
            self.worker_proc = None

    def stop_api(self) -> None:
        self._stop(self.api_proc)
        self.api_proc = None

    def _stop(self, proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def close(self) -> None:
        self._stop(self.api_proc)
        self._stop(self.worker_proc)
        for proc in self.host_procs.values():
            self._stop(proc)
        self.http.close()
        try:
            for c in self.docker.containers.list(all=True, filters={"label": f"{TEST_LABEL}={self.session}"}):
                c.remove(force=True)
            for image in self.docker.images.list(filters={"label": f"{TEST_LABEL}={self.session}"}):
                self.docker.images.remove(image.id, force=True)  # forks' images
            for digest in self.registered_digests:  # environment images this session built
                for image in self.docker.images.list(filters={"label": f"sandbox.definition_digest={digest}"}):
                    self.docker.images.remove(image.id, force=True)
        except docker.errors.DockerException as exc:  # an engine a test stopped; its owner cleans up
            print(f"stack cleanup: engine unavailable: {exc}")
        keys = list(self.redis.scan_iter(f"{self.prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            self.redis.delete(*keys[i : i + 500])
        for q in self.redis.scan_iter(f"{self.instance}.*"):
            self.redis.delete(q)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # --- helpers for tests ---
    def call(
        self, tool: str, rollout_id: str, arguments: Any, call_id: str | None = None, **extra: Any
    ) -> httpx.Response:
        body = {
            "type": "function_call",
            "id": f"fc_{uuid.uuid4().hex[:6]}",
            "call_id": call_id or f"call_{uuid.uuid4().hex}",
            "name": tool,
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
            "trace_id": rollout_id,
            **extra,
        }
        return self.http.post(f"/v1/tools/{tool}", json=body)

    def shell(self, rollout_id: str, command: str, **kw: Any) -> httpx.Response:
        args = {"command": command, **({"timeout": kw.pop("timeout")} if "timeout" in kw else {})}
        return self.call("shell", rollout_id, args, **kw)

    def containers_of(self, rollout_id: str) -> list[Any]:
        return self.containers({"label": [f"sandbox.rollout_id={rollout_id}", f"{TEST_LABEL}={self.session}"]})

    def containers(self, filters: dict[str, Any]) -> list[Any]:
        """The engine's containers matching `filters`, stopped ones included."""
        for _ in range(5):
            try:
                return self.docker.containers.list(all=True, filters=filters)
            except docker.errors.NotFound:
                # The SDK lists, then inspects each container: one removed in between (the
                # reaper's or a release's removal) is gone, which is what the caller waits for.
                time.sleep(0.2)
        return self.docker.containers.list(all=True, filters=filters)

    def metric(self, name: str, labels: dict[str, str], source: str = "api") -> float:
        url = (
            f"http://127.0.0.1:{self.api_port}/metrics"
            if source == "api"
            else f"http://127.0.0.1:{self.worker_metrics_port}/metrics"
        )
        text = httpx.get(url, timeout=10).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                series, _, value = line.rpartition(" ")
                got = series[len(name) :].strip("{}")
                if ",".join(sorted(got.split(","))) == want or (not labels and not got):
                    return float(value)
        return 0.0


def answer_code(r: httpx.Response) -> str:
    """A tool call's answer as "status code": "200 ok" or e.g. "503 host_unavailable"."""
    return "200 ok" if r.status_code == 200 else f"{r.status_code} {r.json()['error']['code']}"


@contextmanager
def two_engine_stack(**overrides: str) -> Iterator[tuple[Stack, DockerEngine]]:
    """A started stack whose host A is this machine's engine (worker with beat), plus a
    second engine of its own, with the sandbox image loaded, for a host B the caller starts."""
    engine_b = DockerEngine()
    engine_b.start()
    redis_server = RedisServer()
    redis_server.start()
    stack: Stack | None = None
    try:
        engine_b.load_image("rollout-sandbox:bookworm")
        stack = Stack(
            redis_server.url,
            SANDBOX_HOST_ID="host-a",
            SANDBOX_HOSTS__HEARTBEAT_S="1",
            SANDBOX_HOSTS__DOWN_AFTER_BEATS="3",
            **overrides,
        )
        stack.start()
        yield stack, engine_b
    finally:
        if stack is not None:
            stack.close()
        engine_b.close()
        redis_server.close()
