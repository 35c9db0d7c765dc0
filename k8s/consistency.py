"""Checks that the objects of an overlay agree with one another and with the service itself.

reference_findings: every selector selects something, named ports exist, autoscalers and
monitors find their targets, Secrets and ConfigMaps referred to are known.

settings_findings: every SANDBOX_* variable is a setting of sandbox/config.py (pydantic
ignores unknown ones, so a typo would silently change nothing), the settings build in each
container as the service would build them, and the pod specs agree with them: the ports
bound, the paths the Docker engine must share with the worker, one beat, the queue KEDA
watches.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from manifests import (
    EXTERNAL_CLAIMS,
    EXTERNAL_SECRETS,
    Obj,
    by_kind,
    command_of,
    containers,
    ident,
    label_selector,
    matches,
    workloads,
)

# Stand-ins for Secret values when the settings are built from a pod spec, by Secret key.
PLACEHOLDERS = {"tokens": "k8s-checks-placeholder-token-0001", "url": "redis://redis.invalid:6379/0"}


def _secret_ref(where: str, ref: dict[str, Any]) -> list[str]:
    if ref.get("key") in EXTERNAL_SECRETS.get(ref.get("name", ""), set()):
        return []
    return [f"{where}: Secret {ref.get('name')} key {ref.get('key')} is not in EXTERNAL_SECRETS (docs/kubernetes.md)"]


def _pod_references(owner: str, template: Obj, index: dict[str, dict[str, Obj]]) -> list[str]:
    spec = template["spec"]
    found = []
    if spec.get("serviceAccountName", "default") not in index.get("ServiceAccount", {}):
        found.append(f"{owner}: service account {spec.get('serviceAccountName')!r} is not in the overlay")
    declared = {v["name"] for v in spec.get("volumes", [])}
    statefulset = index.get("StatefulSet", {}).get(owner.split("/", 1)[1], {})
    declared |= {t["metadata"]["name"] for t in statefulset.get("spec", {}).get("volumeClaimTemplates", [])}
    for volume in spec.get("volumes", []):
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        if claim and claim not in EXTERNAL_CLAIMS and claim not in index.get("PersistentVolumeClaim", {}):
            found.append(f"{owner}: volume {volume['name']} claims an unknown PersistentVolumeClaim {claim!r}")
    for _, c in containers(spec):
        me = f"{owner} container {c['name']}"
        config_maps = [e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])]
        config_maps += [e.get("valueFrom", {}).get("configMapKeyRef", {}).get("name") for e in c.get("env", [])]
        found += [
            f"{me}: ConfigMap {n!r} is not in the overlay" for n in config_maps if n and n not in index["ConfigMap"]
        ]
        for env in c.get("env", []):
            if "secretKeyRef" in env.get("valueFrom", {}):
                found += _secret_ref(f"{me} env {env['name']}", env["valueFrom"]["secretKeyRef"])
        mounted = {m["name"] for m in c.get("volumeMounts", [])}
        found += [f"{me}: mounts undeclared volume {m}" for m in sorted(mounted - declared)]
    return found


def reference_findings(objs: list[Obj]) -> list[str]:
    index = by_kind(objs)
    index.setdefault("ConfigMap", {})
    pods = [(ident(o), t) for o, t in workloads(objs)]

    def pods_matching(selector: dict[str, str] | None) -> list[Obj]:
        if not selector:
            return []
        return [t for _, t in pods if matches(selector, t.get("metadata", {}).get("labels", {}))]

    def ports_of(templates: list[Obj]) -> set[str]:
        return {p.get("name") for t in templates for _, c in containers(t["spec"]) for p in c.get("ports", [])}

    found = []
    for owner, template in pods:
        found += _pod_references(owner, template, index)
    for auth in index.get("TriggerAuthentication", {}).values():
        for ref in auth["spec"].get("secretTargetRef", []):
            found += _secret_ref(ident(auth), ref)
    for svc in index.get("Service", {}).values():
        targets = pods_matching(svc["spec"].get("selector"))
        if not targets:
            found.append(f"{ident(svc)}: selector matches no pod template")
        for port in svc["spec"].get("ports", []):
            if isinstance(port.get("targetPort"), str) and port["targetPort"] not in ports_of(targets):
                found.append(f"{ident(svc)}: targetPort {port['targetPort']!r} is no named container port of its pods")
    for monitor in index.get("ServiceMonitor", {}).values():
        selector = label_selector(monitor["spec"].get("selector"))
        services = [
            s
            for s in index.get("Service", {}).values()
            if selector and matches(selector, s["metadata"].get("labels", {}))
        ]
        if not services:
            found.append(f"{ident(monitor)}: selects no Service")
        for svc in services:
            names = {p.get("name") for p in svc["spec"].get("ports", [])}
            for endpoint in monitor["spec"].get("endpoints", []):
                if endpoint.get("port") not in names:
                    found.append(f"{ident(monitor)}: {ident(svc)} has no port {endpoint.get('port')!r}")
            if monitor["spec"].get("jobLabel") not in svc["metadata"].get("labels", {}):
                found.append(f"{ident(monitor)}: {ident(svc)} lacks the job label {monitor['spec'].get('jobLabel')}")
    for monitor in index.get("PodMonitor", {}).values():
        targets = pods_matching(label_selector(monitor["spec"].get("selector")))
        if not targets:
            found.append(f"{ident(monitor)}: selects no pod template")
        for endpoint in monitor["spec"].get("podMetricsEndpoints", []):
            if targets and endpoint.get("port") not in ports_of(targets):
                found.append(f"{ident(monitor)}: no container port {endpoint.get('port')!r} in the selected pods")
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for scaler in index.get(kind, {}).values():
            ref = scaler["spec"]["scaleTargetRef"]
            if ref["name"] not in index.get(ref.get("kind", "Deployment"), {}):
                found.append(f"{ident(scaler)}: target {ref.get('kind')}/{ref['name']} is not in the overlay")
    for pdb in index.get("PodDisruptionBudget", {}).values():
        if not pods_matching(label_selector(pdb["spec"].get("selector"))):
            found.append(f"{ident(pdb)}: selector matches no pod template")
    for policy in index.get("NetworkPolicy", {}).values():
        spec = policy["spec"]
        selector = label_selector(spec.get("podSelector"))
        if selector and not pods_matching(selector):
            found.append(f"{ident(policy)}: podSelector matches no pod template")
        for rule in spec.get("ingress", []) + spec.get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                inner = label_selector(peer.get("podSelector"))
                if "namespaceSelector" not in peer and inner and not pods_matching(inner):
                    found.append(f"{ident(policy)}: peer podSelector {inner} matches no pod of the overlay")
    return found


# --------------------------------------------------------------------------------------
# The service's settings


@cache
def known_settings() -> frozenset[str]:
    from pydantic import BaseModel

    from sandbox.config import Settings

    names = set()
    for name, field in Settings.model_fields.items():
        names.add(f"SANDBOX_{name.upper()}")
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names |= {f"SANDBOX_{name.upper()}__{sub.upper()}" for sub in field.annotation.model_fields}
    return frozenset(names)


def container_env(c: Obj, config_maps: dict[str, Obj], pod_name: str) -> dict[str, str]:
    """The environment the container would get, with placeholders for Secret values."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(config_maps.get(source.get("configMapRef", {}).get("name"), {}).get("data", {}))
    for e in c.get("env", []):
        source = e.get("valueFrom", {})
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "secretKeyRef" in source:
            env[e["name"]] = PLACEHOLDERS.get(source["secretKeyRef"]["key"], "placeholder")
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = pod_name
    return env


