"""`python -m tools.bench e2b`: what E2B's SDK costs here, against this service's own API, same run.

1. A new sandbox and its first command: `Sandbox.create()` + `commands.run("echo hi")` with E2B's
   sync SDK (pinned, unmodified, pointed here by E2B_API_URL / E2B_SANDBOX_URL), against the
   first `POST /v1/rollouts/{id}/exec` of a new rollout with httpx (which provisions it too).
   Interleaved round by round, each sandbox killed / rollout released before the next.
2. A command on a live sandbox: `commands.run` against `POST .../exec` with httpx, the same
   realistic command (`ls / | head -5; echo k`), interleaved call by call on one sandbox.
Both sides run the same program: E2B's SDK runs every command as `/bin/bash -l -c`, so the exec
bodies are that argv too.

`--live N` first provisions N idle rollouts (POST /v1/rollouts, as during a training step) so
the figures are those of a busy host; they are released at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from typing import Any

import httpx

from tools.bench_common import api_token, summary

COMMAND = "ls / | head -5; echo k"


def login_shell(command: str) -> dict[str, Any]:
    """The exec body that runs what E2B's commands.run runs: `/bin/bash -l -c` (a login shell,
    which reads /etc/profile first: a few ms more than the trainer API's `command`, bash -c)."""
    return {"argv": ["/bin/bash", "-l", "-c", command]}


def run_e2b(args: argparse.Namespace) -> None:
    token = api_token(args)
    os.environ.update(E2B_API_URL=f"{args.url}/e2b", E2B_SANDBOX_URL=f"{args.url}/e2b/envd", E2B_API_KEY=token)
    from e2b import Sandbox  # after the settings: the SDK reads them when it connects

    client = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {token}"}, timeout=300)
    live = _provision_live(client, args.live)
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "live_rollouts": len(live), "command": COMMAND}
    try:
        result["first_command"] = _first_commands(args.rounds, client, Sandbox)
        result["on_live_sandbox"] = _commands(args.calls, client, Sandbox)
    finally:
        for rid in live:
            client.delete(f"/v1/rollouts/{rid}")
        client.close()
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")


def _provision_live(client: httpx.Client, count: int) -> list[str]:
    if count <= 0:
        return []
    rids = [f"bench-e2b-idle-{uuid.uuid4().hex[:10]}" for _ in range(count)]
    for start in range(0, count, 100):
        batch = rids[start : start + 100]
        client.post("/v1/rollouts", json={"rollouts": [{"rollout_id": rid} for rid in batch]}).raise_for_status()
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        ready = sum(client.get(f"/v1/rollouts/{rid}").json().get("state") == "ready" for rid in rids)
        print(f"  live rollouts ready: {ready}/{count}", flush=True)
        if ready == count:
            return rids
        time.sleep(10)
    raise SystemExit("the live rollouts did not all get their containers in 30 min")


def _first_commands(rounds: int, client: httpx.Client, sandbox_class: Any) -> dict[str, Any]:
    create_s, first_s, e2b_total_s, api_s = [], [], [], []
    for i in range(rounds + 1):  # round 0 warms both paths up and is not counted
        started = time.perf_counter()
        sbx = sandbox_class.create(timeout=300)
        created = time.perf_counter()
        result = sbx.commands.run("echo hi")
        done = time.perf_counter()
        assert result.stdout == "hi\n", result
        sbx.kill()
        rid = f"bench-e2b-api-{uuid.uuid4().hex[:10]}"
        started_api = time.perf_counter()
        r = client.post(f"/v1/rollouts/{rid}/exec", json=login_shell("echo hi"))
        api_done = time.perf_counter()
        r.raise_for_status()
        assert r.json()["stdout"] == "hi\n", r.text
        client.delete(f"/v1/rollouts/{rid}")
        if i:
            create_s.append(created - started)
            first_s.append(done - created)
            e2b_total_s.append(done - started)
            api_s.append(api_done - started_api)
        print(f"  round {i}/{rounds}: e2b {done - started:.3f} s, api {api_done - started_api:.3f} s", flush=True)
    return {
        "e2b_create": summary(create_s),
        "e2b_first_run": summary(first_s),
        "e2b_create_plus_first_run": summary(e2b_total_s),
        "api_first_exec": summary(api_s),
    }


def _commands(calls: int, client: httpx.Client, sandbox_class: Any) -> dict[str, Any]:
    sbx = sandbox_class.create(timeout=600)
    rid = f"bench-e2b-api-{uuid.uuid4().hex[:10]}"
    client.post(f"/v1/rollouts/{rid}/exec", json={"command": "true"}).raise_for_status()
    e2b_s, api_s = [], []
    try:
        for i in range(calls + 10):
            started = time.perf_counter()
            sbx.commands.run(COMMAND)
            e2b = time.perf_counter() - started
            started = time.perf_counter()
            r = client.post(f"/v1/rollouts/{rid}/exec", json=login_shell(COMMAND))
            api = time.perf_counter() - started
            r.raise_for_status()
            if i >= 10:
                e2b_s.append(e2b)
                api_s.append(api)
    finally:
        sbx.kill()
        client.delete(f"/v1/rollouts/{rid}")
    return {"e2b_commands_run": summary(e2b_s), "api_exec": summary(api_s)}


def _print(result: dict[str, Any]) -> None:
    print(f"\nE2B SDK against this service's API, {result['live_rollouts']} idle live rollouts on the host")
    print(f"{'':44} {'p50 ms':>9} {'p95 ms':>9}")
    rows = [
        ("Sandbox.create", result["first_command"]["e2b_create"]),
        ("first commands.run", result["first_command"]["e2b_first_run"]),
        ("Sandbox.create + first commands.run", result["first_command"]["e2b_create_plus_first_run"]),
        ("first POST /v1/rollouts/{id}/exec (httpx)", result["first_command"]["api_first_exec"]),
        ("commands.run on a live sandbox", result["on_live_sandbox"]["e2b_commands_run"]),
        ("POST .../exec on a live rollout (httpx)", result["on_live_sandbox"]["api_exec"]),
    ]
    for name, s in rows:
        print(f"{name:44} {s['p50_ms']:9.1f} {s['p95_ms']:9.1f}")
