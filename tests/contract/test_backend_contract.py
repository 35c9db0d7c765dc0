"""The backend contract (sandbox/backends/base.py), run against the Docker backend on the real
engine and against the in-memory fake the unit tests use, so the fake cannot drift."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.backends.base import Backend
from sandbox.config import Settings
from sandbox.domain.container import LABEL_ROLLOUT, ROLE_ROLLOUT, SandboxSpec, container_spec
from sandbox.domain.environment import Environment, EnvironmentSpec
from sandbox.domain.errors import ProvisionFailed, SandboxLost
from sandbox.guest.guest_protocol import read_file_request, shell_request
from tests.fakes.backend import InMemoryBackend
from tests.stack import TEST_LABEL

IMAGE = "rollout-sandbox:bookworm"


RUNSC = "/usr/bin/runsc"  # Debian's gVisor, installed by deploy/install.sh


@pytest.fixture(params=["docker", "docker-runsc", "in-memory"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The contract holds for the real engine under both runtimes (runc and gVisor) and for the fake."""
    if request.param == "in-memory":
        yield InMemoryBackend(images=[IMAGE])
        return
    from sandbox.backends.docker import DockerBackend
    from sandbox.guest import PACKAGED_GUEST_DIR

    run_dir = Path(tempfile.mkdtemp(prefix="sbxc-", dir="/tmp"))
    docker_backend = DockerBackend("unix:///var/run/docker.sock", run_dir, PACKAGED_GUEST_DIR)
    try:
        docker_backend.ping()
    except Exception as exc:  # the contract needs the engine `make test` starts
        pytest.fail(f"no Docker engine for the contract tests: {exc}")
    if request.param == "docker-runsc":
        if not Path(RUNSC).exists():
            pytest.skip("gVisor (runsc) is not installed here; deploy/install.sh installs it")
        # Installed but not offered means deps.sh did not set the engine up: a failure, not a skip.
        assert "runsc" in docker_backend.runtimes(), (
            "runsc is installed but the engine does not offer it (deploy/deps.sh)"
        )
        docker_backend.contract_runtime = "runsc"  # type: ignore[attr-defined]
    session = uuid.uuid4().hex[:8]
    docker_backend.contract_session = session  # type: ignore[attr-defined]
    yield docker_backend
    for info in docker_backend.list({TEST_LABEL: session}):
        docker_backend.destroy(info.name)
    for image in docker_backend.list_images({TEST_LABEL: session}):
        docker_backend.remove_image(image.image_id)
    shutil.rmtree(run_dir, ignore_errors=True)


def spec_for(backend: Any, rollout_id: str | None = None) -> SandboxSpec:
    rid = rollout_id or f"contract-{uuid.uuid4().hex[:10]}"
    settings = Settings(
        instance="contract",
        host_id="contract-host",
        extra_labels={TEST_LABEL: getattr(backend, "contract_session", "fake")},
    )
    runtime = getattr(backend, "contract_runtime", "runc")
    env = Environment(name="default", spec=EnvironmentSpec(runtime=runtime), definition_digest="default")
    return container_spec(settings, env, IMAGE, f"sbx-contract-{rid}", role=ROLE_ROLLOUT, rollout_id=rid)


def shell(backend: Backend, name: str, command: str, timeout: float = 10.0) -> dict[str, Any]:
    return backend.request(name, shell_request(command, timeout, 4096), timeout)


def started(backend: Backend) -> SandboxSpec:
    spec = spec_for(backend)
    backend.create(spec)
    backend.wait_ready(spec.name, 60)
    return spec


def test_create_is_idempotent_and_listed_with_its_labels(backend: Backend) -> None:
    spec = spec_for(backend)
    first = backend.create(spec)
    backend.wait_ready(spec.name, 60)
    assert backend.create(spec) == first  # a retried provisioning task adopts the running container
    listed = {i.name: i for i in backend.list({LABEL_ROLLOUT: spec.labels[LABEL_ROLLOUT]})}
    assert list(listed) == [spec.name]
    info = listed[spec.name]
    assert info.running and info.container_id == first and info.rollout_id == spec.labels[LABEL_ROLLOUT]
    assert backend.list({LABEL_ROLLOUT: "nobody"}) == []


def test_shell_runs_in_the_workdir_with_exit_codes_and_deadlines(backend: Backend) -> None:
    name = started(backend).name
    ok = shell(backend, name, "echo hello")
    assert (ok["exit_code"], ok["output"], ok["timed_out"]) == (0, "hello\n", False)
    assert shell(backend, name, "pwd")["output"] == "/workspace\n"
    assert shell(backend, name, "exit 3")["exit_code"] == 3
    late = shell(backend, name, "sleep 5", timeout=0.5)
    assert late["timed_out"] is True and late["exit_code"] is None


def test_read_file_statuses(backend: Backend) -> None:
    name = started(backend).name
    shell(backend, name, "echo first > notes.txt")
    shell(backend, name, "echo second >> notes.txt")
    whole = backend.request(name, read_file_request("notes.txt", None, None, 4096), 10)
    assert (whole["status"], whole["content"]) == ("ok", "first\nsecond\n")
    line = backend.request(name, read_file_request("/workspace/notes.txt", 2, 2, 4096), 10)
    assert line["content"] == "second\n"
    missing = backend.request(name, read_file_request("nope.txt", None, None, 4096), 10)
    assert missing["status"] == "not_found"
    beyond = backend.request(name, read_file_request("notes.txt", 9, None, 4096), 10)
    assert beyond["status"] == "invalid_range"


