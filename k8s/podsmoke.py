"""The worker pod of the manifests, run for real on this machine: `make pod-smoke`.

Renders an overlay (dev by default) with `kubectl kustomize`, as k8s/checks.py does, takes the
pod templates of Redis, the sandbox worker, the API and beat from the rendered objects, and
runs them with the emulated kubelet of k8s/kubelet.py on the local Docker engine: the same
images, commands, environment, volumes and securityContext, in the kubelet's order (the
worker pod: init container `guest`, sidecar `dind`, init container `load-sandbox-image`,
then `worker`). Then, through the API pod, it makes real tool calls and shows:
- the sandbox container created inside the worker pod's own engine (the dind sidecar), and
  not on this machine's engine;
- the sandbox image in that engine, loaded from the bundle by `load-sandbox-image`, with the
  image id `make images` built;
- the worker's metrics, scraped from the pod's `metrics` port;
- a clean stop, in the kubelet's order, after which nothing of the run is left.

    .venv/bin/python k8s/podsmoke.py [--overlay dev|prod] [--keep] [--json FILE]
    .venv/bin/python k8s/podsmoke.py --clean [--run-id ID]   # what an interrupted or --keep run left

Progress goes to stdout with the elapsed time; the exit status is 1 when a check fails.
Needs the images (`make images`), a recent kubectl (k8s/install-tools.sh), root (nsenter into
the pods' network namespace) and nothing else: every request stays in that namespace's
loopback. tests/integration/test_worker_pod.py runs it under pytest.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
from kubelet import RUN_LABEL, Cluster, Pod, PodError, Response, remove_tree
from manifests import K8S, REPO, Obj, RenderError, by_kind, render
from podspec import Unsupported

TAGS = REPO / "images" / "tags.env"
WORKER = "rollout-sandbox-worker"
API = "rollout-sandbox-api"
BEAT = "rollout-sandbox-beat"
REDIS = "rollout-sandbox-redis"
# The overlay whose in-cluster Redis stands in for prod's external one.
REDIS_FROM = "dev"
STATE_PARENT = Path("/var/tmp")


class SmokeFailure(Exception):
    pass


def image_tags() -> dict[str, str]:
    """images/tags.env: NAME=value lines."""
    tags = {}
    for line in TAGS.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            tags[name.strip()] = value.strip()
    return tags


class Smoke:
    """One run: start the pods, exercise them, stop them; `report` holds the checks and timings."""

    def __init__(self, overlay: str, keep: bool = False, run_id: str | None = None) -> None:
        self.overlay = overlay
        self.keep = keep
        self.t0 = time.monotonic()
        self.run_id = run_id or secrets.token_hex(3)
        self.client = docker.from_env(timeout=600)
        self.report: dict[str, Any] = {"overlay": overlay, "run_id": self.run_id, "timings_s": {}, "checks": []}
        self.pods: list[Pod] = []
        self.cluster: Cluster | None = None
        self.token = secrets.token_urlsafe(24)
        self.api_port = 0  # the API container's port `http`, from the manifest

    # ------------------------------------------------------------------ output ----

    def log(self, text: str) -> None:
        print(f"[pod-smoke +{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    def timing(self, name: str, seconds: float) -> None:
        self.report["timings_s"][name] = round(seconds, 3)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.report["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
        self.log(f"{'ok' if ok else 'FAILED'}: {name}{f' ({detail})' if detail else ''}")
        if not ok:
            raise SmokeFailure(f"{name}: {detail}")

    # ------------------------------------------------------------------- setup ----

    def _objects(self) -> tuple[dict[str, dict[str, Obj]], dict[str, Obj]]:
        t = time.monotonic()
        objs = by_kind(render(K8S / "overlays" / self.overlay))
        redis = objs.get("StatefulSet", {}).get(REDIS)
        if redis is None:
            # prod reads an external Redis from a Secret: the in-cluster one stands in for it.
            redis = by_kind(render(K8S / "overlays" / REDIS_FROM))["StatefulSet"][REDIS]
        self.timing("render", time.monotonic() - t)
        self.log(
            f"rendered k8s/overlays/{self.overlay} with kubectl kustomize ({sum(map(len, objs.values()))} objects)"
        )
        return objs, redis

    def _images_present(self, templates: list[Obj]) -> None:
        names = sorted(
            {c["image"] for t in templates for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]}
        )
        missing = []
        for name in names:
            try:
                self.client.images.get(name)
            except docker.errors.ImageNotFound:
                missing.append(name)
        # The kubelet would pull them; here nothing is pulled (no registry): `make images` builds them.
        self.check("every image the pods name is built locally", not missing, ", ".join(missing) or ", ".join(names))

    def start(self) -> None:
        objs, redis_sts = self._objects()
        worker_sts = objs["StatefulSet"][WORKER]
        api_dep, beat_dep = objs["Deployment"][API], objs["Deployment"][BEAT]
        templates = [
            redis_sts["spec"]["template"],
            worker_sts["spec"]["template"],
            api_dep["spec"]["template"],
            beat_dep["spec"]["template"],
        ]
        self._images_present(templates)
        tags = image_tags()
        config_maps = {name: obj.get("data", {}) for name, obj in objs["ConfigMap"].items()}
        namespace = worker_sts["metadata"].get("namespace", "default")
        redis_url = f"redis://{REDIS}:6379/0"
        # Created in the cluster by the operator (docs/kubernetes.md, "Secrets"); made up here.
        secret_values = {
            "rollout-sandbox-api-tokens": {"tokens": self.token},
            "rollout-sandbox-redis": {"url": redis_url, "address": f"{REDIS}:6379", "password": ""},
        }
        # Short: the engine's socket lies below it, and a unix socket path has at most 107 bytes.
        root = Path(tempfile.mkdtemp(prefix=f"rollout-podsmoke.{self.run_id}.", dir=STATE_PARENT))
        self.cluster = Cluster(self.client, self.run_id, root, namespace, config_maps, secret_values, self.log)
        services = sorted({*objs.get("Service", {}), REDIS})
        self.cluster.prepare(services, net_image=tags["IMAGE_SANDBOX"], privileged_image=tags["IMAGE_DIND"])
        refused = self.cluster.privileged_error
        self.report["privileged"] = "native" if refused is None else f"emulated: the engine refused it: {refused}"
        self.log(f"pods share one network namespace (loopback only); Services {', '.join(services)} -> 127.0.0.1")
        if refused:
            self.log(
                f"privileged: the engine refuses `privileged: true` here ({refused}); granting its privileges "
                "one by one instead (k8s/kubelet.py)"
            )

        redis = Pod(self.cluster, f"{REDIS}-0", redis_sts["spec"]["template"], self._claims(redis_sts, f"{REDIS}-0"))
        self.pods.append(redis)
        self.timing("redis pod ready", redis.start())

        self.log("starting the worker pod (init guest -> sidecar dind -> init load-sandbox-image -> worker)")
        worker = Pod(
            self.cluster, f"{WORKER}-0", worker_sts["spec"]["template"], self._claims(worker_sts, f"{WORKER}-0")
        )
        self.pods.append(worker)
        self.timing("worker pod ready", worker.start())
        self.report["worker_pod_milestones_s"] = {
            f"{s.name} {k}": round(v, 2) for s in worker.started for k, v in s.at.items()
        }

        api_container = next(c for c in api_dep["spec"]["template"]["spec"]["containers"] if c["name"] == "api")
        self.api_port = next(int(p["containerPort"]) for p in api_container["ports"] if p["name"] == "http")
        for dep in (api_dep, beat_dep):
            pod = Pod(self.cluster, f"{dep['metadata']['name']}-{self.run_id}", dep["spec"]["template"])
            self.pods.append(pod)
            self.timing(f"{dep['metadata']['name'].removeprefix('rollout-sandbox-')} pod ready", pod.start())

    @staticmethod
    def _claims(sts: Obj, pod_name: str) -> dict[str, str]:
        return {
            t["metadata"]["name"]: f"{t['metadata']['name']}-{pod_name}"
            for t in sts["spec"].get("volumeClaimTemplates", [])
        }

    def pod(self, prefix: str) -> Pod:
        return next(p for p in self.pods if p.name.startswith(prefix))

    # ------------------------------------------------------------------- calls ----

    def call(self, tool: str, rollout: str, arguments: dict[str, Any], n: int) -> Response:
        assert self.cluster is not None
        body = {
            "type": "function_call",
            "id": f"fc_{n}",
            "call_id": f"call_{n}",
            "name": tool,
            "arguments": json.dumps(arguments),
            "trace_id": rollout,
        }
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        return self.cluster.http(
            "POST", f"http://127.0.0.1:{self.api_port}/v1/tools/{tool}", headers, json.dumps(body), timeout=240
        )

    def api(self, method: str, path: str) -> Response:
        assert self.cluster is not None
        headers = {"Authorization": f"Bearer {self.token}"}
        return self.cluster.http(method, f"http://127.0.0.1:{self.api_port}{path}", headers, timeout=60)

    def inner_engine(self) -> docker.DockerClient:
        """A client of the worker pod's engine, through the socket in the pod's dind-socket volume."""
        worker = self.pod(WORKER)
        spec = next(c for c in worker.spec["containers"] if c["name"] == "worker")
        env = {e["name"]: e.get("value") for e in spec.get("env", [])}
        socket = env["SANDBOX_DOCKER_HOST"].removeprefix("unix://")
        for m in spec["volumeMounts"]:
            if socket.startswith(m["mountPath"].rstrip("/") + "/"):
                host_path = worker.volumes[m["name"]] / socket[len(m["mountPath"].rstrip("/")) + 1 :]
                return docker.DockerClient(base_url=f"unix://{host_path}", timeout=60)
        raise SmokeFailure(f"no volume of the worker container holds {socket}")

    def exercise(self) -> None:
        """Real tool calls through the API pod, then what they left in the worker pod's engine and metrics."""
        worker = self.pod(WORKER)
        ready = self.api("GET", "/readyz")
        hosts = ready.json()["checks"]["hosts_taking_new_rollouts"] if ready.status in (200, 503) else []
        self.check(
            "API /readyz: ready, the worker pod's host takes rollouts",
            ready.status == 200 and worker.name in hosts,
            f"{ready.status}, hosts {hosts}",
        )
        rollout = f"podsmoke-{self.run_id}"
        cgroup = self._calls(rollout)
        record = self.api("GET", f"/v1/rollouts/{rollout}").json()
        self.check(
            "the rollout lives on the worker pod's host",
            record.get("host") == worker.name and record.get("state") == "ready",
            f"host {record.get('host')}, state {record.get('state')}",
        )
        inner = self.inner_engine()
        try:
            self._inner_engine_checks(inner, record["container_id"], cgroup)
            self._metrics_checks(worker)
            liveness = {f"{p.name}/{name}": alive for p in self.pods for name, alive in p.check_liveness().items()}
            self.check(
                "every liveness probe passes",
                all(liveness.values()),
                ", ".join(f"{k}={v}" for k, v in liveness.items()),
            )
            self._release(inner, rollout, record["container_id"])
        finally:
            inner.close()

    def _calls(self, rollout: str) -> str:
        """The calls a trainer makes; the sandbox's cgroup line, as the sandbox itself sees it."""
        t = time.monotonic()
        r = self.call("shell", rollout, {"command": "echo hello from the pod; id -un; head -n1 /etc/os-release"}, 1)
        self.timing("first tool call (container created in the inner engine)", time.monotonic() - t)
        self.check(
            "shell: a real command ran in a sandbox",
            r.status == 200 and "hello from the pod" in r.body and r.headers.get("x-sandbox-outcome") == "ok",
            f"{r.status} {r.body[:160]!r}",
        )
        output = r.json()["output"]
        self.check("the command ran as the unprivileged user sandbox", "\nsandbox\n" in output, repr(output))
        command = "printf 'line one\\nline two\\n' > notes.txt && wc -l notes.txt"
        r = self.call("shell", rollout, {"command": command}, 2)
        self.check("shell: a file written in /workspace", r.status == 200 and "2 notes.txt" in r.body, r.body[:160])
        r = self.call("read_file", rollout, {"path": "notes.txt", "start_line": 2, "end_line": 2}, 3)
        self.check("read_file: reads it back", r.status == 200 and "line two" in r.json()["output"], r.body[:160])
        r = self.call("shell", rollout, {"command": "exit 3"}, 4)
        self.check(
            "a model error is a 200 with the reason, never a 5xx",
            r.status == 200
            and r.headers.get("x-sandbox-outcome") == "model_error"
            and r.headers.get("x-sandbox-reason") == "nonzero_exit",
            f"{r.status} {r.headers.get('x-sandbox-reason')}",
        )
        cgroup = self.call("shell", rollout, {"command": "grep -E ':memory:|^0::' /proc/self/cgroup"}, 5)
        durations = []
        for n in range(6, 16):
            r = self.call("shell", rollout, {"command": "echo ok"}, n)
            durations.append(float(r.headers.get("x-sandbox-duration-ms", "nan")))
        durations.sort()
        self.timing(
            "echo on the rollout, server side, median of 10 (X-Sandbox-Duration-Ms / 1000)", durations[5] / 1000
        )
        return str(cgroup.json()["output"]).strip()

    def _inner_engine_checks(self, inner: docker.DockerClient, container_id: str, cgroup: str) -> None:
        worker = self.pod(WORKER)
        try:
            sandbox = inner.containers.get(container_id)
        except docker.errors.NotFound:
            sandbox = None
        try:
            self.client.containers.get(container_id)
            on_host = True
        except docker.errors.NotFound:
            on_host = False
        self.check(
            "its container is in the pod's own engine (dind), not on this machine's",
            sandbox is not None and sandbox.status == "running" and not on_host,
            f"inner engine: {sandbox.short_id if sandbox else None}, on this machine's engine: {on_host}",
        )
        assert sandbox is not None
        network = sandbox.attrs["HostConfig"]["NetworkMode"]
        self.check("the sandbox has no network", network == "none", network)
        info = inner.info()
        self.report["inner_engine"] = {
            "version": info.get("ServerVersion"),
            "storage_driver": info.get("Driver"),
            "cgroup_version": info.get("CgroupVersion"),
            "sandbox_container": sandbox.short_id,
            "sandbox_cgroup": cgroup,
        }
        self.log(
            f"inner engine: Docker {info.get('ServerVersion')}, storage {info.get('Driver')}, "
            f"cgroup v{info.get('CgroupVersion')}"
        )
        dind_id = worker.container("dind").id
        memory = next((line for line in cgroup.splitlines() if ":memory:" in line), None)
        if memory is None:
            self.log(f"the sandbox's cgroup ({cgroup}) is namespaced (cgroup v2 only): nesting not checked")
        else:
            # cgroup v1 shows the whole path: the sandbox sits below the dind container's group,
            # so the dind container's limits bound every sandbox of the pod together.
            self.check("the sandbox's memory cgroup lies inside the dind container's", dind_id in memory, memory)

        tags = image_tags()
        want = self.client.images.get(tags["IMAGE_SANDBOX"]).id
        got = inner.images.get(tags["IMAGE_SANDBOX"]).id
        loaded = worker.logs("load-sandbox-image").strip()
        self.check(
            "the sandbox image came from the bundle: loaded by load-sandbox-image, same id as `make images` built",
            got == want and sandbox.image.id == want and f"loaded {tags['IMAGE_SANDBOX']}" in loaded,
            f"{got[:19]}; init log: {loaded!r}",
        )
        self.report["sandbox_image"] = {"id": got, "init_log": loaded}

    def _metrics_checks(self, worker: Pod) -> None:
        assert self.cluster is not None
        spec = next(c for c in worker.spec["containers"] if c["name"] == "worker")
        port = next(p["containerPort"] for p in spec["ports"] if p["name"] == "metrics")
        r = self.cluster.http("GET", f"http://127.0.0.1:{port}/metrics")
        cold = metric(r.body, "sandbox_provisions_total", source="cold", result="ok")
        self.check(
            f"GET :{port}/metrics, the worker pod's port 'metrics'",
            r.status == 200 and "sandbox_provisions_total" in r.body,
            f"{r.status}, {len(r.body.splitlines())} lines",
        )
        api_metrics = self.api("GET", "/metrics").body
        # A cold start is the worker's to count; a claim from a warm pool (prod) is the API's.
        warm = metric(api_metrics, "sandbox_provisions_total", source="warm", result="ok")
        self.check(
            "the rollout's container is counted once: cold on the worker pod, or warm in the API",
            cold + warm == 1,
            f"worker cold ok {cold}, API warm ok {warm}",
        )
        ok_calls = sum(
            metric(api_metrics, "sandbox_tool_calls_total", tool=t, outcome="ok", reason="none")
            for t in ("shell", "read_file")
        )
        errors = metric(
            api_metrics, "sandbox_tool_calls_total", tool="shell", outcome="model_error", reason="nonzero_exit"
        )
        infra = sum_matching(api_metrics, "sandbox_tool_calls_total", outcome="infra_error")
        self.check(
            "API metrics count the calls: 14 ok, 1 model error, no infra error",
            (ok_calls, errors, infra) == (14, 1, 0),
            f"ok {ok_calls}, model_error {errors}, infra_error {infra}",
        )
        self.report["metrics"] = {
            "worker sandbox_provisions_total{source=cold,result=ok}": cold,
            "api sandbox_provisions_total{source=warm,result=ok}": warm,
            "api tool calls ok": ok_calls,
            "api tool calls model_error": errors,
            "api tool calls infra_error": infra,
        }

    def _release(self, inner: docker.DockerClient, rollout: str, container_id: str) -> None:
        r = self.api("DELETE", f"/v1/rollouts/{rollout}")
        deadline = time.monotonic() + 30
        while True:
            try:
                inner.containers.get(container_id)
            except docker.errors.NotFound:
                gone = True
                break
            if time.monotonic() > deadline:
                gone = False
                break
            time.sleep(0.5)
        self.check(
            "releasing the rollout removes its container from the inner engine", r.status < 300 and gone, f"{r.status}"
        )

    # -------------------------------------------------------------------- stop ----

    def stop(self) -> None:
        if self.cluster is None:
            return
        if self.keep:
            self.log(
                f"--keep: left running; remove with `.venv/bin/python k8s/podsmoke.py --clean` ({self.cluster.root})"
            )
            return
        t = time.monotonic()
        codes: dict[str, Any] = {}
        # Reverse start order: API and beat first, Redis last (in a cluster all go at once).
        for pod in reversed(self.pods):
            try:
                t_pod = time.monotonic()
                codes[pod.name] = pod.stop()
                self.log(f"{pod.name}: stopped in {time.monotonic() - t_pod:.1f} s, exit codes {codes[pod.name]}")
            except (docker.errors.DockerException, PodError, Unsupported) as exc:
                codes[pod.name] = f"stop failed: {exc}"
                self.log(f"{pod.name}: stop failed: {exc}")
        left = self.cluster.close()
        remaining = self.client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={self.run_id}"})
        self.timing("stop (all pods, kubelet order)", time.monotonic() - t)
        self.report["exit_codes"] = codes
        self.report["left_behind"] = left + [c.name for c in remaining]
        clean = not left and not remaining and not self.cluster.root.exists()
        self.report["checks"].append(
            {
                "check": "clean stop: no container or directory of the run left",
                "ok": clean,
                "detail": "; ".join(self.report["left_behind"]),
            }
        )
        self.log(f"{'ok' if clean else 'FAILED'}: clean stop: no container or directory of the run left")

    def run(self) -> bool:
        try:
            self.start()
            self.exercise()
        except (SmokeFailure, PodError, Unsupported, RenderError, docker.errors.DockerException) as exc:
            self.report["error"] = f"{type(exc).__name__}: {exc}"
            self.log(f"FAILED: {exc}")
        finally:
            self.stop()
        self.report["total_s"] = round(time.monotonic() - self.t0, 1)
        ok = "error" not in self.report and all(c["ok"] for c in self.report["checks"])
        self.log("timings: " + ", ".join(f"{k} {v} s" for k, v in self.report["timings_s"].items()))
        self.log(f"{'PASSED' if ok else 'FAILED'} in {self.report['total_s']} s")
        return ok


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    found = []
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})?\s+(\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
            found.append((labels, float(m.group(2))))
    return found


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample with exactly these labels (0 when absent)."""
    return next((v for got, v in _samples(text, name) if got == labels), 0.0)


def sum_matching(text: str, name: str, **labels: str) -> float:
    return sum(v for got, v in _samples(text, name) if all(got.get(k) == w for k, w in labels.items()))


def clean(client: docker.DockerClient, run_id: str | None = None) -> None:
    """Remove the containers and directories that earlier runs (or the one run) left behind."""
    label = f"{RUN_LABEL}={run_id}" if run_id else RUN_LABEL
    for c in client.containers.list(all=True, filters={"label": label}):
        print(f"removing container {c.name}")
        c.remove(v=True, force=True)
    for root in STATE_PARENT.glob(f"rollout-podsmoke.{run_id}.*" if run_id else "rollout-podsmoke.*"):
        print(f"removing {root}")
        for problem in remove_tree(root):
            print(f"  {problem}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--overlay", default="dev", help="k8s/overlays/<name> to render (default dev)")
    parser.add_argument("--keep", action="store_true", help="leave the pods running at the end")
    parser.add_argument("--json", type=Path, help="write the report (timings, checks) to this file")
    parser.add_argument("--run-id", help="name the run (default: random); its containers carry it in a label")
    parser.add_argument("--clean", action="store_true", help="remove what earlier runs (or --run-id) left, and exit")
    args = parser.parse_args()
    if args.clean:
        clean(docker.from_env(), args.run_id)
        return 0
    # A SIGTERM (a CI timeout) unwinds like Ctrl-C, so the run still removes what it created.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    smoke = Smoke(args.overlay, keep=args.keep, run_id=args.run_id)
    ok = smoke.run()
    if args.json:
        args.json.write_text(json.dumps(smoke.report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
