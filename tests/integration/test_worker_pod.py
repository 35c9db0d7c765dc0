"""The worker pod of the Kubernetes manifests, run on this machine's Docker engine.

Runs k8s/podsmoke.py (`make pod-smoke`): the dev overlay rendered with kubectl kustomize, its
Redis, worker, API and beat pods started by the emulated kubelet (k8s/kubelet.py) with the
images, commands, environment, volumes and securityContext of the manifests, real tool calls
through the API pod, then a clean stop. About 30 s; needs the images of `make images` (built
by `make deps`, which `make test` runs). The smoke's own progress is printed on failure.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker
import pytest

REPO = Path(__file__).resolve().parents[2]
# The module fixture runs the whole smoke during the first test's setup (about 30 s, more on a busy host).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("podsmoke") / "report.json"
    run_id = "t" + secrets.token_hex(3)
    smoke = [sys.executable, str(REPO / "k8s" / "podsmoke.py"), "--run-id", run_id]
    try:
        proc = subprocess.run([*smoke, "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=840)
    finally:
        # A killed smoke (timeout) cannot remove its pods itself; a finished one left nothing.
        subprocess.run([*smoke, "--clean"], cwd=REPO, capture_output=True, timeout=120)
    print(proc.stdout, proc.stderr)
    if not out.exists():
        pytest.fail(f"k8s/podsmoke.py wrote no report (exit {proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr}")
    result: dict[str, Any] = json.loads(out.read_text())
    result["exit_status"] = proc.returncode
    return result


def passed(report: dict[str, Any], prefix: str) -> bool:
    found = [c for c in report["checks"] if c["check"].startswith(prefix)]
    assert found, f"no check {prefix!r} ran; report error: {report.get('error')}"
    return all(c["ok"] for c in found)


def test_the_smoke_passes(report: dict[str, Any]) -> None:
    assert report.get("error") is None, report.get("error")
    assert report["exit_status"] == 0
    failed = [c for c in report["checks"] if not c["ok"]]
    assert failed == []


def test_the_worker_pod_starts_in_the_kubelets_order(report: dict[str, Any]) -> None:
    at = report["worker_pod_milestones_s"]
    assert at["guest exited"] <= at["dind started"] < at["dind startupProbe"] <= at["load-sandbox-image started"]
    assert at["load-sandbox-image exited"] <= at["worker started"] < at["worker startupProbe"]
    assert report["timings_s"]["worker pod ready"] < 120


def test_real_calls_ran_in_a_container_of_the_pods_own_engine(report: dict[str, Any]) -> None:
    assert passed(report, "shell: a real command ran in a sandbox")
    assert passed(report, "read_file: reads it back")
    assert passed(report, "a model error is a 200")
    assert passed(report, "its container is in the pod's own engine (dind)")
    assert passed(report, "releasing the rollout removes its container")


def test_the_sandbox_image_came_from_the_bundle(report: dict[str, Any]) -> None:
    assert passed(report, "the sandbox image came from the bundle")
    tags = dict(
        line.split("=", 1)
        for line in (REPO / "images" / "tags.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert report["sandbox_image"]["id"] == docker.from_env().images.get(tags["IMAGE_SANDBOX"]).id


def test_metrics_were_scraped_from_the_pods_port(report: dict[str, Any]) -> None:
    assert passed(report, "GET :9101/metrics")
    assert report["metrics"]["worker sandbox_provisions_total{source=cold,result=ok}"] == 1


def test_the_stop_left_nothing(report: dict[str, Any]) -> None:
    assert passed(report, "clean stop")
    assert report["left_behind"] == []
    label = f"rollout-sandbox.podsmoke={report['run_id']}"
    assert docker.from_env().containers.list(all=True, filters={"label": label}) == []
