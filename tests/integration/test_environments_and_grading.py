"""Coding-agent environments (git at a commit, dir, tar) and the trajectory grader, for real."""

from __future__ import annotations

import io
import subprocess
import tarfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.stack import Stack

pytestmark = pytest.mark.integration


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def repo(stack: Stack) -> tuple[Path, str, str]:
    """A repository with history the agent must not see: a future fix, a branch, a tag, a stash, a remote."""
    path = stack.workspace_root / f"repo-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "dev@example.com")
    git(path, "config", "user.name", "dev")
    (path / "src").mkdir()
    (path / "src" / "parser.py").write_text("def parse_args():\n    return 'bug'\n")
    (path / "src" / "util.py").write_text("X = 1\n")
    (path / "README.md").write_text("# demo\n")
    git(path, "add", ".")
    git(path, "commit", "-qm", "base commit")
    base = git(path, "rev-parse", "HEAD")
    (path / "src" / "parser.py").write_text("def parse_args():\n    return 'FUTURE-FIX'\n")
    git(path, "commit", "-qam", "the future fix")
    future = git(path, "rev-parse", "HEAD")
    git(path, "tag", "v1.0")
    git(path, "checkout", "-qb", "feature")
    (path / "feature.txt").write_text("feature\n")
    git(path, "add", ".")
    git(path, "commit", "-qm", "feature work")
    git(path, "checkout", "-q", "main")
    (path / "README.md").write_text("stashed change\n")
    git(path, "stash", "-q")
    git(path, "remote", "add", "origin", "https://example.invalid/repo.git")
    return path, base, future


def new_env(stack: Stack, spec: dict) -> str:
    name = f"env-{uuid.uuid4().hex[:8]}"
    r = stack.put_environment(name, spec)
    assert r.status_code == 200, r.text
    return name


def first_call(stack: Stack, env: str, command: str) -> tuple[str, str]:
    rid = f"{env}-{uuid.uuid4().hex[:6]}"
    r = stack.shell(rid, command, item={"environment": env})
    assert r.status_code == 200, r.text
    return rid, r.json()["output"]


def test_git_history_is_scrubbed_to_the_base_commit(stack: Stack, repo: tuple[Path, str, str]) -> None:
    path, base, future = repo
    env = new_env(stack, {"workspace": {"type": "git", "path": str(path), "commit": base}})
    rid, out = first_call(
        stack,
        env,
        "git log --all --format=%H; git reflog; git branch -a; git tag; git stash list; git remote -v;"
        " git status --porcelain",
    )
    assert out.split() == [base, "*", "main"]
    assert future not in out
    r = stack.shell(
        rid,
        "git cat-file --batch-all-objects --batch-check | awk '{print $2}' | sort | uniq -c;"
        " grep -r FUTURE-FIX . || echo clean",
    )
    objects = r.json()["output"]
    assert "1 commit" in objects and "clean" in objects
    assert stack.shell(rid, "cat src/parser.py").json()["output"] == "def parse_args():\n    return 'bug'\n"
    assert stack.shell(rid, "git show HEAD --stat | head -1").json()["output"].startswith(f"commit {base}")


def test_prepared_once_serves_many_rollouts_that_do_not_share_writes(stack: Stack, repo: tuple[Path, str, str]) -> None:
    path, base, _ = repo
    spec = {"workspace": {"type": "git", "path": str(path), "commit": "main~1"}, "workdir": "/work/repo"}
    env = new_env(stack, spec)
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: first_call(stack, env, "pwd; echo mine > mine.txt; ls | wc -l"), range(20)))
    assert {out for _, out in results} == {"/work/repo\n3\n"}  # README.md, src, mine.txt
    described = stack.http.get(f"/v1/environments/{env}").json()
    assert described["commit_sha"] == base
    prep = described["preparation"]["testhost"]
    assert prep["state"] == "ready" and prep["duration_s"] > 0
    images = stack.docker.images.list(filters={"label": f"sandbox.definition_digest={described['definition_digest']}"})
    assert len(images) == 1  # one image build for 20 rollouts
    a, b = results[0][0], results[1][0]
    stack.shell(a, "echo only-a > shared.txt")
    assert "only-a" not in stack.shell(b, "cat shared.txt").json()["output"]


