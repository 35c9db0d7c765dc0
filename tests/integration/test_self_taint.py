"""A hostile model must not be able to get its own rollout marked infra-tainted (DESIGN.md 5b).

Each test runs the attack for real against the stack: whatever the model's commands or
arguments cause is answered 200 as the model's own error, and the rollout stays clean (a
tainted rollout is discarded by the trainer, so its zero reward would be escaped). Also:
nothing the sandbox user starts outlives its call (5c), and read_file reads as that user.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.stack import Stack, answer_code

pytestmark = pytest.mark.integration

SANDBOX_UID = "1000"  # the image's `sandbox` user


def rid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def tainted(stack: Stack, rollout: str) -> bool:
    return bool(stack.http.get(f"/v1/rollouts/{rollout}").json()["infra_tainted"])


def sandbox_procs(stack: Stack, rollout: str) -> list[str]:
    """The sandbox user's live processes, as the engine sees them from outside the container."""
    container = stack.containers_of(rollout)[0]
    rows = container.top(ps_args="-eo pid,uid,stat,args")["Processes"] or []
    return [" ".join(row) for row in rows if row[1] == SANDBOX_UID and not row[2].startswith("Z")]


def container_cpu_s(stack: Stack, rollout: str) -> float:
    """CPU seconds the rollout's container has used so far (the engine's own count)."""
    stats = stack.containers_of(rollout)[0].stats(stream=False)
    return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9


# --- read_file: the model's path, the model's error ---------------------------------------


def test_reading_proc_self_mem_is_the_models_error(stack: Stack) -> None:
    r1 = rid("procmem")
    r = stack.call("read_file", r1, {"path": "/proc/self/mem"})
    assert r.status_code == 200, r.text
    assert (r.headers["X-Sandbox-Outcome"], r.headers["X-Sandbox-Reason"]) == ("model_error", "unreadable_file")
    assert r.json()["output"].startswith("read_file: could not read /proc/self/mem")
    assert stack.call("read_file", r1, {"path": "/proc/self/status"}).headers["X-Sandbox-Outcome"] == "ok"
    assert not tainted(stack, r1)


def test_read_file_reads_as_the_sandbox_user_not_as_root(stack: Stack) -> None:
    r1 = rid("shadow")
    setup = "ln -s /etc/shadow shadow-link; printf 'one\\ntwo\\nthree\\n' > notes.txt; printf 'ELF\\0x' > blob"
    assert stack.shell(r1, setup).status_code == 200
    denied = stack.shell(r1, "cat /etc/shadow")
    assert "Permission denied" in denied.json()["output"]  # what the shell may do, read_file may do
    for path in ("/etc/shadow", "shadow-link", "/proc/1/environ"):
        r = stack.call("read_file", r1, {"path": path})
        assert r.status_code == 200, r.text
        assert r.headers["X-Sandbox-Reason"] == "permission_denied", (path, r.text)
        assert r.json()["output"] == f"read_file: permission denied: {path}"
    ranged = stack.call("read_file", r1, {"path": "notes.txt", "start_line": 2, "end_line": 3})
    assert ranged.json()["output"] == "two\nthree\n"
    assert stack.call("read_file", r1, {"path": "blob"}).headers["X-Sandbox-Reason"] == "binary_file"
    assert stack.call("read_file", r1, {"path": "nope.txt"}).headers["X-Sandbox-Reason"] == "file_not_found"
    assert not tainted(stack, r1)


# --- nothing the sandbox user starts survives its call ------------------------------------


def test_setsid_spinners_do_not_outlive_their_call(stack: Stack) -> None:
    r1 = rid("spinners")
    spin = "setsid sh -c 'while :; do :; done' >/dev/null 2>&1 </dev/null &"
    r = stack.shell(r1, f"for i in 1 2 3 4; do {spin} done; echo started", timeout=10)
    assert r.status_code == 200 and r.json()["output"] == "started\n", r.text
    assert sandbox_procs(stack, r1) == []
    # Four spinners left running would burn the container's whole CPU share (1 core).
    cpu_before, started = container_cpu_s(stack, r1), time.monotonic()
    time.sleep(1.0)
    used = container_cpu_s(stack, r1) - cpu_before
    assert used < 0.2 * (time.monotonic() - started), used
    for _ in range(3):
        quick = stack.shell(r1, "echo fast")
        assert quick.json()["output"] == "fast\n"
        assert float(quick.headers["X-Sandbox-Duration-Ms"]) < 1000
    assert not tainted(stack, r1)


