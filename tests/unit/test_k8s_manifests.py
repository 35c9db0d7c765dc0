"""The Kubernetes manifests (k8s/), checked offline: there is no cluster on our machines.

Every overlay is rendered with `kubectl kustomize`, validated against the Kubernetes schemas
(kubernetes-validate, strict), its custom resources checked structurally, and held to the
policy and to the service's own settings (k8s/checks.py and its parts). Each check is also
run on a deliberately broken copy, to show that it can fail.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
sys.path.insert(0, str(K8S))

import checks  # noqa: E402
import consistency  # noqa: E402
import crds  # noqa: E402
import generate  # noqa: E402
import manifests  # noqa: E402

OVERLAYS = {p.name: p for p in manifests.OVERLAYS}
Objs = list[dict[str, Any]]


@cache
def _rendered(overlay: str) -> str:
    return json.dumps(manifests.render(OVERLAYS[overlay]))


def rendered(overlay: str) -> Objs:
    """A fresh copy of the rendered overlay (rendered once per session)."""
    return json.loads(_rendered(overlay))


def get(objs: Objs, kind: str, name: str) -> dict[str, Any]:
    """The object of that kind whose name is `name` (or starts with it: generated ConfigMaps get a hash)."""
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def pod(objs: Objs, kind: str, name: str) -> dict[str, Any]:
    return get(objs, kind, name)["spec"]["template"]["spec"]


def container(objs: Objs, kind: str, name: str, container_name: str) -> dict[str, Any]:
    spec = pod(objs, kind, name)
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == container_name)


def worker(objs: Objs, name: str = "worker") -> dict[str, Any]:
    return container(objs, "StatefulSet", "rollout-sandbox-worker", name)


def api(objs: Objs) -> dict[str, Any]:
    return container(objs, "Deployment", "rollout-sandbox-api", "api")


def config(objs: Objs) -> dict[str, str]:
    return get(objs, "ConfigMap", "rollout-sandbox-config-")["data"]


def env(c: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in c["env"] if e["name"] == name)


def _set_env(c: dict[str, Any], name: str, value: str) -> None:
    """The variable as a literal value (dropping a valueFrom)."""
    entry = env(c, name)
    entry.pop("valueFrom", None)
    entry["value"] = value


# --------------------------------------------------------------------------------------
# Rendering


def test_there_is_a_dev_and_a_prod_overlay() -> None:
    assert {"dev", "prod"} <= OVERLAYS.keys()


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_renders_the_whole_service(overlay: str) -> None:
    objs = rendered(overlay)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for expected in [
        ("Deployment", "rollout-sandbox-api"),
        ("Service", "rollout-sandbox-api"),
        ("HorizontalPodAutoscaler", "rollout-sandbox-api"),
        ("PodDisruptionBudget", "rollout-sandbox-api"),
        ("StatefulSet", "rollout-sandbox-worker"),
        ("Deployment", "rollout-sandbox-beat"),
        ("NetworkPolicy", "rollout-sandbox-default-deny"),
    ]:
        assert expected in kinds
    assert all(o["metadata"].get("namespace") == "rollout-sandbox" for o in objs if o["kind"] != "Namespace")
    # The order of the worker's init containers matters (the engine before the image load);
    # a strategic-merge patch in an overlay moves the items it names to the front.
    assert [c["name"] for c in pod(objs, "StatefulSet", "rollout-sandbox-worker")["initContainers"]] == [
        "guest",
        "dind",
        "load-sandbox-image",
    ]


def test_dev_runs_its_own_redis_and_prod_uses_an_external_one() -> None:
    dev, prod = rendered("dev"), rendered("prod")
    assert get(dev, "StatefulSet", "rollout-sandbox-redis")["spec"]["volumeClaimTemplates"]
    assert "--appendonly" in container(dev, "StatefulSet", "rollout-sandbox-redis", "redis")["args"]
    assert config(dev)["SANDBOX_REDIS_URL"] == "redis://rollout-sandbox-redis:6379/0"
    assert not [o for o in prod if "redis" in o["metadata"]["name"] and o["kind"] in ("StatefulSet", "Service")]
    assert "SANDBOX_REDIS_URL" not in config(prod)
    for c in (api(prod), worker(prod), container(prod, "Deployment", "rollout-sandbox-beat", "beat")):
        assert env(c, "SANDBOX_REDIS_URL")["valueFrom"]["secretKeyRef"] == {
            "name": "rollout-sandbox-redis",
            "key": "url",
        }


def test_prod_has_the_monitoring_and_autoscaling_objects() -> None:
    prod = rendered("prod")
    kinds = {o["kind"] for o in prod}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"} <= kinds
    dashboards = get(prod, "ConfigMap", "rollout-sandbox-grafana-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config(prod)["SANDBOX_ENV"] == "production"
    assert config(rendered("dev"))["SANDBOX_ENV"] == "development"


def test_a_broken_overlay_fails_to_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(manifests.RenderError, match="missing.yaml"):
        manifests.render(tmp_path)


# --------------------------------------------------------------------------------------
# Kubernetes schemas (and the structural checks of the custom resources)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_object_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    assert checks.schema_findings(rendered(overlay)) == []


def test_schema_validation_rejects_unknown_fields_and_wrong_types() -> None:
    objs = rendered("dev")
    statefulset = get(objs, "StatefulSet", "rollout-sandbox-worker")
    worker(objs)["imagePullPolicyy"] = "Always"
    deployment = get(objs, "Deployment", "rollout-sandbox-beat")
    deployment["spec"]["replicas"] = "one"
    found = checks.schema_findings([statefulset, deployment])
    assert any("'imagePullPolicyy' was unexpected" in f for f in found)
    assert any("Deployment/rollout-sandbox-beat" in f and "replicas" in f for f in found)
    assert all(any(f"Kubernetes {v}" in f for f in found) for v in manifests.KUBERNETES_VERSIONS)


def _scaled_object(objs: Objs) -> dict[str, Any]:
    return get(objs, "ScaledObject", "rollout-sandbox-worker")


def _first_rule(objs: Objs) -> dict[str, Any]:
    return get(objs, "PrometheusRule", "rollout-sandbox-alerts")["spec"]["groups"][0]["rules"][0]


CRD_BREAKAGES: list[tuple[str, Callable[[Objs], Any], str]] = [
    ("listLength as a number", lambda o: _scaled_object(o)["spec"]["triggers"][0]["metadata"].update(listLength=30),
     "metadata.listLength must be a string"),
    ("no listName", lambda o: _scaled_object(o)["spec"]["triggers"][0]["metadata"].pop("listName"),
     "needs metadata.listName"),
    ("bad HPA behaviour", lambda o: _scaled_object(o)["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
     ["scaleDown"]["policies"][0].update(value="one"), "behavior"),
    ("min above max", lambda o: _scaled_object(o)["spec"].update(minReplicaCount=30), "minReplicaCount"),
    ("unknown auth", lambda o: _scaled_object(o)["spec"]["triggers"][0]["authenticationRef"].update(name="nope"),
     "authenticationRef 'nope'"),
    ("alert and record", lambda o: _first_rule(o).update(record="x"), "exactly one of alert and record"),
    ("bad for", lambda o: _first_rule(o).update({"for": "5 minutes"}), "not a Prometheus duration"),
    ("no endpoints", lambda o: get(o, "ServiceMonitor", "rollout-sandbox-api")["spec"].pop("endpoints"),
     "missing 'endpoints'"),
    ("typo in monitor", lambda o: get(o, "PodMonitor", "rollout-sandbox-worker")["spec"]["podMetricsEndpoints"][0]
     .update(intervall="15s"), "unknown field 'intervall'"),
    ("unknown CRD", lambda o: o.append({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
                                         "spec": {}}), "no check in k8s/crds.py"),
]  # fmt: skip


def test_custom_resources_pass_their_structural_checks() -> None:
    objs = rendered("prod")
    custom = [o for o in objs if (o["apiVersion"], o["kind"]) in crds.CHECKS]
    assert len(custom) == 6
    assert [f for o in custom for f in crds.crd_findings(o, objs)] == []


@pytest.mark.parametrize(
    ("breakage", "expected"), [(b, e) for _, b, e in CRD_BREAKAGES], ids=[n for n, _, _ in CRD_BREAKAGES]
)
def test_structural_checks_catch(breakage: Callable[[Objs], Any], expected: str) -> None:
    objs = rendered("prod")
    breakage(objs)
    custom = [o for o in objs if o["apiVersion"].split("/")[0] in ("monitoring.coreos.com", "keda.sh", "example.com")]
    found = [f for o in custom for f in crds.crd_findings(o, objs)]
    assert any(expected in f for f in found), found


# --------------------------------------------------------------------------------------
# Policy


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_meets_the_policy(overlay: str) -> None:
    assert checks.policy_findings(rendered(overlay)) == []


POLICY_BREAKAGES: list[tuple[str, Callable[[Objs], Any], str]] = [
    ("no limits", lambda o: worker(o)["resources"].pop("limits"), "container worker: no limits for cpu, memory"),
    ("no cpu request", lambda o: worker(o, "guest")["resources"]["requests"].pop("cpu"), "no requests for cpu"),
    ("tag latest", lambda o: api(o).update(image="rollout-sandbox-service:latest"), "uses the tag latest"),
    ("no tag", lambda o: worker(o, "dind").update(image="registry.local:5000/docker"), "has no tag"),
    ("no readiness probe", lambda o: worker(o).pop("readinessProbe"), "container worker: no readinessProbe"),
    ("sidecar without probes", lambda o: worker(o, "dind").pop("livenessProbe"), "container dind: no livenessProbe"),
    ("probe on an init container", lambda o: worker(o, "guest").update(readinessProbe={"exec": {"command": ["true"]}}),
     "cannot have probes"),
    ("API readiness on /healthz", lambda o: api(o)["readinessProbe"]["httpGet"].update(path="/healthz"),
     "readinessProbe must be an httpGet of /readyz"),
    ("exemption without reason", lambda o: get(o, "Deployment", "rollout-sandbox-beat")["spec"]["template"]["metadata"]
     ["annotations"].update({checks.NO_PROBES_ANNOTATION: "beat:"}), "container beat: no livenessProbe"),
    ("privileged worker", lambda o: worker(o)["securityContext"].update(privileged=True), "privileged (only"),
    ("escalation allowed", lambda o: api(o)["securityContext"].pop("allowPrivilegeEscalation"),
     "allowPrivilegeEscalation: false"),
    ("token literal", lambda o: _set_env(api(o), "SANDBOX_API_TOKENS", "abc"),
     "SANDBOX_API_TOKENS looks like a secret"),
    ("password in a URL", lambda o: api(o)["env"].append({"name": "SANDBOX_REDIS_URL",
                                                          "value": "redis://:hunter22@redis:6379/0"}),
     "looks like a credential"),
    ("token in the ConfigMap", lambda o: config(o).update(SANDBOX_BROKER_URL=secrets.token_urlsafe(24)),
     "key SANDBOX_BROKER_URL holds what looks like a credential"),
    ("Secret object", lambda o: o.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                                          "stringData": {"tokens": "x"}}), "Secret/s: Secrets are created in"),
    ("replicas under an autoscaler", lambda o: get(o, "StatefulSet", "rollout-sandbox-worker")["spec"]
     .update(replicas=3), "an autoscaler owns its replicas"),
    ("service account token", lambda o: pod(o, "Deployment", "rollout-sandbox-api")
     .update(automountServiceAccountToken=True), "automountServiceAccountToken: false"),
    ("hostPath", lambda o: pod(o, "StatefulSet", "rollout-sandbox-worker")["volumes"]
     .append({"name": "sock", "hostPath": {"path": "/var/run/docker.sock"}}), "hostPath volume sock"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("breakage", "expected"), [(b, e) for _, b, e in POLICY_BREAKAGES], ids=[n for n, _, _ in POLICY_BREAKAGES]
)
def test_policy_catches(breakage: Callable[[Objs], Any], expected: str) -> None:
    objs = rendered("prod")
    breakage(objs)
    found = checks.policy_findings(objs)
    assert any(expected in f for f in found), found


def test_looks_like_secret_tells_tokens_from_settings() -> None:
    tokens = ["18c193c293efe809ac781e2a3e180ce9", "Jx3kL9_qP2vR8-tY5wZ1nB4m", "redis://:pw@host:6379/0"]
    for token in tokens + [secrets.token_hex(16), secrets.token_urlsafe(24)]:
        assert checks.looks_like_secret(token), token
    values = [v for overlay in OVERLAYS for v in config(rendered(overlay)).values()]
    values += ["rollout-sandbox-worker-0", "rollout-sandbox-config-6dmk58ctk7", "redis://redis:6379/0"]
    values += ["unix:///var/run/dind/docker.sock", "docker:24-dind", "/var/lib/rollout-sandbox/guest", "10.0.0.0/8"]
    assert [v for v in values if checks.looks_like_secret(v)] == []


def test_no_secret_is_generated_or_inlined_anywhere_under_k8s(tmp_path: Path) -> None:
    assert checks.repository_findings() == []
    (tmp_path / "kustomization.yaml").write_text("secretGenerator:\n  - name: s\n    literals: [tokens=abc]\n")
    (tmp_path / "secret.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {a: b}\n")
    found = checks.repository_findings(tmp_path)
    assert len(found) == 2 and "secretGenerator" in found[0] and "inline data" in found[1]


# --------------------------------------------------------------------------------------
# References between objects, and the service's settings


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_references_resolve(overlay: str) -> None:
    assert consistency.reference_findings(rendered(overlay)) == []


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_settings_are_what_the_service_accepts_and_the_pods_agree(overlay: str) -> None:
    assert consistency.settings_findings(rendered(overlay)) == []


REFERENCE_BREAKAGES: list[tuple[str, Callable[[Objs], Any], str]] = [
    ("Service port renamed", lambda o: get(o, "Service", "rollout-sandbox-api")["spec"]["ports"][0]
     .update(targetPort="web"), "targetPort 'web' is no named container port"),
    ("job label dropped", lambda o: get(o, "Service", "rollout-sandbox-api")["metadata"]["labels"]
     .pop("rollout-sandbox/metrics-job"), "ServiceMonitor/rollout-sandbox-api: selects no Service"),
    ("metrics port renamed", lambda o: worker(o)["ports"][0].update(name="prom"), "no container port 'metrics'"),
    ("unknown Secret key", lambda o: get(o, "TriggerAuthentication", "rollout-sandbox-redis")["spec"]
     ["secretTargetRef"][0].update(key="host"), "key host is not in EXTERNAL_SECRETS"),
    ("unknown Secret", lambda o: env(api(o), "SANDBOX_API_TOKENS")["valueFrom"]["secretKeyRef"]
     .update(name="tokens"), "Secret tokens key tokens is not in EXTERNAL_SECRETS"),
    ("egress to pods that are gone", lambda o: get(o, "NetworkPolicy", "rollout-sandbox-redis-clients")["spec"]
     .update(egress=[{"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "redis"}}}]}]),
     "matches no pod of the overlay"),
    ("HPA target renamed", lambda o: get(o, "HorizontalPodAutoscaler", "rollout-sandbox-api")["spec"]
     ["scaleTargetRef"].update(name="api"), "target Deployment/api is not in the overlay"),
    ("undeclared volume", lambda o: worker(o)["volumeMounts"].append({"name": "cache", "mountPath": "/cache"}),
     "mounts undeclared volume cache"),
]  # fmt: skip

SETTINGS_BREAKAGES: list[tuple[str, Callable[[Objs], Any], str]] = [
    ("misspelt setting", lambda o: config(o).update(SANDBOX_WORKER_CONCURENCY="32"),
     "SANDBOX_WORKER_CONCURENCY is not a setting"),
    ("value the service refuses", lambda o: config(o).update(SANDBOX_WORKER_CONCURRENCY="many"),
     "the service refuses these settings"),
    ("API port disagrees", lambda o: config(o).update(SANDBOX_API_PORT="8080"), "the pod's http port is 8000"),
    ("metrics on loopback", lambda o: config(o).update(SANDBOX_WORKER_METRICS_HOST="127.0.0.1"),
     "metrics on 127.0.0.1"),
    ("run dir not shared", lambda o: _set_env(worker(o), "SANDBOX_RUN_DIR", "/var/run/sandboxes"),
     "SANDBOX_RUN_DIR /var/run/sandboxes must be the same volume"),
    ("guest dir elsewhere in dind", lambda o: next(m for m in worker(o, "dind")["volumeMounts"] if m["name"] == "guest")
     .update(mountPath="/guest"), "SANDBOX_GUEST_DIR"),
    ("engine on another socket", lambda o: _set_env(worker(o), "SANDBOX_DOCKER_HOST", "unix:///var/run/docker.sock"),
     "dind does not listen on SANDBOX_DOCKER_HOST"),
    ("image loaded before the engine", lambda o: pod(o, "StatefulSet", "rollout-sandbox-worker")["initContainers"]
     .reverse(), "load-sandbox-image uses the engine but starts before dind"),
    ("host id not the pod name", lambda o: _set_env(worker(o), "SANDBOX_HOST_ID", "w"),
     "SANDBOX_HOST_ID must be the pod name"),
    ("worker with beat", lambda o: worker(o).update(command=["sandbox", "worker", "--beat"]),
     "workers run without --beat"),
    ("two beats", lambda o: get(o, "Deployment", "rollout-sandbox-beat")["spec"].update(replicas=2),
     "2 beat processes"),
    ("beat rolling", lambda o: get(o, "Deployment", "rollout-sandbox-beat")["spec"].update(strategy={}),
     "strategy Recreate"),
    ("KEDA watches another queue", lambda o: config(o).update(SANDBOX_INSTANCE="blue"),
     "the workers' provisioning queue is ['blue.provision']"),
    ("production without tokens", lambda o: api(o)["env"].remove(env(api(o), "SANDBOX_API_TOKENS")),
     "production needs SANDBOX_API_TOKENS"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("check", "breakage", "expected"),
    [(consistency.reference_findings, b, e) for _, b, e in REFERENCE_BREAKAGES]
    + [(consistency.settings_findings, b, e) for _, b, e in SETTINGS_BREAKAGES],
    ids=[n for n, _, _ in REFERENCE_BREAKAGES + SETTINGS_BREAKAGES],
)
def test_consistency_checks_catch(
    check: Callable[[Objs], list[str]], breakage: Callable[[Objs], Any], expected: str
) -> None:
    objs = rendered("prod")
    breakage(objs)
    found = check(objs)
    assert any(expected in f for f in found), found


def test_settings_checks_leave_the_environment_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_INSTANCE", "outer")
    consistency.settings_findings(rendered("dev"))
    assert os.environ["SANDBOX_INSTANCE"] == "outer"
    assert "SANDBOX_HOST_ID" not in os.environ


# --------------------------------------------------------------------------------------
# Generated from monitoring/


def test_generated_monitoring_objects_are_up_to_date() -> None:
    assert generate.stale() == [], "run .venv/bin/python k8s/generate.py"


def test_a_changed_source_makes_the_generated_files_stale(tmp_path: Path) -> None:
    monitoring = tmp_path / "monitoring"
    shutil.copytree(REPO / "monitoring", monitoring)
    output = tmp_path / "generated"
    shutil.copytree(generate.OUTPUT, output)
    assert generate.stale(output, monitoring) == []
    rules = monitoring / "rules" / "alerts.yml"
    rules.write_text(rules.read_text().replace("          severity: critical", "          severity: page", 1))
    (output / "leftover.yaml").write_text("{}\n")
    problems = generate.stale(output, monitoring)
    assert any("prometheusrule-alerts.yaml" in p and "+        severity: page" in p for p in problems)
    assert any("leftover.yaml" in p for p in problems)
    assert generate.main(["--check"]) == 0


def test_monitoring_objects_carry_the_sources_unchanged() -> None:
    prod = rendered("prod")
    for path in sorted((REPO / "monitoring" / "rules").glob("*.yml")):
        rule = get(prod, "PrometheusRule", f"rollout-sandbox-{path.stem}")
        assert rule["spec"]["groups"] == yaml.safe_load(path.read_text())["groups"]
    dashboards = get(prod, "ConfigMap", "rollout-sandbox-grafana-dashboards")["data"]
    for path in sorted((REPO / "monitoring" / "grafana" / "dashboards").glob("*.json")):
        assert dashboards[path.name] == path.read_text()
    # The monitors give every target the job name of monitoring/prometheus.yml, which the alerts use.
    jobs = {
        j["job_name"] for j in yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())["scrape_configs"]
    }
    monitored = {
        o["spec"]["selector"]["matchLabels"][o["spec"]["jobLabel"]]
        for o in prod
        if o["kind"] in ("ServiceMonitor", "PodMonitor")
    }
    assert monitored == jobs
    alerts = (REPO / "monitoring" / "rules" / "alerts.yml").read_text()
    assert set(re.search(r'up\{job=~"([^"]+)"\}', alerts).group(1).split("|")) == jobs  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------
# Docs


def test_docs_name_what_must_exist_outside_the_manifests() -> None:
    text = (REPO / "docs" / "kubernetes.md").read_text()
    for name, keys in manifests.EXTERNAL_SECRETS.items():
        assert name in text
        for key in keys:
            assert f"{key}=" in text, f"docs/kubernetes.md shows no command creating key {key} of {name}"
    for claim in manifests.EXTERNAL_CLAIMS:
        assert claim in text
    for version in manifests.KUBERNETES_VERSIONS:
        assert version.rsplit(".", 1)[0] in text
    assert "never applied" in text
