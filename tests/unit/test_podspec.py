"""The emulated kubelet's translation of a pod spec into Docker create requests (k8s/podspec.py).

The worker pod smoke (tests/integration/test_worker_pod.py) is only as true as this
translation: these pin the kubelet's rules it follows, on the rendered manifests and on small
specs, without an engine.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "k8s"))

import manifests  # noqa: E402
import podspec  # noqa: E402
from podspec import PodContext, Refused, Unsupported, expand, quantity  # noqa: E402


def context(spec: dict[str, Any], *, emulate_privileged: bool = False, image_user: str = "") -> PodContext:
    volumes = {v["name"]: Path("/node") / v["name"] for v in spec.get("volumes", [])}
    return PodContext(
        name="pod-0",
        namespace="ns",
        template={"metadata": {"labels": {"app": "x"}}, "spec": spec},
        volumes=volumes,
        config_maps={"cfg": {"A": "1", "B": "two"}},
        secrets={"sec": {"tokens": "s3cret"}},
        network_container="net",
        cpus=2,
        emulate_privileged=emulate_privileged,
        image_user=lambda image: image_user,
    )


def one(c: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return context({"containers": [c]}, **kwargs).create_request(c)


def test_quantities() -> None:
    assert quantity("500m") == 0.5
    assert quantity("2") == 2
    assert quantity("512Mi") == 512 * 2**20
    assert quantity("1G") == 1e9


def test_variable_expansion_as_the_kubelet_does_it() -> None:
    env = {"A": "1"}
    assert expand("x$(A)y", env) == "x1y"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A)", env) == "$(A)"


def test_command_replaces_the_entrypoint_and_args_the_command() -> None:
    only_command = one({"name": "c", "image": "i", "command": ["sandbox", "worker"]})
    assert only_command["entrypoint"] == ["sandbox", "worker"] and "command" not in only_command
    only_args = one({"name": "c", "image": "i", "args": ["dockerd", "--bridge=none"]})
    assert only_args["command"] == ["dockerd", "--bridge=none"] and "entrypoint" not in only_args


def test_environment_from_config_maps_secrets_values_and_the_downward_api() -> None:
    c = {
        "name": "c",
        "image": "i",
        "envFrom": [{"configMapRef": {"name": "cfg"}}],
        "env": [
            {"name": "B", "value": "x-$(A)"},
            {"name": "T", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "tokens"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
    }
    assert one(c)["environment"] == {"A": "1", "B": "x-1", "T": "s3cret", "POD": "pod-0"}


def test_run_as_non_root_is_refused_for_a_non_numeric_or_root_user() -> None:
    c = {"name": "c", "image": "i", "securityContext": {"runAsNonRoot": True}}
    with pytest.raises(Refused, match="non-numeric user"):
        one(c, image_user="sandbox")
    with pytest.raises(Refused, match="will run as root"):
        one(c, image_user="")
    assert one(c, image_user="1000")["user"] == "1000"  # the image's own user, checked
    c["securityContext"]["runAsUser"] = 10001
    assert one(c, image_user="sandbox")["user"] == "10001"


def test_privileged_natively_or_granted_one_by_one() -> None:
    c = {"name": "dind", "image": "i", "securityContext": {"privileged": True}}
    native = one(c)["host_config"]
    assert native["kwargs"]["privileged"] is True and native["extra"] == {}
    emulated = one(c, emulate_privileged=True)["host_config"]
    assert "privileged" not in emulated["kwargs"]
    assert emulated["kwargs"]["cap_add"] == ["ALL"]
    assert set(emulated["kwargs"].get("cap_drop") or []) == set(podspec.missing_capabilities())
    assert "seccomp=unconfined" in emulated["kwargs"]["security_opt"]
    assert emulated["extra"] == {"MaskedPaths": [], "ReadonlyPaths": []}


def test_seccomp_unset_is_unconfined_as_on_a_kubelet() -> None:
    assert "seccomp=unconfined" in one({"name": "c", "image": "i"})["host_config"]["kwargs"]["security_opt"]
    spec = {"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}
    c = {"name": "c", "image": "i"}
    request = context({**spec, "containers": [c]}).create_request(c)
    assert request["host_config"]["kwargs"]["security_opt"] == []


def test_unknown_fields_are_refused_not_ignored() -> None:
    with pytest.raises(Unsupported, match="subPath"):
        ctx = context({"volumes": [{"name": "v", "emptyDir": {}}], "containers": []})
        ctx.create_request(
            {"name": "c", "image": "i", "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "x"}]}
        )
    with pytest.raises(Unsupported, match="stdin"):
        one({"name": "c", "image": "i", "stdin": True})


def test_the_rendered_worker_container_as_the_kubelet_would_create_it() -> None:
    objs = manifests.by_kind(manifests.render(REPO / "k8s" / "overlays" / "dev"))
    template = objs["StatefulSet"]["rollout-sandbox-worker"]["spec"]["template"]
    spec = template["spec"]
    config_map = next(e["configMapRef"]["name"] for e in spec["containers"][0]["envFrom"])
    ctx = PodContext(
        name="rollout-sandbox-worker-0",
        namespace="rollout-sandbox",
        template=template,
        volumes={v["name"]: Path("/node") / v["name"] for v in spec["volumes"]},
        config_maps={config_map: objs["ConfigMap"][config_map]["data"]},
        secrets={"rollout-sandbox-api-tokens": {"tokens": "t" * 24}},
        network_container="net",
        cpus=2,
        emulate_privileged=False,
        image_user=lambda image: "root",
    )
    request = ctx.create_request(spec["containers"][0])
    host = request["host_config"]["kwargs"]
    assert request["entrypoint"] == ["sandbox", "worker"]
    assert request["user"] == "0"
    assert request["environment"]["SANDBOX_HOST_ID"] == "rollout-sandbox-worker-0"
    assert host["read_only"] is True and host["cap_drop"] == ["ALL"]
    assert "no-new-privileges" in host["security_opt"] and "seccomp=unconfined" not in host["security_opt"]
    assert "/node/dind-socket:/var/run/dind:rw" in host["binds"]
    assert "/node/guest:/var/lib/rollout-sandbox/guest:ro" in host["binds"]
    assert host["nano_cpus"] == 1_000_000_000 and host["mem_limit"] == 2**30
    dind = next(c for c in spec["initContainers"] if c["name"] == "dind")
    dind_host = ctx.create_request(dind)["host_config"]["kwargs"]
    assert dind_host["privileged"] is True and dind_host["nano_cpus"] == 2_000_000_000  # limit 2, on 2 CPUs