def test_a_setsid_fork_bomb_stays_the_models_problem(stack: Stack) -> None:
    r1 = rid("setsidbomb")
    bomb = stack.shell(r1, "setsid bash -c ':(){ :|:& };:' >/dev/null 2>&1 </dev/null & echo launched", timeout=10)
    after = [stack.shell(r1, "echo after", timeout=10) for _ in range(3)]
    assert [answer_code(r) for r in (bomb, *after)] == ["200 ok"] * 4, [r.text for r in (bomb, *after)]
    assert bomb.json()["output"] == "launched\n"
    assert [r.json()["output"] for r in after] == ["after\n"] * 3  # the bomb died with its call
    assert sandbox_procs(stack, r1) == []
    assert not tainted(stack, r1)


def test_one_calls_cleanup_spares_a_parallel_call_of_the_same_rollout(stack: Stack) -> None:
    r1 = rid("parallel")
    assert stack.shell(r1, "true").status_code == 200
    # The slow call's own setsid child is its descendant while it runs: not the other's to kill.
    slow_cmd = "setsid sleep 2 & p=$!; sleep 3; wait $p; echo done $?"
    quick_cmd = "setsid sleep 100 >/dev/null 2>&1 </dev/null & sleep 0.3; echo hi"
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(lambda: (stack.shell(r1, slow_cmd, timeout=20), time.monotonic()))
        time.sleep(1.0)
        quick = pool.submit(lambda: (stack.shell(r1, quick_cmd, timeout=10), time.monotonic()))
        (slow_r, slow_end), (quick_r, quick_end) = slow.result(), quick.result()
    assert quick_end < slow_end  # the quick call's cleanup ran while the slow call was running
    assert quick_r.json()["output"] == "hi\n", quick_r.text
    assert slow_r.json()["output"] == "done 0\n", slow_r.text
    assert sandbox_procs(stack, r1) == []
    assert not tainted(stack, r1)


def test_calls_beside_a_running_fork_bomb_are_answered_as_the_models(stack: Stack) -> None:
    r1 = rid("fullpids")
    assert stack.shell(r1, "printf 'x\\n' > f").status_code == 200
    with ThreadPoolExecutor(8) as pool:
        bomb = pool.submit(stack.shell, r1, ":(){ :|:& };:", timeout=8)
        time.sleep(3)  # the process table is full now, until the bomb's deadline
        beside = list(pool.map(lambda i: stack.shell(r1, "echo beside", timeout=5), range(4)))
        beside += list(pool.map(lambda i: stack.call("read_file", r1, {"path": "f"}), range(3)))
        answers = [bomb.result(), *beside]
    assert [r.status_code for r in answers] == [200] * len(answers), [r.text for r in answers]
    assert {r.headers["X-Sandbox-Reason"] for r in beside} <= {"none", "pids_exhausted"}
    assert stack.shell(r1, "echo after").json()["output"] == "after\n"
    assert not tainted(stack, r1)


# --- memory: the container's OOM killer takes the model's processes, not the guest --------


def test_many_small_memory_hogs_do_not_kill_the_guest(stack: Stack) -> None:
    r1 = rid("oomhogs")
    assert stack.shell(r1, "true").status_code == 200
    hog = "python3 -c 'x = bytearray(6 * 2**20); import time; time.sleep(12)'"
    attack = f"for i in $(seq 200); do {hog} 2>/dev/null & done; wait; echo finished"
    answers: list[httpx.Response] = []
    with ThreadPoolExecutor(4) as pool:
        hogs = pool.submit(stack.shell, r1, attack, timeout=60)
        time.sleep(6)  # while the hogs fill the container's memory
        answers += pool.map(lambda _: stack.shell(r1, "echo alive", timeout=20), range(3))
        answers.append(hogs.result())
    answers += [stack.shell(r1, "echo alive", timeout=20) for _ in range(3)]
    answers.append(stack.call("read_file", r1, {"path": "/proc/self/status", "end_line": 1}))
    # Every answer is 200; model errors (OOM kills, a full process table) are allowed.
    assert [r.status_code for r in answers] == [200] * len(answers), [answer_code(r) for r in answers]
    assert answers[-2].json()["output"] == "alive\n"
    # The attack really filled the memory: the container's OOM killer fired.
    events = stack.shell(r1, "cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null")
    kills = [int(line.split()[1]) for line in events.json()["output"].splitlines() if line.startswith("oom_kill ")]
    assert kills and kills[0] > 0, events.text
    assert not tainted(stack, r1)
