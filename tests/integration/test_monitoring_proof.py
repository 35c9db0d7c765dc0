"""The monitoring proof: a real Prometheus, with the project's own configuration and rules,
scrapes a live stack while a workload injects a known number of model errors and infra
faults (removed containers, a stopped engine, a killed worker). Prometheus must count them
exactly, every dashboard query must parse and return data, the infra-error alert must go
pending or firing, and no label may carry a rollout id.

The stack runs on its own Docker engine, so stopping that engine disturbs no other test.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.stack import ROOT, DockerEngine, RedisServer, Stack, answers_ok, free_port, wait_until

pytestmark = pytest.mark.integration
MONITORING = ROOT / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "training-health.json"


class Prometheus:
    def __init__(self, api_port: int, worker_port: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sbxprom-", dir="/tmp"))
        self.port = free_port()
        config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        targets = {"sandbox-api": f"127.0.0.1:{api_port}", "sandbox-worker": f"127.0.0.1:{worker_port}"}
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        config["rule_files"] = [str(p) for p in sorted((MONITORING / "rules").glob("*.yml"))]
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed (make monitoring-test installs Debian's package)")
        log = open(self.dir / "prometheus.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=log,
        )  # fmt: skip
        try:
            wait_until(lambda: answers_ok(f"{self.url}/-/ready"), timeout_s=30)
        except AssertionError:
            raise RuntimeError((self.dir / "prometheus.log").read_text()[-2000:]) from None

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert r["status"] == "success", (expr, r)
        return list(r["data"]["result"])

    def value(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def proof() -> Iterator[tuple[Stack, DockerEngine, Prometheus]]:
    engine = DockerEngine()
    engine.start()
    redis_server = RedisServer()
    redis_server.start()
    stack: Stack | None = None
    prom: Prometheus | None = None
    try:
        engine.load_image("rollout-sandbox:bookworm")
        stack = Stack(
            redis_server.url,
            SANDBOX_DOCKER_HOST=engine.sock,
            SANDBOX_HOST_ID="proofhost",
            SANDBOX_TIMEOUTS__QUEUE_S="5",
            SANDBOX_TIMEOUTS__REPLY_SLACK_S="3",
        )
        stack.start()
        prom = Prometheus(stack.api_port, stack.worker_metrics_port)
        prom.start()
        yield stack, engine, prom
    finally:
        if prom is not None:
            prom.close()
        if stack is not None:
            stack.close()
        engine.close()
        redis_server.close()


def test_prometheus_tells_infra_from_model_exactly(proof: tuple[Stack, DockerEngine, Prometheus]) -> None:
    stack, engine, prom = proof
    tag = uuid.uuid4().hex[:6]
    rollouts = [f"proof-{tag}-{i}" for i in range(6)]
    ok = lambda r: r.status_code == 200 and r.headers["X-Sandbox-Outcome"] == "ok"  # noqa: E731

    # Prometheus must have seen every counter at zero first, or increase() has no baseline.
    wait_until(lambda: len(prom.query("up == 1")) == 2 and prom.query("sandbox_tool_calls_total"))
    time.sleep(2)

    # Healthy traffic.
    for rid in rollouts:
        assert ok(stack.shell(rid, "echo ready")), rid
    # Model errors, by reason: 3 nonzero_exit, 2 invalid_arguments, 2 file_not_found, 1 timeout.
    model = {"nonzero_exit": 3, "invalid_arguments": 2, "file_not_found": 2, "timeout": 1}
    for _ in range(3):
        assert stack.shell(rollouts[0], "exit 1").headers["X-Sandbox-Reason"] == "nonzero_exit"
    for _ in range(2):
        assert stack.call("shell", rollouts[0], "{broken").headers["X-Sandbox-Reason"] == "invalid_arguments"
    for _ in range(2):
        missing = stack.call("read_file", rollouts[0], {"path": "nope.txt"})
        assert missing.headers["X-Sandbox-Reason"] == "file_not_found"
    assert stack.shell(rollouts[0], "sleep 5", timeout=1).headers["X-Sandbox-Reason"] == "timeout"
    # A scored zero (the model's) and a graded success, for the reward panels.
    zero = {"sample": {"output_text": "wrong.py"}, "item": {"reference_files": ["right.py"]}, "trace_id": rollouts[5]}
    assert stack.http.post("/v1/grade", json=zero).json()["score"] == 0.0

    # Infra fault 1 and 2: two containers removed from outside -> sandbox_lost on their next call.
    for rid in rollouts[1:3]:
        stack.containers_of(rid)[0].remove(force=True)
        r = stack.shell(rid, "echo after")
        assert (r.status_code, r.json()["error"]["code"]) == (503, "sandbox_lost")
    tainted = {"sample": {"output_text": "x"}, "item": {"reference_files": ["x"]}, "trace_id": rollouts[1]}
    assert stack.http.post("/v1/grade", json=tainted).status_code == 503  # a false zero prevented

    # Infra fault 3: a worker killed while a call runs -> worker_lost.
    result: dict[str, httpx.Response] = {}
    t = threading.Thread(target=lambda: result.setdefault("r", stack.shell(rollouts[3], "sleep 3", timeout=3)))
    t.start()
    time.sleep(1.0)
    stack.kill_worker()
    t.join()
    assert (result["r"].status_code, result["r"].json()["error"]["code"]) == (503, "worker_lost")
    stack.start_worker()
    stack.wait_ready()
    assert ok(stack.shell(rollouts[4], "echo back"))

    # Infra faults 4 and 5: the engine stopped. A live rollout's call fails as engine_unavailable,
    # as sandbox_lost if the reconciler saw its stopped container first, or as host_unavailable
    # if the heartbeat already quarantined the host (all infra; which one is a race); a new
    # rollout cannot be provisioned: engine_unavailable.
    engine.stop()
    r = stack.shell(rollouts[4], "echo engine down")
    live_reason = r.json()["error"]["code"]
    assert r.status_code == 503 and live_reason in ("engine_unavailable", "sandbox_lost", "host_unavailable")
    r = stack.shell(f"proof-{tag}-new", "echo engine down")
    assert (r.status_code, r.json()["error"]["code"]) == (503, "engine_unavailable")
    engine.start()
    wait_until(lambda: stack.http.get("/readyz").status_code == 200)
    assert ok(stack.shell(f"proof-{tag}-after", "echo new rollout after the engine came back"))
    infra = {"sandbox_lost": 2, "worker_lost": 1, "engine_unavailable": 1}
    infra[live_reason] = infra.get(live_reason, 0) + 1

    # Prometheus counts exactly what was injected.
    def counts(outcome: str) -> dict[str, float]:
        rows = prom.query(f'sum by (reason) (sandbox_tool_calls_total{{outcome="{outcome}"}})')
        return {row["metric"]["reason"]: float(row["value"][1]) for row in rows if float(row["value"][1])}

    wait_until(lambda: counts("infra_error") == infra and counts("model_error") == model, timeout_s=30)
    assert counts("infra_error") == infra
    assert counts("model_error") == model
    assert prom.value('sum(sandbox_zero_rewards_total{cause="model"})') == 1
    assert prom.value('sum(sandbox_zero_rewards_total{cause="infra"})') == 1
    assert prom.value('sum(sandbox_grades_total{result="discarded_infra"})') == 1

    # Every query of every dashboard panel parses and returns data.
    exprs = dashboard_queries()
    assert len(exprs) >= 10
    empty = [e for e in exprs if not prom.query(e)]
    assert empty == [], f"dashboard queries without data: {empty}"

    # The infra-error alert goes pending or firing.
    def alert_state() -> str | None:
        alerts = httpx.get(f"{prom.url}/api/v1/alerts").json()["data"]["alerts"]
        states = [a["state"] for a in alerts if a["labels"]["alertname"] == "SandboxInfraErrorRatioHigh"]
        return states[0] if states else None

    assert wait_until(alert_state, timeout_s=30) in ("pending", "firing")

    # No label carries a rollout id.
    series = httpx.get(f"{prom.url}/api/v1/series", params={"match[]": '{__name__=~"sandbox_.+"}'}).json()["data"]
    values = {v for s in series for k, v in s.items() if k != "__name__"}
    assert not [v for v in values if tag in v], "a rollout id leaked into a label"
    assert len(series) > 50


def dashboard_queries() -> list[str]:
    """Every `expr` of every panel, with template variables replaced as Grafana would for "All"."""
    board = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str) and node["expr"].strip() and "targets" not in node:
                exprs.append(node["expr"])
            for key, value in node.items():
                if key != "templating":
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(board.get("panels", []))
    substitutions = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "${host}": ".*",
                     "$host": ".*", "${environment}": ".*", "$environment": ".*"}  # fmt: skip
    out = []
    for expr in exprs:
        for key, value in substitutions.items():
            expr = expr.replace(key, value)
        assert not re.search(r"\$\w", expr), f"unsubstituted variable in {expr}"
        out.append(expr)
    return out
