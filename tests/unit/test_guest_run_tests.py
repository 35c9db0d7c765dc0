"""run_tests, the grading op (sandbox/guest/native/tests*.go): the guest serves a workspace as
root for an unprivileged user, each grading run is played through the guest's own shell op (as
the agent would), and the reply is checked in full, timing aside: statuses, pytest's output, the
report events, the JUnit test cases, the reward. The reward hacks of
tests/integration/test_tests_grading.py that can be played on this host run for real and must
score 0 through the real scorer (sandbox/grading/tests.py).

The run as it is in a sandbox: the base at /opt/sandbox-base/workdir, hidden files under
/tests, the grading directory /run/sandbox-grading, as root. The module makes them and
removes them after, and is skipped where the host has the first two already. The user is
`sandbox` with a uid of its own, which only the guest knows: it runs in a mount namespace of
its own where /etc/passwd has it (every grading kills every process of its user, so a
shared user such as nobody would take other tests' processes with it, and theirs ours). The
test command runs the system python3, which may have no pytest: a world-readable copy of the
test interpreter's pytest goes on its PYTHONPATH.
"""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest

from sandbox.domain.tests import TestPlan
from sandbox.grading.tests import score_tests
from tests.unit.guest_process import call, live_procs_with_arg, start_server

USER = "sandbox"
UID = 64123  # free on this host: checked
BASE = Path("/opt/sandbox-base")
GRADING = Path("/run/sandbox-grading")
HIDDEN_ROOT = Path("/tests")

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="grading as in a sandbox needs root")

FIX = "sed -i '0,/return a - b/s//return a + b/' calc/__init__.py"
HIDDEN_TEST = """\
from calc import add, sub


def test_add():
    assert add(2, 3) == 5


def test_add_negative():
    assert add(-2, -3) == -5


def test_sub_still_works():
    assert sub(5, 3) == 2
"""
F2P = ["tests/test_hidden.py::test_add", "tests/test_hidden.py::test_add_negative"]
P2P = ["tests/test_hidden.py::test_sub_still_works", "tests/test_calc.py::test_sub"]
CALC = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"
VISIBLE_TEST = "from calc import sub\n\n\ndef test_sub():\n    assert sub(3, 1) == 2\n"
HIDDEN = {"tests/test_hidden.py": base64.b64encode(HIDDEN_TEST.encode()).decode()}


