"""Structural checks of the objects the Kubernetes schemas do not cover (custom resources).

Not the operators' full CRD schemas: the fields we use, the types the API server would refuse
(e.g. a bare number where KEDA wants a string), unknown fields at the levels we write, and
references between the objects. The HPA behaviour a ScaledObject hands to KEDA is checked
against the real HorizontalPodAutoscaler schema.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from manifests import KUBERNETES_VERSIONS, Obj, ident, label_selector

DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def _keys(where: str, value: Any, allowed: set[str], required: set[str] | None = None) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: expected a mapping"]
    found = [f"{where}: unknown field {k!r}" for k in value if k not in allowed]
    return found + [f"{where}: missing {k!r}" for k in sorted(required or ()) if k not in value]


def _durations(where: str, value: dict[str, Any], *keys: str) -> list[str]:
    return [f"{where}: {k} {value[k]!r} is not a Prometheus duration" for k in keys if k in value
            and not DURATION.match(str(value[k]))]  # fmt: skip


MONITOR_SPEC = {"jobLabel", "selector", "namespaceSelector", "podTargetLabels", "targetLabels", "sampleLimit"}
ENDPOINT = {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings", "metricRelabelings"}


def _monitor(obj: Obj, endpoints_key: str) -> list[str]:
    me, spec = ident(obj), obj.get("spec", {})
    found = _keys(f"{me} spec", spec, MONITOR_SPEC | {endpoints_key}, {"selector", endpoints_key})
    if not label_selector(spec.get("selector")):
        found.append(f"{me}: selector needs matchLabels")
    endpoints = spec.get(endpoints_key) or []
    if not endpoints:
        found.append(f"{me}: no {endpoints_key}")
    for i, endpoint in enumerate(endpoints):
        where = f"{me} {endpoints_key}[{i}]"
        found += _keys(where, endpoint, ENDPOINT, {"port"})
        if not str(endpoint.get("path", "/")).startswith("/"):
            found.append(f"{where}: path must start with /")
        found += _durations(where, endpoint, "interval", "scrapeTimeout")
    return found


def _prometheus_rule(obj: Obj) -> list[str]:
    me = ident(obj)
    groups = obj.get("spec", {}).get("groups")
    if not isinstance(groups, list) or not groups:
        return [f"{me}: spec.groups must be a non-empty list"]
    names = Counter(g.get("name") for g in groups)
    found = [f"{me}: group name {n!r} repeated" for n, count in names.items() if count > 1]
    for group in groups:
        found += _keys(
            f"{me} group {group.get('name')}", group, {"name", "interval", "rules", "limit"}, {"name", "rules"}
        )
        for rule in group.get("rules") or []:
            where = f"{me} rule {rule.get('alert') or rule.get('record')}"
            if ("alert" in rule) == ("record" in rule):
                found.append(f"{where}: needs exactly one of alert and record")
            allowed = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
            found += _keys(where, rule, allowed, {"expr"})
            if not str(rule.get("expr", "")).strip():
                found.append(f"{where}: empty expr")
            found += _durations(where, rule, "for", "keep_firing_for")
            for key in ("labels", "annotations"):
                if any(not isinstance(v, str) for v in (rule.get(key) or {}).values()):
                    found.append(f"{where}: {key} values must be strings")
    return found


SCALED_OBJECT_SPEC = {
    "scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod",
    "idleReplicaCount", "fallback", "advanced", "triggers",
}  # fmt: skip
TRIGGER = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}


def _hpa_behavior(me: str, behavior: Any) -> list[str]:
    """KEDA hands this to the HPA it creates: check it against the HPA's own schema."""
    import kubernetes_validate

    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "behavior-check"},
        "spec": {"scaleTargetRef": {"kind": "StatefulSet", "name": "x"}, "maxReplicas": 1, "behavior": behavior},
    }
    try:
        kubernetes_validate.validate(hpa, KUBERNETES_VERSIONS[0], strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{me}: advanced.horizontalPodAutoscalerConfig.behavior: {exc.message}"]
    return []


def _scaled_object(obj: Obj, objs: list[Obj]) -> list[str]:
    me, spec = ident(obj), obj.get("spec", {})
    found = _keys(f"{me} spec", spec, SCALED_OBJECT_SPEC, {"scaleTargetRef", "triggers"})
    target = spec.get("scaleTargetRef", {})
    found += _keys(f"{me} scaleTargetRef", target, {"apiVersion", "kind", "name", "envSourceContainerName"}, {"name"})
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
        found.append(f"{me}: needs integers 0 <= minReplicaCount <= maxReplicaCount")
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:
        found += _hpa_behavior(me, behavior)
    if not spec.get("triggers"):
        found.append(f"{me}: no triggers")
    auths = {o["metadata"]["name"] for o in objs if o.get("kind") == "TriggerAuthentication"}
    for i, trigger in enumerate(spec.get("triggers") or []):
        where = f"{me} triggers[{i}]"
        found += _keys(where, trigger, TRIGGER, {"type", "metadata"})
        metadata = trigger.get("metadata", {})
        # map[string]string in the CRD: the API server refuses a bare number.
        found += [f"{where}: metadata.{k} must be a string" for k, v in metadata.items() if not isinstance(v, str)]
        if trigger.get("type") == "redis":
            found += [f"{where}: needs metadata.{k}" for k in ("listName", "listLength") if k not in metadata]
            length = str(metadata.get("listLength", "1"))
            if not length.isdigit() or int(length) < 1:
                found.append(f"{where}: listLength must be a positive integer")
        ref = trigger.get("authenticationRef", {}).get("name")
        if ref is not None and ref not in auths:
            found.append(f"{where}: authenticationRef {ref!r} is no TriggerAuthentication of the overlay")
    return found


def _trigger_authentication(obj: Obj) -> list[str]:
    me, spec = ident(obj), obj.get("spec", {})
    found = _keys(f"{me} spec", spec, {"secretTargetRef", "env", "configMapTargetRef", "podIdentity"})
    for i, ref in enumerate(spec.get("secretTargetRef") or []):
        found += _keys(f"{me} secretTargetRef[{i}]", ref, {"parameter", "name", "key"}, {"parameter", "name", "key"})
    return found


CHECKS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): lambda o, _: _monitor(o, "endpoints"),
    ("monitoring.coreos.com/v1", "PodMonitor"): lambda o, _: _monitor(o, "podMetricsEndpoints"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): lambda o, _: _prometheus_rule(o),
    ("keda.sh/v1alpha1", "ScaledObject"): _scaled_object,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): lambda o, _: _trigger_authentication(o),
}


def crd_findings(obj: Obj, objs: list[Obj]) -> list[str]:
    check = CHECKS.get((obj.get("apiVersion"), obj.get("kind")))
    if check is None:
        return [f"{ident(obj)}: {obj.get('apiVersion')} has no Kubernetes schema and no check in k8s/crds.py"]
    found = _keys(ident(obj), obj, {"apiVersion", "kind", "metadata", "spec"}, {"metadata", "spec"})
    if not obj.get("metadata", {}).get("name"):
        found.append(f"{ident(obj)}: metadata.name missing")
    return found + check(obj, objs)
