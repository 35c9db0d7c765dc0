"""gVisor for real: an environment with `runtime: "runsc"` runs its rollouts under runsc, and the
guest and every tool (shell, read_file, the tests grader) work there as under runc."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gvisor_env(stack: Stack) -> str:
    if not Path("/usr/bin/runsc").exists():
        pytest.skip("gVisor (runsc) is not installed here; deploy/install.sh installs it")
    name = f"gvisor-{uuid.uuid4().hex[:6]}"
    r = stack.put_environment(name, {"runtime": "runsc"})
    assert r.status_code == 200, f"runsc is installed but refused: {r.text} (deploy/deps.sh registers it)"
    return name


def test_tools_run_under_gvisor(stack: Stack, gvisor_env: str) -> None:
    rid = f"gv-{uuid.uuid4().hex[:8]}"
    item = {"environment": gvisor_env}
    r = stack.shell(
        rid, "id -u; dmesg 2>/dev/null | head -1; echo hi > note.txt; (sleep 60 &); setsid sleep 60 &", item=item
    )
    assert r.status_code == 200, r.text
    out = r.json()["output"]
    assert out.startswith("1000\n") and "gVisor" in out  # gVisor's own kernel log, not the host's
    [container] = stack.containers_of(rid)
    assert container.attrs["HostConfig"]["Runtime"] == "runsc"
    left = stack.shell(rid, "ps -eo user,comm | grep -c '^sandbox *sleep' || true", item=item).json()["output"]
    assert left.strip() == "0"  # the sweep works under gVisor too: nothing survived the call
    r = stack.call("read_file", rid, {"path": "note.txt"}, item=item)
    assert r.status_code == 200 and r.json()["output"].strip().endswith("hi")
    denied = stack.call("read_file", rid, {"path": "/etc/shadow"}, item=item)
    assert denied.status_code == 200 and denied.headers["X-Sandbox-Reason"] == "permission_denied"


def test_the_tests_grader_runs_under_gvisor(stack: Stack, gvisor_env: str) -> None:
    rid = f"gv-{uuid.uuid4().hex[:8]}"
    item = {"environment": gvisor_env}
    assert stack.shell(rid, "printf 'def double(x):\\n    return 2 * x\\n' > lib.py", item=item).status_code == 200
    hidden = "from lib import double\n\n\ndef test_double():\n    assert double(4) == 8\n"
    body = {
        "trace_id": rid,
        "sample": {"output_text": ""},
        "item": {"grader": "tests", "tests": {"command": "python3 -m pytest -q", "files": {"test_h.py": hidden}}},
    }
    r = stack.http.post("/v1/grade", json=body, timeout=300)
    assert r.status_code == 200, r.text
    assert r.json()["score"] == 1.0 and r.json()["tests"]["passed"] == ["test_h.py::test_double"]


def test_an_unknown_runtime_is_a_clear_400(stack: Stack) -> None:
    r = stack.put_environment(f"bad-{uuid.uuid4().hex[:6]}", {"runtime": "kata"})
    assert r.status_code == 400 and "runtime" in r.text
