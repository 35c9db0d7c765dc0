"""One place names the images (images/tags.env); everything that runs them must agree with it.

`make images` (images/build-all.sh --list), the Kubernetes manifests as rendered, the Compose
files, the service's default sandbox image and the Dockerfiles' defaults are compared with
images/tags.env. A manifest naming an image the project does not build (docker:24-dind,
redis:7.2.5-bookworm: registry images that these machines cannot pull) fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox.config import Settings

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "k8s"))

import manifests  # noqa: E402

COMPOSE = sorted((REPO / "deploy" / "compose").glob("docker-compose*.yml"))
# Named in the Compose files but not built here: Grafana is in no Debian, PyPI or npm package.
# It runs only in the opt-in `grafana` profile, from a registry (docs/deployment.md).
REGISTRY_ONLY = {"grafana": "grafana/grafana:"}


def read_tags(path: Path = REPO / "images" / "tags.env") -> dict[str, str]:
    tags = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"IMAGE_[A-Z]+", name), f"tags.env: not NAME=value: {line!r}"
            tags[name] = value
    return tags


@cache
def built_by_make_images() -> tuple[str, ...]:
    proc = subprocess.run(
        ["bash", str(REPO / "images" / "build-all.sh"), "--list"], capture_output=True, text=True, check=True
    )
    return tuple(proc.stdout.split())


@cache
def rendered(overlay: str) -> list[dict[str, Any]]:
    return manifests.render(REPO / "k8s" / "overlays" / overlay)


def manifest_images() -> dict[str, str]:
    """image -> where, for every container of every overlay. A site overlay may move our images
    to its registry (`images: newName: registry.example.com/...`, docs/kubernetes.md): the
    name compared is the part after the last slash."""
    found = {}
    for overlay in manifests.OVERLAYS:
        for obj, template in manifests.workloads(rendered(overlay.name)):
            for _, c in manifests.containers(template["spec"]):
                image = c["image"].rsplit("/", 1)[-1]
                found[image] = f"k8s/overlays/{overlay.name}: {manifests.ident(obj)} {c['name']}"
    return found


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = {}
    for path in COMPOSE:
        for name, svc in (yaml.safe_load(path.read_text()).get("services") or {}).items():
            services.setdefault(name, {}).update({**svc, "_file": path.name})
    return services


def disagreements(
    tags: dict[str, str], built: tuple[str, ...], in_manifests: dict[str, str], in_compose: dict[str, str]
) -> list[str]:
    """What the manifests and Compose files run that `make images` does not build, and how
    `make images` differs from tags.env."""
    found = []
    if sorted(built) != sorted(tags.values()):
        found.append(f"make images builds {sorted(built)}, images/tags.env names {sorted(tags.values())}")
    for image, where in sorted(in_manifests.items()):
        if image not in built:
            found.append(f"{where}: {image} is not built by make images")
    for image, where in sorted(in_compose.items()):
        if image not in built:
            found.append(f"{where}: {image} is not built by make images")
    return found


def compose_images() -> dict[str, str]:
    return {
        svc["image"]: f"deploy/compose/{svc['_file']}: service {name}"
        for name, svc in compose_services().items()
        if "image" in svc and not svc["image"].startswith(REGISTRY_ONLY.get(name, "\0"))
    }


def test_make_images_builds_what_the_manifests_and_compose_files_run() -> None:
    assert disagreements(read_tags(), built_by_make_images(), manifest_images(), compose_images()) == []


def test_the_check_catches_a_manifest_naming_an_unbuilt_image() -> None:
    in_manifests = {**manifest_images(), "docker:24-dind": "k8s/overlays/dev: StatefulSet/rollout-sandbox-worker dind"}
    found = disagreements(read_tags(), built_by_make_images(), in_manifests, compose_images())
    assert found == [
        "k8s/overlays/dev: StatefulSet/rollout-sandbox-worker dind: docker:24-dind is not built by make images"
    ]


def test_the_check_catches_make_images_drifting_from_tags_env() -> None:
    tags = {**read_tags(), "IMAGE_REDIS": "rollout-sandbox-redis:7.2-bookworm"}
    found = disagreements(tags, built_by_make_images(), manifest_images(), compose_images())
    assert len(found) == 1 and found[0].startswith("make images builds")


# Sandbox images no manifest runs: the tests run the product on them.
TEST_SANDBOXES = REPO / "tests" / "integration" / "test_any_image.py"


def test_every_image_make_images_builds_is_run_somewhere() -> None:
    # The sandbox image runs inside the workers' engines (loaded from the bundle), not as a pod;
    # the variants in the integration test that names their tags.env keys.
    tags = read_tags()
    in_tests = {tags[n] for n in re.findall(r"\bIMAGE_[A-Z]+\b", TEST_SANDBOXES.read_text()) if n in tags}
    used = set(manifest_images()) | set(compose_images()) | {tags["IMAGE_SANDBOX"]} | in_tests
    assert sorted(set(built_by_make_images()) - used) == []


def test_registry_images_are_only_in_opt_in_profiles() -> None:
    services = compose_services()
    for name, prefix in REGISTRY_ONLY.items():
        assert services[name]["image"].startswith(prefix)
        assert services[name].get("profiles"), f"{name} would start by default, from a registry"


def test_service_and_bundle_tags_are_the_package_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    tags = read_tags()
    assert tags["IMAGE_SERVICE"].rsplit(":", 1)[1] == version
    assert tags["IMAGE_BUNDLE"].rsplit(":", 1)[1] == version


@pytest.mark.parametrize("overlay", [p.name for p in manifests.OVERLAYS])
def test_the_sandbox_image_setting_names_the_bundled_image(overlay: str) -> None:
    (config,) = [o for o in rendered(overlay) if o["kind"] == "ConfigMap" and "SANDBOX_IMAGE" in o.get("data", {})]
    assert config["data"]["SANDBOX_IMAGE"] == read_tags()["IMAGE_SANDBOX"]


def test_compose_and_the_service_default_to_the_sandbox_image() -> None:
    sandbox = read_tags()["IMAGE_SANDBOX"]
    compose = (REPO / "deploy" / "compose" / "docker-compose.yml").read_text()
    assert f"SANDBOX_IMAGE: ${{SANDBOX_IMAGE:-{sandbox}}}" in compose
    assert Settings.model_fields["image"].default == sandbox


def test_dockerfile_defaults_agree_with_tags_env() -> None:
    """The build scripts pass every ARG; the defaults matter to whoever runs `docker build` by hand."""
    tags = read_tags()
    series = {name: tags[name].rsplit(":", 1)[1].removesuffix("-bookworm") for name in tags}
    want = {
        "BASE": tags["IMAGE_SANDBOX"],
        "SERVICE_IMAGE": tags["IMAGE_SERVICE"],
        "SANDBOX_IMAGE": tags["IMAGE_SANDBOX"],
        "DOCKER_SERIES": series["IMAGE_DIND"],
        "REDIS_SERIES": series["IMAGE_REDIS"],
        "PROMETHEUS_SERIES": series["IMAGE_PROMETHEUS"],
    }
    found = []
    for dockerfile in sorted((REPO / "images").glob("*/Dockerfile")):
        if dockerfile.parent.name == "sandbox":
            continue  # its BASE is the debootstrap base or SANDBOX_BASE_IMAGE (images/build.sh)
        for name, value in re.findall(r"^ARG (\w+)=(\S+)$", dockerfile.read_text(), re.M):
            if name in want and value != want[name]:
                found.append(f"{dockerfile.relative_to(REPO)}: ARG {name}={value}, tags.env says {want[name]}")
    assert found == []
