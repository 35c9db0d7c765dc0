"""The tool endpoints end to end: real HTTP, real Celery worker, real containers."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.stack import Stack

pytestmark = pytest.mark.integration


def rid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_shell_runs_in_the_workspace_as_the_unprivileged_user(stack: Stack) -> None:
    r = stack.shell(rid("basic"), "pwd; id -un; echo out; echo err >&2")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "function_call_output"
    assert body["output"] == "/workspace\nsandbox\nout\nerr\n"
    assert r.headers["X-Sandbox-Outcome"] == "ok"
    assert r.headers["X-Sandbox-Exit-Code"] == "0"


def test_call_id_and_id_are_echoed_and_arguments_may_be_an_object(stack: Stack) -> None:
    body = {"type": "function_call", "id": "fc_same", "call_id": "call_obj", "name": "shell",
            "arguments": {"command": "echo object"}, "trace_id": rid("obj")}  # fmt: skip
    r = stack.http.post("/v1/tools/shell", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"type": "function_call_output", "call_id": "call_obj", "id": "fc_same", "output": "object\n"}


def test_rollout_id_from_header_and_from_path(stack: Stack) -> None:
    r1 = rid("hdr")
    body = {"call_id": "c1", "arguments": '{"command": "echo hi > f"}'}
    assert stack.http.post("/v1/tools/shell", json=body, headers={"X-Rollout-Id": r1}).status_code == 200
    r = stack.http.post(f"/v1/rollouts/{r1}/tools/shell", json={"call_id": "c2", "arguments": '{"command": "cat f"}'})
    assert r.json()["output"] == "hi\n"


def test_nonzero_exit_is_a_model_error_stated_in_the_output(stack: Stack) -> None:
    r = stack.shell(rid("exit"), "echo partial; exit 3")
    assert r.status_code == 200
    assert r.json()["output"] == "partial\n[exit code 3]"
    assert r.headers["X-Sandbox-Outcome"] == "model_error"
    assert r.headers["X-Sandbox-Reason"] == "nonzero_exit"
    assert r.headers["X-Sandbox-Exit-Code"] == "3"


def test_two_rollouts_cannot_see_each_others_files(stack: Stack) -> None:
    a, b = rid("iso-a"), rid("iso-b")
    assert stack.shell(a, "echo secret > /workspace/a.txt; echo s > /tmp/a.tmp").status_code == 200
    r = stack.shell(b, "ls /workspace /tmp; cat /workspace/a.txt")
    assert r.headers["X-Sandbox-Outcome"] == "model_error"
    assert "secret" not in r.json()["output"]
    assert "a.tmp" not in r.json()["output"]
    assert stack.shell(a, "cat /workspace/a.txt").json()["output"] == "secret\n"


def test_sandbox_has_no_network_and_no_root(stack: Stack) -> None:
    r = stack.shell(rid("net"), "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; sudo true; su -c true")
    out = r.json()["output"]
    assert out.splitlines()[0] == "lo"  # only the loopback interface exists
    assert "eth0" not in out
    # The guest holds CHOWN, DAC_OVERRIDE and FOWNER for grading; the commands hold nothing.
    r = stack.shell(rid("caps"), "grep -E 'Cap(Prm|Eff|Amb|Inh)' /proc/self/status")
    sets = dict(line.split(":\t") for line in r.json()["output"].splitlines())
    assert sets == {name: "0000000000000000" for name in ("CapInh", "CapPrm", "CapEff", "CapAmb")}


def test_destructive_commands_hurt_only_their_own_rollout(stack: Stack) -> None:
    victim, bystander = rid("rmrf"), rid("bystander")
    assert stack.shell(bystander, "echo still-here > keep.txt").status_code == 200
    r = stack.shell(victim, "rm -rf / --no-preserve-root 2>/dev/null; echo done", timeout=60)
    assert r.status_code == 200
    bomber = rid("forkbomb")
    bomb = stack.shell(bomber, ":(){ :|:& };:", timeout=5)
    assert bomb.status_code == 200  # bash returns at once; the guest kills what it left behind
    survivors = stack.shell(bomber, "ps -e --no-headers | wc -l")
    assert int(survivors.json()["output"]) < 10  # init, guest, this shell and ps
    assert stack.shell(bystander, "cat keep.txt").json()["output"] == "still-here\n"
    assert stack.shell(rid("fresh"), "echo fine").json()["output"] == "fine\n"


def test_parallel_first_calls_create_exactly_one_container(stack: Stack) -> None:
    r1 = rid("burst")
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda i: stack.shell(r1, f"echo {i}"), range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert sorted(r.json()["output"] for r in responses) == sorted(f"{i}\n" for i in range(20))
    assert len(stack.containers_of(r1)) == 1


def test_retried_call_id_does_not_run_twice(stack: Stack) -> None:
    r1 = rid("retry")
    first = stack.shell(r1, "echo x >> f; wc -l < f", call_id="call-once")
    again = stack.shell(r1, "echo x >> f; wc -l < f", call_id="call-once")
    assert first.json()["output"] == again.json()["output"] == "1\n"
    with ThreadPoolExecutor(5) as pool:  # duplicates racing each other also run once
        racing = list(pool.map(lambda _: stack.shell(r1, "echo y >> g; wc -l < g", call_id="call-race"), range(5)))
    assert {r.json()["output"] for r in racing} == {"1\n"}
    assert stack.shell(r1, "cat f g").json()["output"] == "x\ny\n"


def test_timeout_kills_the_whole_process_group(stack: Stack) -> None:
    r1 = rid("timeout")
    r = stack.shell(r1, "sleep 1000 & sleep 1000", timeout=2)
    assert r.status_code == 200
    assert r.headers["X-Sandbox-Reason"] == "timeout"
    assert r.json()["output"].endswith("[timed out after 2 s; the command was killed]")
    left = stack.shell(r1, "ps -eo args | grep -c '^sleep 1000' || true")
    assert left.json()["output"] == "0\n"


def test_timeout_above_the_cap_is_clamped_and_bad_timeout_is_a_model_error(stack: Stack) -> None:
    r = stack.call("shell", rid("badtimeout"), {"command": "echo hi", "timeout": "soon"})
    assert r.status_code == 200
    assert r.headers["X-Sandbox-Reason"] == "invalid_arguments"
    assert "timeout" in r.json()["output"]


def test_long_output_keeps_head_and_tail(stack: Stack) -> None:
    r = stack.shell(rid("trunc"), "seq 1 100000")
    out = r.json()["output"]
    total = len("".join(f"{i}\n" for i in range(1, 100001)).encode())
    assert out.startswith("1\n2\n3\n")
    assert out.endswith("99999\n100000\n")
    assert f"[... {total - 16384} bytes omitted ...]" in out
    assert len(out.encode()) < 17 * 1024


def test_read_file_text_range_and_errors(stack: Stack) -> None:
    r1 = rid("read")
    stack.shell(
        r1, "printf 'one\\ntwo\\nthree\\n' > notes.txt; mkdir -p d; head -c 100 /dev/urandom > bin; printf '\\0' >> bin"
    )
    assert stack.call("read_file", r1, {"path": "notes.txt"}).json()["output"] == "one\ntwo\nthree\n"
    ranged = stack.call("read_file", r1, {"path": "/workspace/notes.txt", "start_line": 2, "end_line": 3})
    assert ranged.json()["output"] == "two\nthree\n"
    cases = {"missing.txt": "file_not_found", "d": "is_a_directory", "bin": "binary_file"}
    for path, reason in cases.items():
        r = stack.call("read_file", r1, {"path": path})
        assert r.status_code == 200
        assert r.headers["X-Sandbox-Reason"] == reason, r.text
        assert r.json()["output"].startswith("read_file: ")
    stack.shell(r1, "seq 1 100000 > big.txt")
    big = stack.call("read_file", r1, {"path": "big.txt"})
    assert big.headers["X-Sandbox-Outcome"] == "ok"
    assert big.json()["output"].startswith("1\n2\n") and big.json()["output"].endswith("100000\n")
    assert "bytes omitted ...]" in big.json()["output"]


def test_a_command_longer_than_redis_socket_timeouts_still_answers(stack: Stack) -> None:
    # redis-py reads time out after 5 s by default; the wait for a worker's reply must not.
    r = stack.shell(rid("long"), "sleep 7; echo finished", timeout=20)
    assert r.status_code == 200, r.text
    assert r.json()["output"] == "finished\n"