def test_a_changed_definition_gets_a_new_image_and_the_same_one_none(stack: Stack, repo: tuple[Path, str, str]) -> None:
    path, base, future = repo
    first = stack.put_environment("moving", {"workspace": {"type": "git", "path": str(path), "commit": base}}).json()
    again = stack.put_environment("moving", {"workspace": {"type": "git", "path": str(path), "commit": base}}).json()
    moved = stack.put_environment("moving", {"workspace": {"type": "git", "path": str(path), "commit": future}}).json()
    assert first["definition_digest"] == again["definition_digest"] != moved["definition_digest"]
    _, out = first_call(stack, "moving", "cat src/parser.py")
    assert "FUTURE-FIX" in out  # the rollout sees the environment's current commit


def test_dir_and_tar_workspaces_and_the_yaml_file(stack: Stack) -> None:
    d = stack.workspace_root / f"dir-{uuid.uuid4().hex[:6]}"
    (d / "pkg").mkdir(parents=True)
    (d / "pkg" / "a.txt").write_text("from a dir\n")
    env = new_env(stack, {"workspace": {"type": "dir", "path": str(d)}})
    assert first_call(stack, env, "cat pkg/a.txt; stat -c %U pkg/a.txt")[1] == "from a dir\nsandbox\n"

    tar_path = stack.workspace_root / f"ws-{uuid.uuid4().hex[:6]}.tar"
    with tarfile.open(tar_path, "w") as tar:
        data = b"from a tarball\n"
        info = tarfile.TarInfo("docs/t.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    env = new_env(stack, {"workspace": {"type": "tar", "path": str(tar_path)}})
    assert first_call(stack, env, "cat docs/t.txt")[1] == "from a tarball\n"

    assert stack.http.get("/v1/environments/yaml-demo").json()["max_tool_calls"] == 50
    assert first_call(stack, "yaml-demo", "cat hello.txt")[1] == "from the yaml file\n"
    names = [e["name"] for e in stack.http.get("/v1/environments").json()["environments"]]
    assert "default" in names and "yaml-demo" in names


def test_workspace_paths_outside_the_allowed_roots_are_refused(stack: Stack) -> None:
    r = stack.put_environment("evil", {"workspace": {"type": "dir", "path": "/etc"}})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "workspace_forbidden")
    link = stack.workspace_root / f"link-{uuid.uuid4().hex[:6]}"
    link.symlink_to("/etc")
    r = stack.put_environment("evil", {"workspace": {"type": "dir", "path": str(link)}})
    assert r.status_code == 403
    r = stack.put_environment("evil", {"workspace": {"type": "dir", "path": str(stack.workspace_root / ".." / "..")}})
    assert r.status_code == 403
    r = stack.put_environment("bad", {"workspace": {"type": "git", "path": str(stack.workspace_root), "commit": "abc"}})
    assert r.status_code == 400
    r = stack.put_environment("bad", {"workspace": {"type": "zip", "path": str(stack.workspace_root)}})
    assert r.status_code == 400


def test_unknown_environment_is_a_clear_4xx(stack: Stack) -> None:
    r = stack.shell(f"unknown-{uuid.uuid4().hex[:6]}", "echo hi", item={"environment": "no-such-env"})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_environment")


