"""The guest's shell op: output, exit statuses, the fixed environment, deadlines and the processes
a command leaves, run as a real process over its real unix socket."""

from __future__ import annotations

import os
import pwd
import resource
import threading
import time
from pathlib import Path
from typing import Any

from tests.unit.guest_process import HOME, USER, call, live_procs_with_arg, normalized, raw_call, wire

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def shell(
    g: dict[str, Any], command: str, timeout: float = 10, cap: int = 65536, cwd: str | None = None
) -> dict[str, Any]:
    return call(g["sock"], {"op": "shell", "command": command, "timeout": timeout, "output_cap": cap, "cwd": cwd})


# --- shell ----------------------------------------------------------------------------------------


def test_echo_and_exit_code(guest):
    resp = shell(guest, "echo hello")
    assert resp["output"] == "hello\n" and resp["exit_code"] == 0
    assert resp["signal"] is None and resp["timed_out"] is False and resp["oom_killed"] is False
    assert resp["output_bytes"] == 6 and resp["truncated_bytes"] == 0
    assert isinstance(resp["duration_ms"], float)
    assert shell(guest, "exit 7")["exit_code"] == 7


def test_stdout_and_stderr_interleave_in_write_order(guest):
    resp = shell(guest, "for i in 1 2 3; do echo out$i; echo err$i >&2; done")
    assert resp["output"] == "out1\nerr1\nout2\nerr2\nout3\nerr3\n"


def test_killed_by_signal(guest):
    resp = shell(guest, "kill -TERM $$")
    assert resp["exit_code"] is None and resp["signal"] == 15 and resp["timed_out"] is False


def test_clean_environment_cwd_and_stdin(guest):
    home = pwd.getpwnam(USER).pw_dir
    out = shell(guest, "env; pwd; cat; echo done")["output"]
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert "GUEST_TEST_LEAK" not in env
    assert env["HOME"] == home and env["USER"] == USER and env["LOGNAME"] == USER
    assert env["LANG"] == "C.UTF-8" and env["TERM"] == "dumb" and env["SHELL"] == "/bin/bash"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert out.splitlines()[-2:] == [str(guest["workdir"]), "done"]  # cat got EOF at once
    assert shell(guest, "pwd", cwd="/tmp")["output"] == "/tmp\n"
    (guest["workdir"] / "pkg").mkdir(exist_ok=True)
    assert shell(guest, "pwd", cwd="pkg")["output"] == f"{guest['workdir']}/pkg\n"
    missing = shell(guest, "pwd", cwd="/no/such/dir")
    assert missing["output"] == home + "\n" and missing["exit_code"] == 0


def test_head_tail_truncation(guest):
    cmd = "printf 'a%.0s' $(seq 60); printf 'm%.0s' $(seq 100); printf 'z%.0s' $(seq 40)"
    resp = shell(guest, cmd, cap=51)
    assert resp["output"] == "a" * 25 + "\n[... 149 bytes omitted ...]\n" + "z" * 26
    assert resp["output_bytes"] == 200 and resp["truncated_bytes"] == 149
    exact = shell(guest, cmd, cap=200)
    assert exact["output"] == "a" * 60 + "m" * 100 + "z" * 40 and exact["truncated_bytes"] == 0


def test_truncation_inside_a_utf8_character(guest):
    resp = shell(guest, "printf '\\303\\251\\303\\251\\303\\251\\303\\251'", cap=3)  # éééé
    assert resp["output"] == "\ufffd\n[... 5 bytes omitted ...]\n\u00e9"
    assert resp["output_bytes"] == 8 and resp["truncated_bytes"] == 5


def test_timeout_kills_the_whole_group(guest):
    started = time.monotonic()
    resp = shell(guest, "sleep 41.01 & sleep 41.01", timeout=1)
    elapsed = time.monotonic() - started
    assert resp["timed_out"] is True and resp["exit_code"] is None and resp["signal"] == 9
    assert 0.9 < elapsed < 3.0
    assert live_procs_with_arg("41.01") == []


def test_background_child_does_not_hold_the_request(guest):
    started = time.monotonic()
    resp = shell(guest, "sleep 41.02 & echo hi", timeout=30)
    assert time.monotonic() - started < 1.5
    assert resp["output"] == "hi\n" and resp["exit_code"] == 0 and resp["timed_out"] is False
    assert live_procs_with_arg("41.02") == []


