"""The product on any image (issue 17): the guest needs nothing from an image, so tool calls,
the trainer API, grading by tests, the docker exec fallback and the guest's restart work the same
on the default sandbox image, on a Debian minbase without python3 and on busybox alone (no bash:
commands run under its sh, and a command that needed bash says so). Each image is built first by
images/build.sh (about 0.1 s when up to date)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.stack import ROOT, Stack, wait_until

pytestmark = pytest.mark.integration

# variant of images/build.sh -> its name's key in images/tags.env
VARIANTS = {"default": "IMAGE_SANDBOX", "nopython": "IMAGE_NOPYTHON", "busybox": "IMAGE_BUSYBOX"}
NO_BASH_NOTE = "(no bash in this image: commands run with /bin/sh)"


def tags() -> dict[str, str]:
    lines = (ROOT / "images" / "tags.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


class Rollouts:
    """The image's environment and the rollouts a test starts on it, released at its end."""

    def __init__(self, stack: Stack, variant: str, env: str) -> None:
        self.stack, self.variant, self.env, self.ids = stack, variant, env, []

    def new(self, tag: str) -> str:
        rollout = f"img-{self.variant}-{tag}-{uuid.uuid4().hex[:6]}"
        self.ids.append(rollout)
        return rollout

    def shell(self, rollout: str, command: str, **kw: Any) -> httpx.Response:
        return self.stack.shell(rollout, command, item={"environment": self.env}, **kw)

    def call(self, tool: str, rollout: str, arguments: dict[str, Any]) -> httpx.Response:
        return self.stack.call(tool, rollout, arguments, item={"environment": self.env})

    def exec(self, rollout: str, **body: Any) -> httpx.Response:
        return self.stack.http.post(f"/v1/rollouts/{rollout}/exec", json=body, headers=self.item_header)

    @property
    def item_header(self) -> dict[str, str]:
        return {"X-Rollout-Item": f'{{"environment": "{self.env}"}}'}

    def release(self) -> None:
        for rollout in self.ids:
            r = self.stack.http.delete(f"/v1/rollouts/{rollout}")
            assert (r.status_code, r.json()["state"]) == (200, "released"), r.text
            wait_until(lambda r=rollout: self.stack.containers_of(r) == [], timeout_s=30)


@pytest.fixture(scope="module", params=list(VARIANTS))
def image_env(request: pytest.FixtureRequest, stack: Stack) -> str:
    """The variant's image, built (or found up to date) by its script, as an environment."""
    variant = request.param
    done = subprocess.run(
        ["bash", str(ROOT / "images" / "build.sh"), "--variant", variant], capture_output=True, text=True
    )
    assert done.returncode == 0, f"images/build.sh --variant {variant}:\n{done.stdout}{done.stderr}"
    env = f"any-image-{variant}-{uuid.uuid4().hex[:6]}"
    r = stack.put_environment(env, {"image": tags()[VARIANTS[variant]], "max_tool_calls": 200})
    assert r.status_code == 200, r.text
    return f"{variant}:{env}"


@pytest.fixture
def rollouts(stack: Stack, image_env: str) -> Iterator[Rollouts]:
    variant, env = image_env.split(":", 1)
    made = Rollouts(stack, variant, env)
    yield made
    made.release()


def test_shell_echo_pipeline_exit_codes_and_timeout(rollouts: Rollouts) -> None:
    r1 = rollouts.new("shell")
    r = rollouts.shell(r1, "pwd; id -un; echo out; echo err >&2")
    assert (r.status_code, r.json()["output"]) == (200, "/workspace\nsandbox\nout\nerr\n"), r.text
    assert r.headers["X-Sandbox-Exit-Code"] == "0"
    r = rollouts.shell(r1, "printf 'b\\na\\nb\\n' | sort -u | tr '\\n' , | wc -c")
    assert r.json()["output"].strip() == "4"
    r = rollouts.shell(r1, "echo partial; exit 3")
    assert r.json()["output"] == "partial\n[exit code 3]"
    assert (r.headers["X-Sandbox-Reason"], r.headers["X-Sandbox-Exit-Code"]) == ("nonzero_exit", "3")
    slow = rollouts.shell(r1, "sleep 30", timeout=1)
    assert slow.headers["X-Sandbox-Reason"] == "timeout"
    assert rollouts.shell(r1, "echo alive").json()["output"] == "alive\n"


def test_a_bash_only_command_runs_under_bash_or_says_there_is_none(rollouts: Rollouts) -> None:
    r1 = rollouts.new("bashism")
    out = rollouts.shell(r1, "x=ab; echo ${x^^}").json()["output"]
    if rollouts.variant == "busybox":
        assert out.endswith(f"\n{NO_BASH_NOTE}\n[exit code 2]"), out
        plain = rollouts.shell(r1, "echo plain; nosuchprogram").json()["output"]
        assert NO_BASH_NOTE not in plain and plain.startswith("plain\n")  # only when bash was the cause
    else:
        assert out == "AB\n"


def test_read_file_whole_ranges_and_not_found(rollouts: Rollouts) -> None:
    r1 = rollouts.new("read")
    assert rollouts.shell(r1, "printf 'one\\ntwo\\nthree\\n' > notes.txt").status_code == 200
    assert rollouts.call("read_file", r1, {"path": "notes.txt"}).json()["output"] == "one\ntwo\nthree\n"
    ranged = rollouts.call("read_file", r1, {"path": "/workspace/notes.txt", "start_line": 2, "end_line": 3})
    assert ranged.json()["output"] == "two\nthree\n"
    missing = rollouts.call("read_file", r1, {"path": "missing.txt"})
    assert missing.headers["X-Sandbox-Reason"] == "file_not_found"
    assert missing.json()["output"].startswith("read_file: ")