def test_an_environment_whose_image_can_never_run_is_refused_at_registration(stack: Stack) -> None:
    """Not a retryable 503 on every rollout: the name must parse, and a host must hold the image
    (nothing is pulled; before this, the engine went looking for it on Docker Hub)."""
    r = stack.put_environment("bad-image", {"image": "Not/Lowercase"})
    assert r.status_code == 400 and "image reference" in r.text
    r = stack.put_environment("bad-image", {"image": f"no-such-image-{uuid.uuid4().hex[:6]}:1"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "image_unavailable")
    assert "docker load" in r.json()["error"]["message"]
    assert stack.http.get("/v1/environments/bad-image").status_code == 404
    image_id = stack.docker.images.get("rollout-sandbox:bookworm").id
    env = new_env(stack, {"image": image_id})  # by id, as the engine lists it
    assert stack.shell(f"by-id-{uuid.uuid4().hex[:6]}", "echo hi", item={"environment": env}).json()["output"] == "hi\n"


def test_tool_call_budget(stack: Stack) -> None:
    env = new_env(stack, {"max_tool_calls": 2, "image": "rollout-sandbox:bookworm"})
    rid = f"budget-{uuid.uuid4().hex[:6]}"
    assert stack.shell(rid, "echo 1", call_id="c1", item={"environment": env}).headers["X-Sandbox-Outcome"] == "ok"
    assert stack.shell(rid, "echo 2", call_id="c2").headers["X-Sandbox-Outcome"] == "ok"
    third = stack.shell(rid, "echo 3 > ran", call_id="c3")
    assert third.status_code == 200
    assert third.headers["X-Sandbox-Reason"] == "budget_exhausted"
    assert "budget" in third.json()["output"]
    assert stack.shell(rid, "echo 1", call_id="c1").json()["output"] == "1\n"  # a retry is not a new call


def test_file_f1_grade_from_the_recorded_trajectory(stack: Stack, repo: tuple[Path, str, str]) -> None:
    path, base, _ = repo
    env = new_env(stack, {"workspace": {"type": "git", "path": str(path), "commit": base}})
    rid, _ = first_call(stack, env, "grep -rn parse_args src")
    stack.call("read_file", rid, {"path": "src/parser.py"})
    answer = "Files to edit:\n- ./src/parser.py\n- /workspace/src/parser.py\n- src/invented.py\n"
    body = {"sample": {"output_text": answer, "output_json": None, "output_tools": []},
            "item": {"environment": env, "reference_files": ["src/parser.py", "src/util.py"]},
            "trace_id": rid}  # fmt: skip
    r = stack.http.post("/v1/grade", json=body)
    assert r.status_code == 200, r.text
    g = r.json()
    assert g["precision"] == pytest.approx(0.5)  # parser.py right, invented.py hallucinated
    assert g["recall"] == pytest.approx(0.5)
    assert g["score"] == pytest.approx(0.5)
    assert g["tool_calls"] == 2
    assert g["hallucinated"] == ["src/invented.py"]
    assert stack.http.get(f"/v1/rollouts/{rid}").json()["state"] == "released"  # released after grading
    again = stack.http.post("/v1/grade", json=body)
    assert again.json()["score"] == g["score"]  # deterministic, and the trajectory is kept


def test_grading_refuses_tainted_and_unknown_rollouts(stack: Stack) -> None:
    rid = f"tainted-{uuid.uuid4().hex[:6]}"
    assert stack.shell(rid, "echo hi").status_code == 200
    stack.containers_of(rid)[0].remove(force=True)
    assert stack.shell(rid, "echo again").status_code == 503
    before = stack.metric("sandbox_grades_total", {"grader": "file_f1", "result": "discarded_infra"})
    body = {"sample": {"output_text": "src/a.py"}, "item": {"reference_files": ["src/a.py"]}, "trace_id": rid}
    r = stack.http.post("/v1/grade", json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (503, "rollout_infra_tainted")
    assert stack.metric("sandbox_grades_total", {"grader": "file_f1", "result": "discarded_infra"}) == before + 1
    missing = stack.http.post("/v1/grade", json={**body, "trace_id": "never-ran"})
    assert missing.status_code == 404
    assert stack.http.post("/v1/grade", json={"sample": {}, "item": {}}).status_code == 400


def test_numeric_and_custom_graders(stack: Stack) -> None:
    rid = f"numeric-{uuid.uuid4().hex[:6]}"
    stack.shell(rid, "echo 1234.5")
    body = {"sample": {"output_text": "The total is $1,234.5"},
            "item": {"grader": "numeric", "reference_answer": "1234.5"},
            "trace_id": rid}  # fmt: skip
    assert stack.http.post("/v1/grade", json=body).json()["score"] == 1.0
    custom = {"sample": {}, "item": {"grader": "tests.custom_grader:grade_by_calls"}, "trace_id": rid}
    assert stack.http.post("/v1/grade", json=custom).json()["score"] == 1.0
    refused = {"sample": {}, "item": {"grader": "os:system"}, "trace_id": rid}
    assert stack.http.post("/v1/grade", json=refused).status_code == 400
