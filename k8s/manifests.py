"""Rendering the overlays, and walking the objects: shared by k8s/checks.py and its parts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

K8S = Path(__file__).resolve().parent
REPO = K8S.parent
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())

# The oldest Kubernetes supported (native sidecar containers, the preStop sleep action and
# unhealthyPodEvictionPolicy are all on by default from 1.33) and the newest the pinned
# kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
MIN_KUBECTL = (1, 27)  # kustomize v5

# Secrets are never in this repository: they are created in the cluster (docs/kubernetes.md,
# "Secrets"). The manifests may refer to these names and keys, and to no others.
EXTERNAL_SECRETS = {
    "rollout-sandbox-api-tokens": {"tokens"},
    "rollout-sandbox-redis": {"url", "address", "password"},
}
# PersistentVolumeClaims created outside the manifests (their storage is site-specific).
EXTERNAL_CLAIMS = {"rollout-sandbox-workspaces"}

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}

Obj = dict[str, Any]


class RenderError(Exception):
    pass


def kubectl_version(kubectl: str) -> tuple[int, int] | None:
    try:
        proc = subprocess.run(
            [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30
        )
        info = json.loads(proc.stdout)["clientVersion"]
        return int(info["major"]), int(re.sub(r"\D.*", "", info["minor"]))
    except (OSError, ValueError, KeyError, subprocess.SubprocessError):
        return None


@cache
def find_kubectl() -> str:
    """$KUBECTL, else a recent enough kubectl on PATH, else the one k8s/install-tools.sh puts in .venv."""
    candidates = [os.environ.get("KUBECTL"), shutil.which("kubectl"), str(REPO / ".venv" / "bin" / "kubectl")]
    tried = [c for c in candidates if c]
    for candidate in tried:
        version = kubectl_version(candidate)
        if version is not None and version >= MIN_KUBECTL:
            return candidate
    need = ".".join(map(str, MIN_KUBECTL))
    raise RenderError(f"no kubectl >= {need} (tried {', '.join(tried)}): run `bash k8s/install-tools.sh`")


def render(overlay: Path) -> list[Obj]:
    proc = subprocess.run([find_kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize {overlay} failed: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def ident(obj: Obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def by_kind(objs: list[Obj]) -> dict[str, dict[str, Obj]]:
    index: dict[str, dict[str, Obj]] = {}
    for obj in objs:
        index.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    return index


def pod_template(obj: Obj) -> Obj | None:
    kind = obj.get("kind")
    if kind in WORKLOAD_KINDS:
        return obj.get("spec", {}).get("template")
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"].get("template")
    return obj if kind == "Pod" else None


def workloads(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(object, pod template) of everything that runs pods."""
    for obj in objs:
        template = pod_template(obj)
        if template is not None:
            yield obj, template


def containers(pod_spec: Obj) -> Iterator[tuple[str, Obj]]:
    """(role, container) in start order; role: "init", "sidecar" (an init container that keeps running) or "main"."""
    for c in pod_spec.get("initContainers", []):
        yield ("sidecar" if c.get("restartPolicy") == "Always" else "init"), c
    for c in pod_spec.get("containers", []):
        yield "main", c


def command_of(c: Obj) -> list[str]:
    return [*c.get("command", []), *c.get("args", [])]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def label_selector(selector: Obj | None) -> dict[str, str] | None:
    """matchLabels of a LabelSelector; None with matchExpressions, which these checks do not evaluate."""
    if selector is None or selector.get("matchExpressions"):
        return None
    return dict(selector.get("matchLabels", {}))
