"""One real consumer of the E2B-compatible API beyond the e2b SDK: verifiers' E2B runtime.

verifiers 0.4.0 (pinned, with the e2b SDK it can have) lives in `.venv-verifiers`, a venv of
its own (deploy/install.sh, `make deps`), so the script that drives it, e2b_verifiers_consumer.py,
runs in a subprocess with that venv's python. verifiers asks for a template `vf-<hash of its
config>` and checks its alias before creating a sandbox; here a template is an environment, so
the test registers one of that name first (the name computed by verifiers itself).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
VF_PYTHON = ROOT / ".venv-verifiers" / "bin" / "python"
SCRIPT = Path(__file__).with_name("e2b_verifiers_consumer.py")


def consumer(args: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VF_PYTHON), str(SCRIPT), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_verifiers_e2b_runtime_runs_a_command_and_a_file_round_trip(stack: Stack, tmp_path: Path) -> None:
    if not VF_PYTHON.exists():
        pytest.fail(f"{VF_PYTHON} is missing: `make deps` installs it (deploy/install.sh, verifiers[e2b] 0.4.0)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E2B_", "VF_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(
        E2B_API_URL=f"{stack.base}/e2b",
        E2B_SANDBOX_URL=f"{stack.base}/e2b/envd",
        E2B_API_KEY=stack.token,
        VF_RUN_ID=f"test-{stack.session}",
        HOME=str(tmp_path),  # verifiers keeps its template-build locks under ~/.cache/verifiers
    )

    named = consumer(["--template-name"], env, 120)
    assert named.returncode == 0, f"--template-name failed:\n{named.stderr[-3000:]}"
    template = named.stdout.strip()
    assert re.fullmatch(r"vf-[0-9a-f]{24}", template), named.stdout
    r = stack.put_environment(template, {})
    assert r.status_code == 200, r.text

    run = consumer([], env, 300)
    assert run.returncode == 0, f"verifiers' E2B runtime failed against the service:\n{run.stderr[-5000:]}"
    report: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["template"] == template
    assert report["run"] == {"exit_code": 3, "stdout": "out:vf-probe-value\n/workspace\n", "stderr": "err\n"}
    assert report["file"]["equal"] and report["file"]["read_bytes"] == report["file"]["written_bytes"] > 0
    assert report["stopped"] is True
    sid = report["sandbox_id"]

    # The sandbox was a rollout of the same id, in the environment the template named, released
    # by verifiers' stop; its command and file transfers are that rollout's recorded calls.
    rollout = stack.http.get(f"/v1/rollouts/{sid}")
    assert rollout.status_code == 200, rollout.text
    assert rollout.json()["environment"] == template
    assert rollout.json()["state"] == "released", rollout.json()
    traj = stack.http.get(f"/v1/rollouts/{sid}/trajectory")
    assert traj.status_code == 200, traj.text
    calls = traj.json()["calls"]
    commands = [c for c in calls if c["tool"] == "exec" and "out:$VF_PROBE" in json.dumps(c["arguments"])]
    assert len(commands) == 1, json.dumps(calls, indent=1)[-5000:]
    command = commands[0]
    assert (command["outcome"], command["reason"], command["exit_code"]) == ("model_error", "nonzero_exit", 3), command
    assert command["arguments"]["cwd"] == "/workspace" and "VF_PROBE" in command["arguments"]["env"], command
    assert "out:vf-probe-value" in command["output"] and command["stderr"].endswith("err\n"), command
    path = report["file"]["path"]
    transfers = {(c["tool"], c["arguments"].get("path")) for c in calls if c["tool"] in ("upload", "download")}
    assert {("upload", path), ("download", path)} <= transfers, transfers