def test_destroy_is_idempotent_and_a_destroyed_sandbox_is_lost(backend: Backend) -> None:
    name = started(backend).name
    assert backend.destroy(name) is True
    assert backend.destroy(name) is False
    assert backend.list({LABEL_ROLLOUT: name}) == []
    with pytest.raises(SandboxLost):
        shell(backend, name, "echo hi")
    with pytest.raises(ProvisionFailed):
        backend.wait_ready(name, 2)


def test_images_and_engine_health(backend: Backend) -> None:
    backend.ping()
    assert backend.image_id(IMAGE)
    assert backend.image_id(f"no-such-image-{uuid.uuid4().hex[:6]}:x") is None
    spec = spec_for(backend)
    with pytest.raises(ProvisionFailed):
        backend.create(SandboxSpec(**{**spec.__dict__, "image": "no-such-image:x"}))


def test_the_engine_says_how_many_cpus_its_machine_has(backend: Backend) -> None:
    """What registration checks an environment's limits.cpus against."""
    assert backend.cpus() >= 1


def test_a_runtime_the_engine_lacks_is_a_provisioning_failure_not_an_engine_one(backend: Backend) -> None:
    """Never EngineUnavailable: that would count towards quarantining a healthy host."""
    spec = spec_for(backend)
    assert "runc" in backend.runtimes()
    with pytest.raises(ProvisionFailed):
        backend.create(SandboxSpec(**{**spec.__dict__, "runtime": "no-such-runtime"}))


def test_a_build_keeps_its_workdir_and_a_broken_one_says_why(backend: Backend, tmp_path: Path) -> None:
    labels = {TEST_LABEL: getattr(backend, "contract_session", "fake")}
    tag = f"rollout-env:contract-{uuid.uuid4().hex[:10]}"
    (tmp_path / "Dockerfile").write_text(f"FROM {IMAGE}\nWORKDIR /srv/task\n")
    backend.build_image(str(tmp_path), tag, labels)
    assert backend.image_id(tag) and backend.image_workdir(tag) == "/srv/task"
    assert backend.image_workdir(f"no-such-image-{uuid.uuid4().hex[:6]}:x") is None
    assert backend.remove_image(tag) is True
    # A step that fails is the Dockerfile's problem (ProvisionFailed), not a sick engine (EngineUnavailable).
    (tmp_path / "Dockerfile").write_text(f"FROM {IMAGE}\nRUN exit 3\n")
    with pytest.raises(ProvisionFailed, match=f"building environment image {tag} failed"):
        backend.build_image(str(tmp_path), tag, labels)
    assert backend.image_id(tag) is None


def test_a_snapshot_carries_the_filesystem_into_new_containers_that_stay_apart(backend: Backend) -> None:
    parent = started(backend)
    shell(backend, parent.name, "echo state > notes.txt")
    tag = f"rollout-fork:contract-{uuid.uuid4().hex[:10]}"
    labels = {**parent.labels, "sandbox.role": "fork", "sandbox.fork_of": parent.labels[LABEL_ROLLOUT]}
    image_id = backend.snapshot(parent.name, tag, labels)
    assert image_id and backend.image_id(tag) == image_id
    assert [i.image_id for i in backend.list_images({"sandbox.fork_of": parent.labels[LABEL_ROLLOUT]})] == [image_id]
    children = []
    for _ in range(2):
        spec = SandboxSpec(**{**spec_for(backend).__dict__, "image": tag})
        backend.create(spec)
        backend.wait_ready(spec.name, 60)
        children.append(spec.name)
    assert all(shell(backend, c, "cat notes.txt")["output"] == "state\n" for c in children)
    assert shell(backend, parent.name, "echo first-parent-call-after > after.txt")["exit_code"] == 0
    shell(backend, children[0], "echo mine > child.txt")
    assert shell(backend, children[1], "cat child.txt")["exit_code"] != 0  # children are apart
    assert shell(backend, parent.name, "cat child.txt")["exit_code"] != 0  # and apart from the parent
    assert shell(backend, children[0], "cat after.txt")["exit_code"] != 0  # the parent moved on alone
    listed = {i.name: i for i in backend.list({LABEL_ROLLOUT: children[0].removeprefix("sbx-contract-")})}
    assert listed[children[0]].image_id == image_id
    assert backend.remove_image(tag) is False  # its children still use it
    for child in children:
        backend.destroy(child)
    assert backend.remove_image(tag) is True
    assert backend.image_id(tag) is None and backend.remove_image(tag) is False


def test_a_snapshot_of_a_vanished_container_is_a_lost_sandbox(backend: Backend) -> None:
    name = started(backend).name
    backend.destroy(name)
    with pytest.raises(SandboxLost):
        backend.snapshot(name, f"rollout-fork:contract-{uuid.uuid4().hex[:10]}", {})


def test_a_paused_container_is_alive_for_listing_and_calls(backend: Backend) -> None:
    """A fork pauses its parent: the reconciler must not take that for a stopped container."""
    if isinstance(backend, InMemoryBackend):
        pytest.skip("pausing is the engine's; the in-memory backend never pauses")
    import docker

    spec = started(backend)
    engine = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    engine.api.pause(spec.name)
    try:
        (info,) = backend.list({LABEL_ROLLOUT: spec.labels[LABEL_ROLLOUT]})
        assert info.running
    finally:
        engine.api.unpause(spec.name)
    assert shell(backend, spec.name, "echo awake")["output"] == "awake\n"