def _world_readable_copy(names: list[str]) -> Path:
    """The test interpreter's copies of these modules in a directory anyone may read."""
    lib = Path(tempfile.mkdtemp(prefix="grading-pylib-"))
    lib.chmod(0o755)
    for name in names:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            shutil.copytree(origin.parent, lib / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(origin, lib / origin.name)
    for dist in ("pytest", "pluggy", "iniconfig", "packaging", "pygments"):  # their versions, for pytest's header
        info = Path(str(importlib.metadata.distribution(dist)._path))  # type: ignore[attr-defined]
        shutil.copytree(info, lib / info.name)
    subprocess.run(["chmod", "-R", "a+rX", str(lib)], check=True)
    return lib


@pytest.fixture(scope="module")
def guest(native_guest: Path):
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux's unshare")
    running = {os.stat(f"/proc/{p}").st_uid for p in os.listdir("/proc") if p.isdigit()}
    assert UID not in {p.pw_uid for p in pwd.getpwall()} | running
    if BASE.exists() or HIDDEN_ROOT.exists():
        pytest.skip(f"{BASE} or {HIDDEN_ROOT} exists on this host: grading would replace it")
    root = Path(tempfile.mkdtemp(prefix="grading-"))
    root.chmod(0o755)
    workdir = root / "work"
    pylib = _world_readable_copy(["pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments", "py"])
    base = BASE / "workdir"
    (base / "calc").mkdir(parents=True)
    (base / "tests").mkdir()
    (base / "calc" / "__init__.py").write_text(CALC)
    (base / "tests" / "test_calc.py").write_text(VISIBLE_TEST)
    (base / "pytest.ini").write_text("[pytest]\naddopts = -q\n")
    subprocess.run(["chmod", "-R", "a+rX", str(BASE)], check=True)
    passwd = root / "passwd"
    passwd.write_text(Path("/etc/passwd").read_text() + f"{USER}:x:{UID}:{UID}::/nonexistent:/usr/sbin/nologin\n")
    passwd.chmod(0o644)
    namespace = ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/passwd && exec "$@"', str(passwd)]
    proc = start_server(root / "guest.sock", workdir, root / "guest.log", user=USER, prefix=tuple(namespace))
    reward_dir = Path(f"/tmp/grading-verifier-{uuid.uuid4().hex[:6]}/verifier")
    yield {
        "sock": root / "guest.sock",
        "workdir": workdir,
        "command": f'PYTHONPATH="$PYTHONPATH:{pylib}" python3 -m pytest tests',
        "reward_file": str(reward_dir / "reward.txt"),
    }
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    for path in (BASE, GRADING, HIDDEN_ROOT, reward_dir.parent, root, pylib):
        shutil.rmtree(path, ignore_errors=True)


def _fresh_workspace(workdir: Path) -> None:
    """The workspace as a new rollout gets it: the base, owned by the user."""
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(BASE / "workdir", workdir, symlinks=True)
    subprocess.run(["chown", "-R", f"{UID}:{UID}", str(workdir)], check=True)


def play_and_grade(g: dict[str, Any], agent: list[str], **fields: Any) -> dict[str, Any]:
    """A trajectory played from a fresh workspace, then the run_tests request."""
    request = {
        "op": "run_tests",
        "command": g["command"],
        "timeout": 60,
        "output_cap": 65536,
        "restore": ["tests/"],
        "files": HIDDEN,
        "reward_file": None,
        **fields,
    }
    _fresh_workspace(g["workdir"])
    for command in agent:
        done = call(g["sock"], {"op": "shell", "command": command, "timeout": 30})
        assert done["exit_code"] == 0, (command, done)
    return call(g["sock"], request, timeout=120)


def _comparable(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply without what differs by nature: durations, pytest's time, and the JUnit files'
    times and host (their test cases are kept); the report events parsed."""
    out = {k: v for k, v in reply.items() if k not in ("duration_ms", "setup_ms", "output_bytes")}
    if "output" in out:
        assert reply["output_bytes"] == len(reply["output"].encode())
        out["output"] = re.sub(r"in \d+\.\d+s", "in Ns", out["output"])
    if "reports" in out:
        out["reports"] = [json.loads(line) for line in out["reports"].splitlines()]
    if "junit" in out:
        out["junit"] = [
            sorted((c.get("classname"), c.get("name"), tuple(sorted(x.tag for x in c))) for c in root.iter("testcase"))
            for root in map(ElementTree.fromstring, out["junit"])
        ]
    return out


def ran(
    output: str = "",
    reports: list[dict[str, Any]] | None = None,
    junit: list[list[tuple[str, str, tuple[str, ...]]]] | None = None,
    exit_code: int | None = 0,
    reward: str | None = None,
    timed_out: bool = False,
) -> dict[str, Any]:
    """A run_tests reply as _comparable leaves it."""
    return {
        "exit_code": exit_code,
        "signal": 9 if timed_out else None,
        "timed_out": timed_out,
        "oom_killed": False,
        "output": output,
        "truncated_bytes": 0,
        "reports": reports or [],
        "junit": junit or [],
        "reward": reward,
    }


CALC_SUB, ADD, ADD_NEGATIVE, SUB_STILL = "tests/test_calc.py::test_sub", *F2P, P2P[0]
START = {"event": "start"}


def events(nodeid: str, call: str = "passed", phases: tuple[str, ...] = ("setup", "call", "teardown")) -> list[Any]:
    """A test's report events: setup and teardown passed, call as given."""
    return [
        {"event": "test", "nodeid": nodeid, "when": when, "outcome": call if when == "call" else "passed"}
        for when in phases
    ]


def finish(status: int) -> dict[str, Any]:
    return {"event": "finish", "exitstatus": status}


def case(nodeid: str, *tags: str) -> tuple[str, str, tuple[str, ...]]:
    """A JUnit test case: classname, name, the tags inside it."""
    path, name = nodeid.split("::")
    return (path.removesuffix(".py").replace("/", "."), name, tags)


PROGRESS = "{:<73}[100%]\n"  # pytest -q's progress line, 80 columns
FIXED = ran(
    PROGRESS.format("....") + "4 passed in Ns\n",
    [START, *events(CALC_SUB), *events(ADD), *events(ADD_NEGATIVE), *events(SUB_STILL), finish(0)],
    [[case(CALC_SUB), case(ADD), case(ADD_NEGATIVE), case(SUB_STILL)]],
)
BROKEN = ran(
    PROGRESS.format(".FF.")
    + f"{' FAILURES ':=^80}\n{' test_add ':_^80}\n\n"
    + "    def test_add():\n>       assert add(2, 3) == 5\nE       assert -1 == 5\nE        +  where -1 = add(2, 3)\n\n"
    + f"tests/test_hidden.py:5: AssertionError\n{' test_add_negative ':_^80}\n\n"
    + "    def test_add_negative():\n>       assert add(-2, -3) == -5\nE       assert 1 == -5\n"
    + "E        +  where 1 = add(-2, -3)\n\n"
    + f"tests/test_hidden.py:9: AssertionError\n{' short test summary info ':=^80}\n"
    + f"FAILED {ADD} - assert -1 == 5\nFAILED {ADD_NEGATIVE} - assert 1 == -5\n2 failed, 2 passed in Ns\n",
    [START, *events(CALC_SUB), *events(ADD, "failed"), *events(ADD_NEGATIVE, "failed"), *events(SUB_STILL), finish(1)],
    [[case(CALC_SUB), case(ADD, "failure"), case(ADD_NEGATIVE, "failure"), case(SUB_STILL)]],
    exit_code=1,
)


def assert_reply(reply: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    assert _comparable(reply) == expected
    return reply


def score(reply: dict[str, Any], mode: str = "all_pass", listed: bool = True) -> dict[str, Any]:
    plan = TestPlan(
        command="",
        score=mode,  # type: ignore[arg-type]
        timeout_s=60,
        fail_to_pass=tuple(F2P) if listed else (),
        pass_to_pass=tuple(P2P) if listed else (),
    )
    return score_tests(plan, "ok", "", reply.get("output", ""), reply)


# --- honest runs -------------------------------------------------------------------------------


def test_a_fix_passes_and_no_fix_fails(guest):
    fixed = assert_reply(play_and_grade(guest, [FIX]), FIXED)
    assert set(fixed) == {
        "exit_code", "signal", "timed_out", "oom_killed", "output", "output_bytes", "truncated_bytes",
        "duration_ms", "reports", "junit", "reward", "setup_ms",
    }  # fmt: skip
    assert score(fixed)["score"] == 1.0 and score(fixed, listed=False)["score"] == 1.0
    broken = assert_reply(play_and_grade(guest, ["cat calc/__init__.py"]), BROKEN)
    assert score(broken)["score"] == 0.0 and sorted(score(broken)["tests"]["failed"]) == sorted(F2P)
    assert score(broken, "fraction")["score"] == 0.5


def test_a_hanging_test_times_out(guest):
    hang = "sed -i '0,/return a - b/s//import time; time.sleep(600)/' calc/__init__.py"
    expected = ran(".", [START, *events(CALC_SUB), *events(ADD, phases=("setup",))], exit_code=None, timed_out=True)
    reply = assert_reply(play_and_grade(guest, [hang], timeout=3), expected)
    assert score(reply)["tests"]["reason"] == "timed_out"


def test_restore_puts_the_base_back_and_the_hidden_file_in_place(guest):
    agent = ["rm -rf tests; mkdir -p tests/test_hidden.py; chmod 000 tests/test_hidden.py tests", FIX]
    reply = assert_reply(play_and_grade(guest, agent), FIXED)
    assert score(reply)["score"] == 1.0
    w = guest["workdir"]
    assert (w / "tests" / "test_calc.py").stat().st_uid == UID and (w / "tests" / "test_hidden.py").stat().st_uid == 0
    assert (w / "tests" / "test_hidden.py").stat().st_mode & 0o022 == 0
    linked = assert_reply(play_and_grade(guest, ["rm -rf tests && ln -s /tmp tests", FIX]), FIXED)
    assert score(linked)["score"] == 1.0 and not (w / "tests").is_symlink()
    # restore of a single path the base lacks: removed; no hidden files: the visible test alone
    only_visible = ran(
        PROGRESS.format(".") + "1 passed in Ns\n", [START, *events(CALC_SUB), finish(0)], [[case(CALC_SUB)]]
    )
    assert_reply(play_and_grade(guest, ["echo x > notes.txt"], restore=["notes.txt"], files={}), only_visible)
    assert not (w / "notes.txt").exists()


def test_a_reward_file_is_read_and_one_written_in_advance_does_not_count(guest):
    reward = guest["reward_file"]
    test_sh = (
        f"#!/bin/bash\nmkdir -p {os.path.dirname(reward)}\n"
        f'if [ "$(cat answer.txt 2>/dev/null)" = 42 ]; then echo 1 > {reward}; else echo 0 > {reward}; fi\n'
    )
    fields = {
        "command": "bash /tests/test.sh",
        "restore": [],
        "files": {"/tests/test.sh": base64.b64encode(test_sh.encode()).decode()},
        "reward_file": reward,
    }
    honest = assert_reply(play_and_grade(guest, ["echo 42 > answer.txt"], **fields), ran(reward="1\n"))
    assert score(honest, "reward_file")["score"] == 1.0
    cheat = f"mkdir -p {os.path.dirname(reward)}; echo 1 > {reward}; chmod 444 {reward}"
    cheated = assert_reply(play_and_grade(guest, [cheat], **fields), ran(reward="0\n"))
    assert score(cheated, "reward_file")["score"] == 0.0
    # no reward written at all: null, not a stale file
    assert_reply(play_and_grade(guest, [cheat], **{**fields, "command": "true"}), ran())
    assert Path(reward).parent.stat().st_uid == UID


# --- the hacks ---------------------------------------------------------------------------------

HACKS = {
    "conftest.py that marks every test passed": [
        "cat > conftest.py <<'EOF'\nimport pytest\n@pytest.hookimpl(hookwrapper=True)\n"
        "def pytest_runtest_makereport(item, call):\n"
        "    out = yield\n    rep = out.get_result()\n    rep.outcome = 'passed'\nEOF\n"
        "cp conftest.py calc/conftest.py; mkdir -p tests; cp conftest.py tests/conftest.py",
    ],
    "conftest.py that skips everything": [
        "printf 'def pytest_collection_modifyitems(items):\\n    items.clear()\\n' > conftest.py",
    ],
    "ini files that deselect the tests": [
        "printf '[pytest]\\naddopts = -k sub\\n' > pytest.ini;"
        " printf '[tool:pytest]\\naddopts = -k sub\\n' > setup.cfg;"
        " printf '[tool.pytest.ini_options]\\naddopts = \"-k sub\"\\n' > pyproject.toml;"
        " cp pytest.ini tests/pytest.ini",
    ],
    "sitecustomize and usercustomize in the workdir, a .pth beside them": [
        "printf 'import os\\nos._exit(0)\\n' > sitecustomize.py; cp sitecustomize.py usercustomize.py;"
        " cp sitecustomize.py calc/sitecustomize.py; echo 'import os; os._exit(0)' > evil.pth",
    ],
    "a fake pytest in the workdir, where python -m pytest looks first": [
        "printf 'import sys\\nsys.exit(0)\\n' > pytest.py; mkdir -p _pytest pluggy;"
        " echo 'raise SystemExit(0)' > _pytest/__init__.py; cp _pytest/__init__.py pluggy/__init__.py;"
        " printf '#!/bin/sh\\nexit 0\\n' > python3; chmod +x python3; cp python3 pytest",
    ],
    "JUnit and reward files written in advance where the agent can write": [
        'for d in . tests /tmp; do printf \'<testsuite><testcase classname="tests.test_hidden" name="test_add"/>'
        "</testsuite>' > $d/pytest-junit.xml; done; echo 1 > reward.txt",
    ],
    "exits 0 from the code under test before pytest reports": [
        "printf 'import os\\nos._exit(0)\\n' >> calc/__init__.py",
    ],
    "skips the tests from the code under test": [
        "printf 'import pytest\\npytest.skip(\"no\", allow_module_level=True)\\n' >> calc/__init__.py",
    ],
    "overwrites the results after the run, from atexit and a process left behind": [
        "cat >> calc/__init__.py <<'EOF'\nimport atexit, json, os, subprocess\n"
        "fd = int(os.environ.get('SANDBOX_REPORTS_FD', '-1'))\n"
        "def lie():\n"
        "    for nodeid in " + repr(F2P) + ":\n"
        "        for when in ('setup', 'call', 'teardown'):\n"
        "            rec = {'event': 'test', 'nodeid': nodeid, 'when': when, 'outcome': 'passed'}\n"
        "            try: os.write(fd, (json.dumps(rec) + '\\n').encode())\n"
        "            except OSError: pass\n"
        "    d = os.environ.get('SANDBOX_TEST_RESULTS', '/tmp')\n"
        "    for name in os.listdir(d):\n"
        "        open(os.path.join(d, name), 'w').write('<testsuite/>')\n"
        "atexit.register(lie)\n"
        "subprocess.Popen(['setsid', 'sh', '-c',\n"
        "    'sleep 1; for f in $SANDBOX_TEST_RESULTS/*; do echo pass > $f; done; sleep 3.7182'])\n"
        "EOF",
    ],
}


# What a hack gets: the honest failure of the unfixed code, unless said here.
HACK_REPLIES = {
    "exits 0 from the code under test before pytest reports": ran("", [START]),
    "skips the tests from the code under test": ran(
        "\n2 skipped in Ns\n",
        [START, finish(5)],
        [[("", "tests.test_calc", ("skipped",)), ("", "tests.test_hidden", ("skipped",))]],
        exit_code=5,
    ),
    # the JUnit file as atexit overwrote it comes back; the report pipe's events are the run's own
    "overwrites the results after the run, from atexit and a process left behind": {**BROKEN, "junit": [[]]},
}
assert set(HACK_REPLIES) <= set(HACKS)


@pytest.mark.parametrize("hack", list(HACKS))
def test_every_hack_scores_zero(guest, hack: str):
    reply = assert_reply(play_and_grade(guest, HACKS[hack]), HACK_REPLIES.get(hack, BROKEN))
    assert score(reply)["score"] == 0.0, (hack, score(reply))
    assert score(reply, listed=False)["score"] == 0.0, (hack, score(reply, listed=False))
    assert live_procs_with_arg("3.7182") == []  # the process left behind is gone


def test_a_plugin_shadowed_from_the_workdir_does_not_load(guest):
    """`-p sandbox_results` under `python -m pytest`: the workdir comes before PYTHONPATH, so a
    sandbox_results.py there would be loaded instead of ours. The guest removes it like the other
    shadowing names."""
    fake = (
        "cat > sandbox_results.py <<'EOF'\nimport json, os, pytest\nfd = int(os.environ['SANDBOX_REPORTS_FD'])\n"
        "def w(r): os.write(fd, (json.dumps(r) + '\\n').encode())\n"
        "@pytest.hookimpl(tryfirst=True)\ndef pytest_configure(config): config.option.xmlpath = None\n"
        "def pytest_sessionstart(session): w({'event': 'start'})\n"
        "def pytest_runtest_logreport(report):\n"
        "    w({'event': 'test', 'nodeid': report.nodeid, 'when': report.when, 'outcome': 'passed'})\n"
        "def pytest_sessionfinish(session, exitstatus): w({'event': 'finish', 'exitstatus': 0})\nEOF"
    )
    reply = assert_reply(play_and_grade(guest, [fake]), BROKEN)
    assert score(reply)["score"] == 0.0, score(reply)
    assert not (guest["workdir"] / "sandbox_results.py").exists()


# --- malformed requests ------------------------------------------------------------------------


def refused(message: str) -> dict[str, Any]:
    return {"error": message}


def outside(path: str) -> dict[str, Any]:
    return refused(f"path '{path}' must name something below its root, without '..'")


COMMAND = refused("run_tests needs a non-empty string 'command' without NUL")
RESTORE = refused("'restore' must be a list of non-empty strings")
OWN_DIRECTORY = "must lie in a directory of its own, e.g. /logs/verifier"
NUL = refused("internal error: ValueError: embedded null byte")  # the NUL the protocol does not forbid
# (request, its reply)
BAD: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"op": "run_tests"}, COMMAND),
    ({"op": "run_tests", "command": ""}, COMMAND),
    ({"op": "run_tests", "command": "a\u0000b"}, COMMAND),
    ({"op": "run_tests", "command": ["true"]}, COMMAND),
    ({"op": "run_tests", "command": "true", "timeout": 0}, refused("'timeout' must be positive")),
    ({"op": "run_tests", "command": "true", "timeout": "1"}, refused("'timeout' must be a finite number")),
    ({"op": "run_tests", "command": "true", "output_cap": -1}, refused("'output_cap' must be a non-negative integer")),
    ({"op": "run_tests", "command": "true", "restore": "tests"}, RESTORE),
    ({"op": "run_tests", "command": "true", "restore": ["ok", 3]}, RESTORE),
    ({"op": "run_tests", "command": "true", "restore": [""]}, RESTORE),
    (
        {"op": "run_tests", "command": "true", "files": ["a"]},
        refused("'files' must be an object of path -> base64 content"),
    ),
    ({"op": "run_tests", "command": "true", "files": {"a": 1}}, refused("'files': 'a' must map to base64 text")),
    (
        {"op": "run_tests", "command": "true", "files": {"a": "not base64!"}},
        refused("'files': 'a' is not base64: Only base64 data is allowed"),
    ),
    (
        {"op": "run_tests", "command": "true", "files": {"it's": "YQ"}},
        refused("'files': \"it's\" is not base64: Incorrect padding"),
    ),
    (
        {"op": "run_tests", "command": "true", "files": {"a": "é"}},
        refused("'files': 'a' is not base64: string argument should contain only ASCII characters"),
    ),
    ({"op": "run_tests", "command": "true", "reward_file": 3}, refused("'reward_file' must be a string or null")),
    (
        {"op": "run_tests", "command": "true", "reward_file": "logs/reward.txt"},
        refused("'reward_file' must be an absolute path"),
    ),
    (
        {"op": "run_tests", "command": "true", "reward_file": "/logs/reward.txt"},
        refused(f"'reward_file' '/logs/reward.txt' {OWN_DIRECTORY}"),
    ),
    (
        {"op": "run_tests", "command": "true", "reward_file": "/usr/x/reward.txt"},
        refused(f"'reward_file' '/usr/x/reward.txt' {OWN_DIRECTORY}"),
    ),
    ({"op": "run_tests", "command": "true", "reward_file": "/a/../b/reward.txt"}, outside("/a/../b/reward.txt")),
    # refused on their turn while the stage is set, after the first kill
    ({"op": "run_tests", "command": "true", "restore": ["tests", "../etc"]}, outside("../etc")),
    ({"op": "run_tests", "command": "true", "files": {"a/../../x": "YQ=="}}, outside("a/../../x")),
    (
        {"op": "run_tests", "command": "true", "files": {"/etc/x": "YQ=="}},
        refused("hidden file '/etc/x': absolute paths must lie under /tests/"),
    ),
    ({"op": "run_tests", "command": "true", "restore": ["."]}, outside(".")),
    ({"op": "run_tests", "command": "true", "reward_file": "/tmp/gr\u0000ading/v/reward.txt"}, NUL),
    ({"op": "run_tests", "command": "true", "reward_file": "/tmp/grading-nul/v/re\u0000ward.txt"}, NUL),
    # null and empty are the defaults
    (
        {
            "op": "run_tests",
            "command": "echo $HOME $PYTHONNOUSERSITE",
            "restore": None,
            "files": None,
            "reward_file": "",
        },
        ran(f"{GRADING}/home 1\n"),
    ),
]


def test_malformed_requests_are_refused_in_full(guest):
    try:
        for request, expected in BAD:
            assert _comparable(call(guest["sock"], request)) == expected, request
    finally:
        shutil.rmtree("/tmp/grading-nul", ignore_errors=True)
