"""An environment whose image can never run is refused at registration (400), never left to
fail every rollout's provisioning with a retryable 503: the reference must parse, and some
sandbox host must hold the image (nothing is ever pulled)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sandbox.domain.environment import EnvironmentSpec
from sandbox.domain.errors import ImageUnavailable, LimitsUnsatisfiable
from sandbox.domain.images import canonical, reference_problem
from tests.unit.conftest import MakeWorld


@pytest.mark.parametrize("ref", ["nD", "I\u00a8", "", "a b", "debian:", "debian:bookworm\n", "-x", "x" * 300])
def test_references_the_engine_cannot_parse_are_refused_by_the_spec(ref: str) -> None:
    assert reference_problem(ref)
    with pytest.raises(ValidationError, match="image '"):
        EnvironmentSpec(image=ref)


@pytest.mark.parametrize(
    ("ref", "listed_as"),
    [
        ("debian", "debian:latest"),
        ("debian:bookworm", "debian:bookworm"),
        ("docker.io/library/debian:12", "debian:12"),
        ("docker.io/team/img", "team/img:latest"),
        ("localhost:5000/team/img:1.0", "localhost:5000/team/img:1.0"),
        ("sha256:" + "ab" * 32, "sha256:" + "ab" * 32),
    ],
)
def test_references_are_compared_in_the_spelling_the_engine_lists(ref: str, listed_as: str) -> None:
    assert reference_problem(ref) is None
    assert canonical(ref) == listed_as


def test_an_image_no_host_holds_is_refused_with_what_to_do(make_world: MakeWorld) -> None:
    w = make_world()
    w.host.beat()
    with pytest.raises(ImageUnavailable) as refused:
        w.registry.register("missing", EnvironmentSpec(image="nosuch/image:1"))
    assert refused.value.http_status == 400
    assert "is on no sandbox host" in refused.value.message and "docker load" in refused.value.message
    assert "missing" not in w.registry.names()


def test_an_image_a_host_holds_registers_by_tag_or_id(make_world: MakeWorld) -> None:
    w = make_world()
    sandbox_image = w.settings.image
    w.host.beat()
    w.registry.register("by-tag", EnvironmentSpec(image=sandbox_image))
    image_id = w.backend.image_id(sandbox_image)
    assert image_id is not None
    w.registry.register("by-id", EnvironmentSpec(image=image_id))
    assert {"by-tag", "by-id"} <= set(w.registry.names())


def test_an_image_loaded_after_a_refusal_registers_once_the_host_lists_it(make_world: MakeWorld) -> None:
    w = make_world()
    w.host.beat()
    with pytest.raises(ImageUnavailable):
        w.registry.register("late", EnvironmentSpec(image="late/image:1"))
    w.backend.load_image("late/image:1")
    w.host.beat()
    w.registry.register("late", EnvironmentSpec(image="late/image:1"))


def test_with_no_host_listing_images_the_image_is_taken_on_trust(make_world: MakeWorld) -> None:
    """Registered while no host has listed its images (none up yet, an engine down): nothing can
    tell, so nothing is refused."""
    w = make_world()
    w.host.beat(images="")
    w.registry.register("early", EnvironmentSpec(image="not/yet:loaded"))
    assert "early" in w.registry.names()


def test_more_cpus_than_any_host_has_is_refused_and_as_many_is_not(make_world: MakeWorld) -> None:
    """The engine refuses a container with more CPUs than its machine has ("Range of CPUs is from
    0.01 to 2.00"): every rollout would fail to provision, so registration says so (the fuzzer
    found it as a 503 provision_failed)."""
    w = make_world()
    w.backend.machine_cpus = 2
    w.host.beat()
    with pytest.raises(LimitsUnsatisfiable) as refused:
        w.registry.register("greedy", EnvironmentSpec(limits={"cpus": 3}))
    assert refused.value.http_status == 400 and "the largest has 2" in refused.value.message
    assert "greedy" not in w.registry.names()
    w.registry.register("fits", EnvironmentSpec(limits={"cpus": 2}))
    assert "fits" in w.registry.names()


def test_cpus_are_taken_on_trust_while_no_host_has_said_how_many_it_has(make_world: MakeWorld) -> None:
    w = make_world()
    w.host.beat(cpus="")  # an older worker, or an engine that was down at its last look
    w.registry.register("trusting", EnvironmentSpec(limits={"cpus": 3}))
    assert "trusting" in w.registry.names()
