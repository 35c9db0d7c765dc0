"""A Harbor task's rollout image on this host, from the task's own environment/Dockerfile.

Two builds, both offline (no network, no pull: every image a Dockerfile names must be on the host):

1. the task's Dockerfile with its context, as the task author wrote it (`rollout-task:<id>`);
2. a few lines on top that make it a rollout image: the sandbox user owns the workdir (Harbor
   agents run as root; ours run unprivileged and must be able to edit the task's files), a
   root-only copy of the workdir at /opt/sandbox-base/workdir is the base state grading restores
   test configuration from (the guest's run_tests: native/tests.go), and the entrypoint is cleared so the service's
   command starts the guest.

The workdir is the task image's WORKDIR, read from its config after the first build. The task
image's tag is dropped once the rollout image exists: its layers live on under it.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import workspaces
from ..backends.base import Backend
from ..domain.environment import Environment
from ..domain.errors import InfraError, ProvisionFailed
from ..harbor import CONTEXT_DIR

TASK_REPOSITORY = "rollout-task"
BASE_COPY_ROOT = "/opt/sandbox-base"  # the guest's baseDir's parent (native/tests.go), root-only
# A workdir the sandbox user is given must not be a system directory: chown -R of /usr would
# hand the agent the interpreter that runs the tests, of /opt the base copy grading trusts.
SYSTEM_DIRS: tuple[str, ...] = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run")
SYSTEM_DIRS += ("/sbin", "/sys", "/usr", "/var", "/logs", "/tests", "/opt/sandbox-base", "/opt/sandbox-guest")
NOT_WORKDIRS = ("/", "/opt")
_FROM = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)


def base_images(dockerfile: str) -> list[str]:
    """The images the Dockerfile's FROM lines name, in order; stages it builds itself and `scratch` left out."""
    images: list[str] = []
    stages: set[str] = set()
    for line in dockerfile.splitlines():
        match = _FROM.match(line)
        if match is None:
            continue
        image, stage = match.group(1), match.group(2)
        if image.lower() not in stages and image.lower() != "scratch" and image not in images:
            images.append(image)
        if stage:
            stages.add(stage.lower())
    return images


def base_ids(backend: Backend, env: Environment, roots: list[Path]) -> list[str]:
    """What the task's image is built from on this host: each FROM image's id (a FROM made of
    build arguments counts by its text). Raises ProvisionFailed naming an image that is not here."""
    dockerfile = _context(env, roots) / "Dockerfile"
    try:
        text = dockerfile.read_text(errors="replace")
    except OSError as exc:
        raise ProvisionFailed(f"cannot read the task's environment/Dockerfile: {exc.strerror}") from exc
    ids = []
    for image in base_images(text):
        if "$" in image:
            ids.append(image)
            continue
        image_id = backend.image_id(image)
        if image_id is None:
            raise ProvisionFailed(
                f"the task's Dockerfile builds FROM {image!r}, which is not on this host; builds here never "
                "pull (no registry): build or load that image on every sandbox host first"
            )
        ids.append(image_id)
    return ids


def build(backend: Backend, env: Environment, tag: str, labels: dict[str, str], user: str, roots: list[Path]) -> None:
    """Build the rollout image `tag` of a task environment. Raises ProvisionFailed, EngineUnavailable."""
    task_tag = f"{TASK_REPOSITORY}:{tag.partition(':')[2]}"
    backend.build_image(str(_context(env, roots)), task_tag, labels)
    context = Path(tempfile.mkdtemp(prefix="sbx-task-"))
    try:
        workdir = resolve_workdir(backend.image_workdir(task_tag), env.spec.workdir)
        (context / "Dockerfile").write_text(rollout_dockerfile(task_tag, workdir, user))
        backend.build_image(str(context), tag, labels)
    finally:
        shutil.rmtree(context, ignore_errors=True)
        _quietly(lambda: backend.remove_image(task_tag))  # untagged: under `tag` its layers stay


def resolve_workdir(image_workdir: str | None, fallback: str) -> str:
    """The task image's WORKDIR, or the definition's `workdir` when it sets none (or just /)."""
    workdir = posixpath.normpath(image_workdir or "/")
    if workdir == "/":
        workdir = posixpath.normpath(fallback)
    if "\n" in workdir or "\x00" in workdir:
        raise ProvisionFailed(f"the task's WORKDIR {workdir!r} is not a usable path")
    if workdir in NOT_WORKDIRS or any(workdir == d or workdir.startswith(d + "/") for d in SYSTEM_DIRS):
        raise ProvisionFailed(
            f"the task's WORKDIR {workdir} is a system directory; the sandbox user would own it: "
            "set a WORKDIR of the task's own (e.g. /app)"
        )
    return workdir


def rollout_dockerfile(task_tag: str, workdir: str, user: str) -> str:
    w, base = shlex.quote(workdir), shlex.quote(f"{BASE_COPY_ROOT}/workdir")
    owner = shlex.quote(f"{user}:{user}")
    # One RUN, as root whatever USER the task left: the copy keeps the author's files exactly,
    # then the base copy goes to root and the live workdir to the sandbox user.
    return (
        f"FROM {task_tag}\n"
        "USER root\n"
        f"RUN set -e; mkdir -p {w}; rm -rf {BASE_COPY_ROOT}; mkdir -p {BASE_COPY_ROOT}; chmod 700 {BASE_COPY_ROOT};"
        f" cp -a {w} {base}; chown -R 0:0 {base}; chown -R {owner} {w}\n"
        f"WORKDIR {workdir}\n"
        "ENTRYPOINT []\n"
    )


def _context(env: Environment, roots: list[Path]) -> Path:
    assert env.source_path is not None
    return workspaces.confine(str(Path(env.source_path, CONTEXT_DIR)), roots)  # re-checked where it is read


def _quietly(action: Callable[[], object]) -> None:
    with contextlib.suppress(InfraError):  # a leftover tag is harmless; the engine may be what failed
        action()