def test_trainer_exec_and_files(rollouts: Rollouts) -> None:
    stack, r1 = rollouts.stack, rollouts.new("trainer")
    got = rollouts.exec(r1, command="id -un; echo oops >&2; exit 4")
    assert got.status_code == 200, got.text
    assert (got.json()["exit_code"], got.json()["stdout"], got.json()["stderr"]) == (4, "sandbox\n", "oops\n")
    argv = rollouts.exec(r1, argv=["echo", "a b"], source="trainer").json()
    assert (argv["exit_code"], argv["stdout"], argv["stderr"]) == (0, "a b\n", "")

    base = f"/v1/rollouts/{r1}/files"
    put = stack.http.put(base, params={"path": "dir/note.txt"}, content=b"hello\x00bytes\n")
    assert put.status_code == 200, put.text
    assert put.json()["path"] == "/workspace/dir/note.txt"
    assert stack.http.get(base, params={"path": "dir/note.txt"}).content == b"hello\x00bytes\n"
    owner = rollouts.exec(r1, command="stat -c '%U' dir/note.txt", source="trainer").json()
    assert owner["stdout"] == "sandbox\n"

    tree = io.BytesIO()
    with tarfile.open(fileobj=tree, mode="w") as tar:
        for name, data in {"pkg/a.txt": b"A\n", "pkg/sub/b.txt": b"B\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    unpacked = stack.http.put(
        base, params={"path": "src"}, content=tree.getvalue(), headers={"Content-Type": "application/x-tar"}
    )
    assert unpacked.status_code == 200, unpacked.text
    assert rollouts.shell(r1, "cat src/pkg/a.txt src/pkg/sub/b.txt").json()["output"] == "A\nB\n"
    back = stack.http.get(base, params={"path": "src"})
    assert back.status_code == 200, back.text
    assert back.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(back.content)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert files == {"./pkg/a.txt": b"A\n", "./pkg/sub/b.txt": b"B\n"}
    missing = stack.http.get(base, params={"path": "nope.txt"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "file_not_found")


RUN_TESTS = 'test "$(cat answer.txt 2>/dev/null)" = 42 && echo PASS || { echo FAIL; exit 1; }\n'


def test_tests_grading_without_python(rollouts: Rollouts) -> None:
    fixed, untouched = rollouts.new("fixed"), rollouts.new("untouched")
    assert rollouts.shell(fixed, "echo 42 > answer.txt").status_code == 200
    assert rollouts.shell(untouched, "echo 41 > answer.txt").status_code == 200
    item = {
        "grader": "tests",
        "tests": {"command": "sh run_tests.sh", "files": {"run_tests.sh": RUN_TESTS}, "score": "all_pass"},
    }
    scores = {}
    for rollout in (fixed, untouched):
        body = {"sample": {"output_text": "done"}, "item": item, "trace_id": rollout}
        r = rollouts.stack.http.post("/v1/grade", json=body, timeout=300)
        assert r.status_code == 200, r.text
        scores[rollout] = (r.json()["score"], r.json()["tests"]["exit_code"], r.json()["tests"]["output_tail"])
    assert scores[fixed] == (1.0, 0, "PASS\n"), scores
    assert scores[untouched] == (0.0, 1, "FAIL\n"), scores


def guest_pids(container: Any) -> list[int]:
    """Host pids of the container's serving guest (not its supervisor), from the engine's ps."""
    top = container.top(ps_args="-eo pid,args")
    pid_col, args_col = top["Titles"].index("PID"), top["Titles"].index("COMMAND")
    return [int(p[pid_col]) for p in top["Processes"] if "sandbox-guest serve" in p[args_col]]


def test_guest_restarted_after_a_kill_and_docker_exec_fallback(rollouts: Rollouts) -> None:
    stack, r1 = rollouts.stack, rollouts.new("guest")
    assert rollouts.shell(r1, "echo x > f").status_code == 200
    (container,) = stack.containers_of(r1)
    (first,) = guest_pids(container)
    os.kill(first, signal.SIGKILL)  # from outside, as root: the image needs no kill or pgrep
    r = rollouts.shell(r1, "cat f; id -un")
    assert (r.status_code, r.json()["output"]) == (200, "x\nsandbox\n"), r.text
    restarted = wait_until(lambda: [p for p in guest_pids(container) if p != first], timeout_s=20)
    assert len(restarted) == 1

    # A guest that runs but cannot be reached: the container is alive, so docker exec serves.
    sock = "/run/sandbox-guest/guest.sock"
    wait_until(lambda: container.exec_run(["test", "-S", sock], user="0").exit_code == 0)
    time.sleep(0.3)  # let the restarted guest finish binding before its socket is removed
    before = stack.metric("sandbox_guest_fallbacks_total", {}, source="worker")
    assert container.exec_run(["rm", "-f", sock], user="0").exit_code == 0
    r = rollouts.shell(r1, "cat f; id -un", timeout=5)
    assert (r.status_code, r.json()["output"]) == (200, "x\nsandbox\n"), r.text
    assert stack.metric("sandbox_guest_fallbacks_total", {}, source="worker") == before + 1
    slow = rollouts.shell(r1, "sleep 30", timeout=1)  # the deadline holds on the fallback path too
    assert slow.headers["X-Sandbox-Reason"] == "timeout"