@contextlib.contextmanager
def sandbox_environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ with exactly these SANDBOX_* variables, for building Settings() as the service does."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("SANDBOX_")}
    try:
        for k in saved:
            del os.environ[k]
        os.environ.update({k: v for k, v in env.items() if k.startswith("SANDBOX_")})
        yield
    finally:
        for k in [k for k in os.environ if k.startswith("SANDBOX_")]:
            del os.environ[k]
        os.environ.update(saved)


def _mount(c: Obj, path: str) -> str | None:
    """ "<volume> at <mount path>" for the mount holding `path` in container c."""
    best: tuple[str, str] | None = None
    for m in c.get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/")
        if (path == mount or path.startswith(mount + "/")) and (best is None or len(mount) > len(best[0])):
            best = (mount, m["name"])
    return f"{best[1]} at {best[0]}" if best else None


def _engine_findings(me: str, spec: Obj, worker: Obj, s: Any) -> list[str]:
    """The engine resolves bind-mount sources in its own filesystem: the paths must be shared."""
    order = [c["name"] for _, c in containers(spec)]
    dind = next((c for role, c in containers(spec) if c["name"] == "dind" and role == "sidecar"), None)
    if dind is None:
        return [f"{me}: no dind sidecar (an init container with restartPolicy: Always) next to the worker"]
    if not s.docker_host.startswith("unix://"):
        return [f"{me}: SANDBOX_DOCKER_HOST {s.docker_host} is not the pod's unix socket"]
    found = []
    if f"--host={s.docker_host}" not in command_of(dind):
        found.append(f"{me}: dind does not listen on SANDBOX_DOCKER_HOST {s.docker_host}")
    socket_dir = str(Path(s.docker_host.removeprefix("unix://")).parent)
    for role, c in containers(spec):  # init containers start one after the other, in order
        if role == "init" and _mount(c, socket_dir) and order.index(c["name"]) < order.index("dind"):
            found.append(f"{me}: init container {c['name']} uses the engine but starts before dind")
    shared = {"SANDBOX_RUN_DIR": str(s.run_dir), "SANDBOX_GUEST_DIR": str(s.guest_dir), "the socket": socket_dir}
    for label, path in shared.items():
        here, there = _mount(worker, path), _mount(dind, path)
        if here is None or here != there:
            found.append(
                f"{me}: {label} {path} must be the same volume at the same path in worker and dind "
                f"(worker: {here}, dind: {there})"
            )
    return found