def test_spawn_storm_is_fully_killed(guest):
    # Self-limiting (spawners stop after ~3 s, sleeps expire) so a regression cannot run away.
    storm = "f() { e=$((SECONDS+3)); while [ $SECONDS -lt $e ]; do sleep 41.03 & done; }"
    resp = shell(guest, storm + "; f & f & f", timeout=0.5)
    assert resp["timed_out"] is True
    assert live_procs_with_arg("41.03") == []


def test_huge_output_keeps_guest_memory_small(guest):
    resp = shell(guest, "head -c 50000000 /dev/zero | tr '\\0' x", timeout=30, cap=10000)
    assert resp["output_bytes"] == 50_000_000
    assert resp["truncated_bytes"] == 50_000_000 - 10000
    assert resp["output"] == "x" * 5000 + "\n[... 49990000 bytes omitted ...]\n" + "x" * 5000
    status = Path(f"/proc/{guest['proc'].pid}/status").read_text()
    peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    assert peak_kb < 60 * 1024


def guest_zombie_children(g: dict[str, Any]) -> list[int]:
    """Zombies whose parent is the guest: adopted orphans it failed to reap."""
    found = []
    for name in os.listdir("/proc"):
        try:
            stat_line = Path(f"/proc/{name}/stat").read_bytes()
        except (OSError, ValueError):
            continue
        fields = stat_line[stat_line.rindex(b")") + 2 :].split()
        if fields[0] == b"Z" and int(fields[1]) == g["proc"].pid:
            found.append(int(name))
    return found


def test_setsid_escapees_are_killed_when_their_call_returns(guest):
    escape = "setsid sleep 41.05 >/dev/null 2>&1 </dev/null & (setsid sleep 41.05 </dev/null >/dev/null 2>&1 &)"
    resp = shell(guest, escape + "; sleep 0.2; echo started")
    assert resp["output"] == "started\n" and resp["exit_code"] == 0
    assert live_procs_with_arg("41.05") == []
    assert guest_zombie_children(guest) == []


def test_cleanup_after_a_call_spares_a_parallel_call(guest):
    results: dict[str, dict[str, Any]] = {}
    slow = threading.Thread(
        target=lambda: results.update(slow=shell(guest, "setsid sleep 0.8 & p=$!; sleep 1; wait $p; echo done $?"))
    )
    slow.start()
    time.sleep(0.3)
    results["quick"] = shell(guest, "setsid sleep 41.06 >/dev/null 2>&1 </dev/null & sleep 0.1; echo quick")
    assert slow.is_alive()  # the quick call's cleanup ran while the slow one was running
    slow.join()
    assert results["quick"]["output"] == "quick\n"
    assert results["slow"]["output"] == "done 0\n"  # its own setsid child was not killed
    assert live_procs_with_arg("41.06") == []


def test_commands_are_the_oom_killers_first_choice_and_bash_env_is_gone(guest):
    out = shell(guest, "cat /proc/self/oom_score_adj /proc/$$/oom_score_adj; env")["output"].splitlines()
    assert out[:2] == ["1000", "1000"]
    assert not [line for line in out if line.startswith("BASH_ENV=")]
    assert Path(f"/proc/{guest['proc'].pid}/oom_score_adj").read_text().strip() != "1000"


# --- replies in full, byte for byte ---------------------------------------------------------------


def done(
    output: str,
    exit_code: int | None = 0,
    signal: int | None = None,
    timed_out: bool = False,
    output_bytes: int | None = None,
    truncated_bytes: int = 0,
) -> dict[str, Any]:
    """A shell reply (duration normalized); output_bytes is the output's own size unless given."""
    size = len(output.encode()) if output_bytes is None else output_bytes
    return {
        "exit_code": exit_code,
        "signal": signal,
        "timed_out": timed_out,
        "oom_killed": False,
        "output": output,
        "output_bytes": size,
        "truncated_bytes": truncated_bytes,
        "duration_ms": 0,
    }


def own_status() -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":\t" in line)


