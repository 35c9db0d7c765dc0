"""Several uvicorn worker processes count every call exactly once (multiprocess mode)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.stack import ROOT, Stack, answers_ok, free_port, wait_until

pytestmark = pytest.mark.integration


def test_an_api_with_two_processes_counts_each_call_once(stack: Stack) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.cli", "api", "--port", str(port), "--workers", "2", "--log-level", "warning"],
        env=stack.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers_ok(f"{base}/healthz"), timeout_s=60)  # the two-process API is up

        def counted() -> float:
            text = httpx.get(f"{base}/metrics", timeout=10).text
            line = [x for x in text.splitlines() if x.startswith("sandbox_tool_calls_total{") and 'reason="none"' in x
                    and 'tool="shell"' in x]  # fmt: skip
            return float(line[0].rsplit(" ", 1)[1])

        before = counted()
        rid = f"multi-{uuid.uuid4().hex[:6]}"
        headers = {"Authorization": f"Bearer {stack.token}"}

        # New connections each time, so the kernel spreads them over both processes.
        def one(i: int) -> int:
            body = {"call_id": f"c{i}", "arguments": {"command": "echo hi"}, "trace_id": rid}
            return httpx.post(f"{base}/v1/tools/shell", json=body, headers=headers, timeout=60).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(one, range(40)))
        assert statuses == [200] * 40
        # Scrapes land on either process; every one of them must see all 40 calls.
        assert {counted() - before for _ in range(6)} == {40.0}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
