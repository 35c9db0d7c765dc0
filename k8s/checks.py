"""Offline checks of the Kubernetes manifests: no cluster is needed, and none was ever used.

    .venv/bin/python k8s/checks.py      render every overlay and check it; exit 1 on a finding

For every overlay in k8s/overlays/:
1. render it with `kubectl kustomize` (kubectl >= 1.27 for kustomize v5: k8s/install-tools.sh);
2. validate every built-in object, strictly (unknown fields fail), against the Kubernetes
   OpenAPI schemas of KUBERNETES_VERSIONS with the pinned `kubernetes-validate` package;
3. check the custom resources those schemas lack (ServiceMonitor, PodMonitor, PrometheusRule,
   ScaledObject, TriggerAuthentication) structurally: crds.py;
4. policy: resources, probes, image tags, privilege, secrets (policy_findings);
5. references between the objects, and the service's own settings: consistency.py.
Besides: no secret generator or inline Secret anywhere under k8s/ (repository_findings), and
the files generated from monitoring/ are up to date (generate.py --check).
tests/unit/test_k8s_manifests.py runs the same functions under pytest (`make test`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml
from consistency import reference_findings, settings_findings
from crds import crd_findings
from manifests import (
    K8S,
    KUBERNETES_VERSIONS,
    OVERLAYS,
    REPO,
    Obj,
    command_of,
    containers,
    ident,
    render,
    workloads,
)

# The only container allowed to be privileged: the workers' Docker engine.
PRIVILEGED_ALLOWED = {("rollout-sandbox-worker", "dind")}
# A pod annotation naming the long-running containers that have no probes, each with its
# reason: "<container>: <why>", several separated by ";".
NO_PROBES_ANNOTATION = "rollout-sandbox/no-probes"

SECRET_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|API_?KEY|PRIVATE_?KEY", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]+@", re.IGNORECASE)


def schema_findings(objs: list[Obj], versions: tuple[str, ...] = KUBERNETES_VERSIONS) -> list[str]:
    import kubernetes_validate

    found = []
    for obj in objs:
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                found += crd_findings(obj, objs)
                break
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(p) for p in exc.path) or "."
                found.append(f"{ident(obj)}: not valid for Kubernetes {version} at {where}: {exc.message}")
    return found


# --------------------------------------------------------------------------------------
# Policy


def image_problem(image: str) -> str | None:
    if "@sha256:" in image:
        return None
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return f"image {image!r} has no tag"
    return f"image {image!r} uses the tag latest" if tag == "latest" else None


def looks_like_secret(value: str) -> bool:
    """A password in a URL, or a token pasted where a reference to a Secret belongs.

    Tokens: a run of 12 or more letters and digits mixed (hex, base32), or 20 or more characters
    of the base64url alphabet with upper case, lower case and digits. Names, paths, image
    references and kustomize's hash suffixes (10 characters) are neither.
    """
    if URL_WITH_PASSWORD.match(value):
        return True
    for run in re.findall(r"[A-Za-z0-9]{12,}", value):
        if re.search(r"\d", run) and re.search(r"[A-Za-z]", run):
            return True
    return (
        len(value) >= 20
        and re.fullmatch(r"[A-Za-z0-9_\-+=]+", value) is not None
        and all(re.search(p, value) for p in (r"[a-z]", r"[A-Z]", r"\d"))
    )


def probe_exemptions(pod: Obj) -> set[str]:
    text = pod.get("metadata", {}).get("annotations", {}).get(NO_PROBES_ANNOTATION, "")
    exempt = set()
    for part in text.split(";"):
        name, sep, reason = part.partition(":")
        if sep and reason.strip():
            exempt.add(name.strip())
    return exempt


def container_findings(owner: str, pod: Obj, role: str, c: Obj) -> list[str]:
    me = f"{owner} container {c.get('name')}"
    found = []
    for kind in ("requests", "limits"):
        missing = [r for r in ("cpu", "memory") if r not in c.get("resources", {}).get(kind, {})]
        if missing:
            found.append(f"{me}: no {kind} for {', '.join(missing)}")
    problem = image_problem(str(c.get("image", "")))
    if problem:
        found.append(f"{me}: {problem}")
    probes = [p for p in ("livenessProbe", "readinessProbe", "startupProbe") if p in c]
    if role == "init" and probes:
        found.append(f"{me}: an init container that runs to completion cannot have probes ({', '.join(probes)})")
    if role != "init" and c.get("name") not in probe_exemptions(pod):
        found += [f"{me}: no {p} (or say why in the {NO_PROBES_ANNOTATION} annotation)"
                  for p in ("livenessProbe", "readinessProbe") if p not in c]  # fmt: skip
    if command_of(c)[:2] == ["sandbox", "api"]:
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            if c.get(probe, {}).get("httpGet", {}).get("path") != path:
                found.append(f"{me}: the API's {probe} must be an httpGet of {path}")
    security = c.get("securityContext", {})
    if security.get("privileged"):
        if (owner.split("/", 1)[1], c.get("name")) not in PRIVILEGED_ALLOWED:
            found.append(f"{me}: privileged (only the workers' dind engine may be)")
    else:
        if security.get("allowPrivilegeEscalation") is not False:
            found.append(f"{me}: set securityContext.allowPrivilegeEscalation: false")
        if "ALL" not in security.get("capabilities", {}).get("drop", []):
            found.append(f"{me}: drop ALL capabilities")
    for env in c.get("env", []):
        name, value = env.get("name", ""), env.get("value")
        if SECRET_NAME.search(name) and "secretKeyRef" not in env.get("valueFrom", {}):
            found.append(f"{me}: env {name} looks like a secret: take it from a Secret (secretKeyRef)")
        if isinstance(value, str) and looks_like_secret(value):
            found.append(f"{me}: env {name} holds what looks like a credential: take it from a Secret")
    return found


def policy_findings(objs: list[Obj]) -> list[str]:
    found = []
    for obj, template in workloads(objs):
        owner, spec = ident(obj), template.get("spec", {})
        for role, c in containers(spec):
            found += container_findings(owner, template, role, c)
        if spec.get("automountServiceAccountToken") is not False:
            found.append(f"{owner}: set automountServiceAccountToken: false (no pod here talks to the Kubernetes API)")
        found += [f"{owner}: {k} is not allowed" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
        found += [f"{owner}: hostPath volume {v['name']}" for v in spec.get("volumes", []) if "hostPath" in v]
    for obj in objs:
        if obj.get("kind") == "Secret":
            found.append(f"{ident(obj)}: Secrets are created in the cluster, never committed (docs/kubernetes.md)")
        if obj.get("kind") == "ConfigMap":
            for key, value in (obj.get("data") or {}).items():
                if SECRET_NAME.search(key):
                    found.append(f"{ident(obj)}: key {key} looks like a secret: use a Secret")
                elif isinstance(value, str) and "\n" not in value and looks_like_secret(value):
                    found.append(f"{ident(obj)}: key {key} holds what looks like a credential")
    scaled = {
        (o["spec"]["scaleTargetRef"].get("kind"), o["spec"]["scaleTargetRef"]["name"])
        for o in objs
        if o.get("kind") in ("HorizontalPodAutoscaler", "ScaledObject")
    }
    for obj in objs:
        if (obj.get("kind"), obj["metadata"]["name"]) in scaled and "replicas" in obj.get("spec", {}):
            found.append(f"{ident(obj)}: an autoscaler owns its replicas, so an apply must not set spec.replicas")
    return found


def repository_findings(root: Path = K8S) -> list[str]:
    """What rendering cannot show: secret generators, and inline Secrets in files no overlay includes."""
    found = []
    for path in sorted(root.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            if doc.get("secretGenerator"):
                found.append(f"{path}: secretGenerator: Secrets are created in the cluster, never from the repository")
            if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
                found.append(f"{path}: a Secret with inline data")
    return found


def overlay_findings(objs: list[Obj]) -> list[str]:
    return schema_findings(objs) + policy_findings(objs) + reference_findings(objs) + settings_findings(objs)


def main() -> int:
    sys.path.insert(0, str(REPO))  # sandbox.config, for the settings checks
    import generate

    findings = [f"stale generated file: {p.splitlines()[0]}" for p in generate.stale()] + repository_findings()
    for overlay in OVERLAYS:
        objs = render(overlay)
        found = overlay_findings(objs)
        print(f"{overlay.relative_to(REPO)}: {len(objs)} objects, {len(found)} findings")
        findings += [f"{overlay.name}: {f}" for f in found]
    for finding in findings:
        print(finding)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