def shell_cases(w: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(request, the reply it gets) with the workdir w; the guest runs as the test's own user."""
    seq = "".join(f"{i}\n" for i in range(1, 200001))
    seq_bytes = len(seq) + 10  # then é, a stray \xff, " end ", a cut-off 3-byte character
    umask = os.umask(0)
    os.umask(umask)
    own = own_status()
    if os.getuid() == 0:  # root switches to the user's groups; anyone else keeps their own
        groups = "".join(f"{g} " for g in sorted(set(os.getgrouplist(USER, pwd.getpwnam(USER).pw_gid))))
    else:
        groups = own["Groups"]
    status = (
        f"Groups:\t{groups}\nSigBlk:\t{'0' * 16}\nSigIgn:\t{'0' * 16}\n"
        + "".join(f"{k}:\t{own[k]}\n" for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"))
        + f"NoNewPrivs:\t{own['NoNewPrivs']}\n"
    )
    env = (
        f"SHELL=/bin/bash\nPWD={w}\nLOGNAME={USER}\nHOME={HOME}\nLANG=C.UTF-8\nTERM=dumb\nUSER={USER}\n"
        f"SHLVL=1\nPATH={PATH}\nOLDPWD=/\n_=/usr/bin/env\n"
    )
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # the guest's parent's, not Go's raised one
    return [
        (
            {"op": "shell", "command": "seq 1 200000; printf '\\303\\251\\377 end \\342\\202'", "output_cap": 1001},
            done(
                seq[:500] + f"\n[... {seq_bytes - 1001} bytes omitted ...]\n" + seq[-491:] + "\u00e9\ufffd end \ufffd",
                output_bytes=seq_bytes,
                truncated_bytes=seq_bytes - 1001,
            ),
        ),
        (
            {"op": "shell", "command": "head -c 3000000 /dev/zero | tr '\\0' y", "output_cap": 16 * 1024 * 1024 + 5},
            done("y" * 3_000_000),
        ),
        (
            {"op": "shell", "command": "printf '\\303\\251\\303\\251\\303\\251\\303\\251'", "output_cap": 3},
            done("\ufffd\n[... 5 bytes omitted ...]\n\u00e9", output_bytes=8, truncated_bytes=5),
        ),
        ({"op": "shell", "command": "echo out; echo err >&2; exit 3"}, done("out\nerr\n", 3)),
        (
            {"op": "shell", "command": "printf 'ctl \\001\\033\\b\\f\\t\\r\\n \" \\\\ < > & \\342\\200\\250 \\177'"},
            done('ctl \x01\x1b\b\f\t\r\n " \\ < > & \u2028 \x7f'),
        ),
        ({"op": "shell", "command": "kill -TERM $$"}, done("", None, 15)),
        ({"op": "shell", "command": "sleep 5", "timeout": 0.3}, done("", None, 9, timed_out=True)),
        ({"op": "shell", "command": "sleep 0.2 & echo bg", "timeout": 10}, done("bg\n")),
        (
            {
                "op": "shell",
                "command": "env; pwd; cat; umask; ulimit -n; ls /proc/self/fd; cat /proc/self/oom_score_adj",
            },
            done(f"{env}{w}\n{umask:04o}\n{nofile}\n0\n1\n2\n3\n1000\n"),
        ),
        (
            {
                "op": "shell",
                "command": "grep -E '^(Sig(Ign|Blk)|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Groups)' /proc/self/status",
            },
            done(status),
        ),
        ({"op": "shell", "command": "pwd; echo $PWD", "cwd": "sub"}, done(f"{w}/sub\n{w}/sub\n")),
        ({"op": "shell", "command": "pwd", "cwd": "/no/such/dir"}, done(f"{HOME}\n")),
        ({"op": "shell", "command": "pwd", "cwd": ""}, done(f"{w}\n")),
        ({"op": "shell", "command": "exit 300"}, done("", 44)),
        (
            {"op": "shell", "command": "echo x", "output_cap": 0},
            done("\n[... 2 bytes omitted ...]\n", output_bytes=2, truncated_bytes=2),
        ),
        ({"op": "shell", "command": "echo x", "output_cap": 10**30}, done("x\n")),
        ({"op": "shell", "command": "echo x", "timeout": 10**3, "cwd": None, "extra": [1, 2]}, done("x\n")),
    ]


def test_shell_replies_in_full(guest):
    """Every field, the JSON encoding (control characters escaped, the rest as UTF-8), key order."""
    (guest["workdir"] / "sub").mkdir(exist_ok=True)
    for request, expected in shell_cases(str(guest["workdir"])):
        reply = raw_call(guest["sock"], wire(request))
        assert normalized(reply) == wire(expected), request