def _service_findings(me: str, obj: Obj, spec: Obj, c: Obj, s: Any) -> list[str]:
    command = command_of(c)
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    found = []
    if command[1:2] == ["api"] and (s.api_host != "0.0.0.0" or ports.get("http") != s.api_port):
        found.append(f"{me}: the API binds {s.api_host}:{s.api_port}; the pod's http port is {ports.get('http')}")
    if command[1:2] == ["beat"] and (
        obj.get("kind") != "Deployment" or obj["spec"].get("strategy", {}).get("type") != "Recreate"
    ):
        found.append(f"{me}: beat must be a Deployment with strategy Recreate (never two at once)")
    if command[1:2] == ["worker"]:
        if "--beat" in command:
            found.append(f"{me}: workers run without --beat (beat runs once per cluster)")
        if s.worker_metrics_host != "0.0.0.0" or ports.get("metrics") != s.worker_metrics_port:
            where = f"{s.worker_metrics_host}:{s.worker_metrics_port}"
            found.append(f"{me}: metrics on {where}; the pod's metrics port is {ports.get('metrics')}")
        host_id = next((e for e in c.get("env", []) if e["name"] == "SANDBOX_HOST_ID"), {})
        from_pod_name = host_id.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name"
        if obj.get("kind") != "StatefulSet" or not from_pod_name:
            found.append(f"{me}: SANDBOX_HOST_ID must be the pod name of a StatefulSet (stable and unique)")
        found += _engine_findings(me, spec, c, s)
    return found


def settings_findings(objs: list[Obj]) -> list[str]:
    from pydantic import ValidationError

    from sandbox.config import Settings

    known = known_settings()
    config_maps = by_kind(objs).get("ConfigMap", {})
    found = [f"{ident(cm)}: {k} is not a setting of sandbox/config.py" for cm in config_maps.values()
             for k in cm.get("data", {}) if k.startswith("SANDBOX_") and k not in known]  # fmt: skip
    provision_queues = set()
    beats = 0
    for obj, template in workloads(objs):
        for _, c in containers(template["spec"]):
            me = f"{ident(obj)} container {c['name']}"
            found += [f"{me}: env {e['name']} is not a setting of sandbox/config.py" for e in c.get("env", [])
                      if e["name"].startswith("SANDBOX_") and e["name"] not in known]  # fmt: skip
            command = command_of(c)
            if command[:1] != ["sandbox"]:
                continue
            with sandbox_environment(container_env(c, config_maps, f"{obj['metadata']['name']}-0")):
                try:
                    s = Settings()
                except ValidationError as exc:
                    found.append(f"{me}: the service refuses these settings: {exc}")
                    continue
            found += _service_findings(me, obj, template["spec"], c, s)
            if command[1:2] == ["beat"] or "--beat" in command:
                beats += obj["spec"].get("replicas", 1)
            if command[1:2] == ["worker"]:
                provision_queues.add(s.provision_queue)
    if beats != 1:
        found.append(f"{beats} beat processes in the overlay: exactly one must keep the schedule")
    for scaled in (o for o in objs if o.get("kind") == "ScaledObject"):
        for trigger in scaled["spec"].get("triggers", []):
            watched = trigger.get("metadata", {}).get("listName")
            if trigger.get("type") == "redis" and {watched} != provision_queues:
                found.append(
                    f"{ident(scaled)}: watches the list {watched!r}, "
                    f"the workers' provisioning queue is {sorted(provision_queues)}"
                )
    return found
