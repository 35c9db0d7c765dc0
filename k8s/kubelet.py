"""An emulated kubelet: the pods of the rendered manifests, run as containers on one Docker engine.

There is no Kubernetes cluster on our machines, but a pod is a set of containers that a
kubelet starts in a fixed order, from given images, with given commands, environment, volumes
and security settings, and a Docker engine can do all of that. This module does it the way the
kubelet does, for the part of the pod API our manifests use (k8s/podsmoke.py drives it). A
field it does not know is refused (`Unsupported`), never ignored, so a manifest change that
the emulation would get wrong fails loudly.

As the kubelet does:
- init containers one after another, each run to completion (exit 0) before the next; a native
  sidecar (an init container with `restartPolicy: Always`) is started and the next init
  container waits until its startup probe passes; then the main containers, then their
  startup and readiness probes (exec, httpGet, tcpSocket);
- `command` replaces the image's entrypoint and `args` its command; `$(VAR)` is expanded;
- env from `envFrom` (ConfigMaps, Secrets), then `env` (values, ConfigMap and Secret keys, the
  downward API); emptyDir volumes are fresh 0777 directories on the node, PersistentVolumeClaims
  directories that outlive the pod; `fsGroup` owns them and is added to every container's groups;
- runAsUser/runAsGroup/runAsNonRoot (a non-numeric image user is refused as the kubelet
  refuses it), readOnlyRootFilesystem, capabilities, allowPrivilegeEscalation, privileged,
  seccomp (RuntimeDefault = the runtime's profile; unset = Unconfined, the kubelet's default);
- CPU limits and requests (CFS quota and shares), memory limits;
- stop: preStop hooks and SIGTERM to the main containers, then the sidecars in reverse order,
  within one terminationGracePeriodSeconds, then SIGKILL.

What differs from a node, by necessity (docs/kubernetes.md, "The worker pod on one machine"):
- Network: every pod of a run shares one network namespace that has only a loopback
  interface, because a pod network needs a bridge and private-range addresses, which these
  machines must not use. Services resolve to 127.0.0.1 through that namespace's /etc/hosts,
  and a pod's ports are on that loopback (so two pods may not use the same port).
- `privileged: true` where the engine refuses it (this machine: CAP_SYS_RESOURCE is missing
  from every process's bounding set, and Docker 20.10 asks for all capabilities): every other
  capability, no seccomp or AppArmor profile, unmasked /proc, access to every device;
  `Cluster.privileged_error` keeps the engine's refusal.
- Not enforced: ephemeral-storage and emptyDir sizeLimit (the kubelet evicts; it does not
  limit), CPU limits above this machine's CPUs (capped). No per-pod hostname or IPC
  namespace, no liveness restarts (a failing probe fails the run), no image pulls (the
  images must be local: `make images`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from podspec import POD_FIELDS, Obj, PodContext, Refused, Unsupported, check_fields

# Every container a run creates carries this label, its value the run's id: a run removes
# exactly what it created, and `--clean` finds what a crashed run left behind.
RUN_LABEL = "rollout-sandbox.podsmoke"

# A small HTTP client run inside the pods' network namespace (nsenter): stdlib only, no proxy
# (a proxy from the environment must never see these requests), one request from stdin.
HTTP_CLIENT = r"""
import json, sys, urllib.error, urllib.request
req = json.load(sys.stdin)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
body = req["body"].encode() if req["body"] is not None else None
r = urllib.request.Request(req["url"], data=body, method=req["method"], headers=req["headers"])
try:
    with opener.open(r, timeout=req["timeout"]) as resp:
        out = {"status": resp.status, "headers": {k.lower(): v for k, v in resp.headers.items()},
               "body": resp.read().decode("utf-8", "replace")}
except urllib.error.HTTPError as exc:
    out = {"status": exc.code, "headers": {k.lower(): v for k, v in exc.headers.items()},
           "body": exc.read().decode("utf-8", "replace")}
except Exception as exc:
    out = {"status": 0, "headers": {}, "body": "", "error": repr(exc)}
json.dump(out, sys.stdout)
"""


class PodError(Exception):
    """A pod did not start or stop as the kubelet would require (with the container's log tail)."""


@dataclass
class Response:
    """An HTTP answer; header names in lower case."""

    status: int
    headers: dict[str, str]
    body: str
    error: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Cluster:
    """What the pods of one run share: the engine, one network namespace, ConfigMaps, Secrets,
    claims and a directory on this machine holding every volume."""

    client: docker.DockerClient
    run_id: str
    root: Path
    namespace: str
    config_maps: dict[str, dict[str, str]]
    secrets: dict[str, dict[str, str]]
    log: Callable[[str], None]
    privileged_error: str | None = None
    net: Any = None
    cpus: int = 1

    def labels(self, **more: str) -> dict[str, str]:
        return {RUN_LABEL: self.run_id, **more}

    def prepare(self, services: list[str], net_image: str, privileged_image: str) -> None:
        """The network namespace (Services as 127.0.0.1 names), and whether `privileged` works here."""
        self.cpus = int(self.client.info().get("NCPU") or os.cpu_count() or 1)
        hosts: dict[str, str] = {}
        for svc in services:
            for name in (svc, f"{svc}.{self.namespace}", f"{svc}.{self.namespace}.svc",
                         f"{svc}.{self.namespace}.svc.cluster.local"):  # fmt: skip
                hosts[name] = "127.0.0.1"
        # Like the kubelet's pause container: it holds the namespace the pods' containers join.
        self.net = self.client.containers.run(
            net_image,
            ["sleep", "infinity"],
            name=f"podsmoke-{self.run_id}-net",
            detach=True,
            network_mode="none",
            extra_hosts=hosts,
            init=True,
            labels=self.labels(**{"io.kubernetes.pod.name": "network"}),
        )
        self.privileged_error = self._privileged_refusal(privileged_image)

    def _privileged_refusal(self, image: str) -> str | None:
        """The engine's error for a privileged root container, or None when it starts one."""
        api = self.client.api
        host_config = api.create_host_config(privileged=True, network_mode="none")
        created = api.create_container(
            image, entrypoint=["true"], user="0", host_config=host_config, labels=self.labels()
        )
        cid = created["Id"]
        try:
            api.start(cid)
            api.wait(cid, timeout=60)
            return None
        except docker.errors.APIError as exc:
            return str(exc.explanation or exc)
        finally:
            api.remove_container(cid, v=True, force=True)

    def netns_pid(self) -> int:
        self.net.reload()
        return int(self.net.attrs["State"]["Pid"])

    def http(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        body: str | None = None,
        timeout: float = 30,
    ) -> Response:
        """An HTTP request from inside the pods' network namespace: as a pod or the kubelet sends it."""
        request = {"method": method, "url": url, "headers": headers or {}, "body": body, "timeout": timeout}
        proc = subprocess.run(
            ["nsenter", f"--target={self.netns_pid()}", "--net", "--", sys.executable, "-I", "-c", HTTP_CLIENT],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
        )
        if proc.returncode != 0:
            raise PodError(f"nsenter HTTP client failed: {proc.stderr.strip()}")
        out = json.loads(proc.stdout)
        return Response(out["status"], out["headers"], out["body"], out.get("error"))

    def close(self) -> list[str]:
        """Remove every container of the run, then its directory; what could not be removed."""
        left: list[str] = []
        for c in self.client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={self.run_id}"}):
            try:
                c.remove(v=True, force=True)
            except docker.errors.APIError as exc:
                left.append(f"container {c.name}: {exc}")
        left += remove_tree(self.root)
        return left


def remove_tree(root: Path) -> list[str]:
    """Delete a run's directory, never through a mount point (a bind mount would take its
    source with it); what could not be removed."""
    if not root.exists():
        return []
    prefix = str(root.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    inside = [m for m in mounts if m.startswith(prefix)]
    if inside:
        return [f"{root}: still mounted below it: {', '.join(inside)}; left in place"]
    # --one-file-system: a second guard against crossing into a mount.
    proc = subprocess.run(["rm", "-rf", "--one-file-system", str(root)], capture_output=True, text=True)
    return [f"{root}: {proc.stderr.strip()}"] if proc.returncode else []


@dataclass
class Started:
    """One container of a pod, and when its milestones were reached (seconds since the pod's start)."""

    name: str
    role: str  # "init", "sidecar" or "main"
    spec: Obj
    container: Any
    at: dict[str, float] = field(default_factory=dict)


class Pod:
    """One pod of a rendered workload, run as the kubelet would run it."""

    def __init__(self, cluster: Cluster, name: str, template: Obj, claims: dict[str, str] | None = None) -> None:
        self.cluster = cluster
        self.name = name
        self.template = template
        self.spec: Obj = template["spec"]
        check_fields(f"pod {name}", self.spec, POD_FIELDS)
        self.claims = claims or {}  # volume name -> claim name (StatefulSet volumeClaimTemplates)
        self.started: list[Started] = []
        self.volumes: dict[str, Path] = {}
        self.t0 = 0.0
        self.ready_after: float | None = None

    # ------------------------------------------------------------------ helpers ----

    def _elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _log(self, text: str) -> None:
        self.cluster.log(f"{self.name}: {text}")

    def container(self, name: str) -> Any:
        return next(s.container for s in self.started if s.name == name)

    def logs(self, name: str, tail: int | str = "all") -> str:
        return self.container(name).logs(tail=tail).decode("utf-8", "replace")

    def _context(self) -> PodContext:
        return PodContext(
            name=self.name,
            namespace=self.cluster.namespace,
            template=self.template,
            volumes=self.volumes,
            config_maps=self.cluster.config_maps,
            secrets=self.cluster.secrets,
            network_container=self.cluster.net.id,
            cpus=self.cluster.cpus,
            emulate_privileged=self.cluster.privileged_error is not None,
            image_user=lambda image: self.cluster.client.images.get(image).attrs["Config"].get("User") or "",
        )

    # ------------------------------------------------------------------ volumes ----

    def _prepare_volumes(self) -> None:
        for vol in self.spec.get("volumes", []):
            name = vol["name"]
            if "emptyDir" in vol:
                if vol["emptyDir"].get("medium"):
                    raise Unsupported(f"pod {self.name} volume {name}: emptyDir medium")
                path = self.cluster.root / self.name / name
                path.mkdir(parents=True)
                path.chmod(0o777)  # as the kubelet makes an emptyDir
                self.volumes[name] = path
            elif "persistentVolumeClaim" in vol:
                self.volumes[name] = self._claim_dir(vol["persistentVolumeClaim"]["claimName"])
            else:
                raise Unsupported(f"pod {self.name} volume {name}: only emptyDir and persistentVolumeClaim")
        for name, claim in self.claims.items():
            self.volumes.setdefault(name, self._claim_dir(claim))
        fs_group = self._context().pod_security().get("fsGroup")
        if fs_group is not None:
            # The kubelet gives the volumes to the group: setgid, group-writable.
            for path in self.volumes.values():
                os.chown(path, -1, int(fs_group))
                path.chmod(path.stat().st_mode | 0o2070)

    def _claim_dir(self, claim: str) -> Path:
        # A claim outlives its pod (as a PersistentVolume does) until the run ends.
        path = self.cluster.root / "claims" / claim
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --------------------------------------------------------------- lifecycle ----

    def _create(self, c: Obj, role: str) -> Started:
        try:
            request = self._context().create_request(c)
        except Refused as exc:
            raise PodError(str(exc)) from exc
        api = self.cluster.client.api
        host_config = api.create_host_config(**request["host_config"]["kwargs"])
        host_config.update(request["host_config"]["extra"])
        request["host_config"] = host_config
        request["name"] = f"podsmoke-{self.cluster.run_id}-{self.name}-{c['name']}"
        request["labels"] = self.cluster.labels(
            **{"io.kubernetes.pod.name": self.name, "io.kubernetes.container.name": c["name"]}
        )
        cid = api.create_container(**request)["Id"]
        started = Started(c["name"], role, c, self.cluster.client.containers.get(cid))
        self.started.append(started)
        return started

    def _start(self, s: Started) -> None:
        s.container.start()
        s.at["started"] = self._elapsed()

    def _tail(self, s: Started, lines: int = 30) -> str:
        try:
            return s.container.logs(tail=lines).decode("utf-8", "replace")
        except docker.errors.APIError as exc:
            return f"(no logs: {exc})"

    def _run_to_completion(self, s: Started, timeout: float = 600) -> None:
        result = s.container.wait(timeout=timeout)
        s.at["exited"] = self._elapsed()
        if result.get("StatusCode") != 0:
            raise PodError(
                f"{self.name}: init container {s.name} exited with {result.get('StatusCode')}:\n{self._tail(s)}"
            )

    def probe_once(self, s: Started, probe: Obj) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        if "exec" in probe:
            api = self.cluster.client.api
            exec_id = api.exec_create(s.container.id, probe["exec"]["command"])["Id"]
            with ThreadPoolExecutor(1) as pool:
                future = pool.submit(api.exec_start, exec_id)
                try:
                    future.result(timeout=timeout)
                except FutureTimeout:
                    return False
            return api.exec_inspect(exec_id).get("ExitCode") == 0
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = self._port(s, get["port"])
            url = f"http://127.0.0.1:{port}{get.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
            r = self.cluster.http("GET", url, headers=headers, timeout=timeout)
            return 200 <= r.status < 400
        if "tcpSocket" in probe:
            port = self._port(s, probe["tcpSocket"]["port"])
            script = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout={timeout}).close()"
            proc = subprocess.run(
                ["nsenter", f"--target={self.cluster.netns_pid()}", "--net", "--", sys.executable, "-I", "-c", script],
                capture_output=True,
                timeout=timeout + 30,
            )
            return proc.returncode == 0
        raise Unsupported(f"pod {self.name} container {s.name}: probe {sorted(probe)}")

    def _port(self, s: Started, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in s.spec.get("ports", []):
            if p.get("name") == port:
                return int(p["containerPort"])
        raise PodError(f"{self.name}/{s.name}: no port named {port}")

    def _await_probe(self, s: Started, kind: str, deadline_s: float | None = None) -> None:
        """Until the probe passes. The kubelet probes every periodSeconds and gives up after
        failureThreshold failures; this polls every second at most, within the same time."""
        probe = s.spec.get(kind)
        if not probe:
            return
        period = float(probe.get("periodSeconds", 10))
        budget = deadline_s if deadline_s is not None else period * int(probe.get("failureThreshold", 3))
        time.sleep(float(probe.get("initialDelaySeconds", 0)))
        deadline = time.monotonic() + budget
        while True:
            s.container.reload()
            if s.container.status != "running":
                raise PodError(f"{self.name}: {s.name} is {s.container.status} during its {kind}:\n{self._tail(s)}")
            if self.probe_once(s, probe):
                s.at[kind] = self._elapsed()
                return
            if time.monotonic() > deadline:
                raise PodError(f"{self.name}: {s.name} failed its {kind} for {budget:.0f} s:\n{self._tail(s)}")
            time.sleep(min(period, 1.0))

    def start(self, ready_within_s: float = 180) -> float:
        """Start the pod in the kubelet's order; seconds until every container is ready."""
        self.t0 = time.monotonic()
        self._prepare_volumes()
        for c in self.spec.get("initContainers", []):
            if c.get("restartPolicy") == "Always":
                s = self._create(c, "sidecar")
                self._start(s)
                self._log(f"sidecar {s.name} started ({c['image']})")
                # The next init container waits for the sidecar's startup probe.
                self._await_probe(s, "startupProbe")
                self._log(f"sidecar {s.name} passed its startup probe after {self._elapsed():.1f} s")
            else:
                s = self._create(c, "init")
                self._start(s)
                self._run_to_completion(s)
                self._log(f"init container {s.name} completed after {self._elapsed():.1f} s ({c['image']})")
        mains = [self._create(c, "main") for c in self.spec["containers"]]
        for s in mains:
            self._start(s)
            self._log(f"container {s.name} started ({s.spec['image']})")
        for s in mains:
            self._await_probe(s, "startupProbe")
        for s in [x for x in self.started if x.role in ("sidecar", "main")]:
            self._await_probe(s, "readinessProbe", deadline_s=ready_within_s)
        self.ready_after = self._elapsed()
        self._log(f"ready after {self.ready_after:.1f} s")
        return self.ready_after

    def check_liveness(self) -> dict[str, bool]:
        """One liveness probe of each long-running container (the kubelet would restart on failures)."""
        return {
            s.name: self.probe_once(s, s.spec["livenessProbe"])
            for s in self.started
            if s.role in ("sidecar", "main") and s.spec.get("livenessProbe")
        }

    def stop(self) -> dict[str, int | None]:
        """Terminate as the kubelet does; each container's exit code."""
        grace = float(self.spec.get("terminationGracePeriodSeconds", 30))
        deadline = time.monotonic() + grace

        def remaining() -> int:
            return max(0, int(deadline - time.monotonic()))

        def stop_main(s: Started) -> None:
            hook = s.spec.get("lifecycle", {}).get("preStop")
            if hook and "sleep" in hook:
                time.sleep(min(float(hook["sleep"]["seconds"]), remaining()))
            elif hook and "exec" in hook:
                s.container.exec_run(hook["exec"]["command"])
            elif hook:
                raise Unsupported(f"pod {self.name} container {s.name}: preStop {sorted(hook)}")
            s.container.stop(timeout=remaining())

        running = [s for s in self.started if s.role in ("sidecar", "main")]
        for s in running:
            s.container.reload()
        with ThreadPoolExecutor(max(1, len(running))) as pool:
            list(pool.map(stop_main, [s for s in running if s.role == "main" and s.container.status == "running"]))
        # Native sidecars stop after the main containers, in reverse order.
        for s in reversed([s for s in running if s.role == "sidecar"]):
            s.container.stop(timeout=remaining())
        codes: dict[str, int | None] = {}
        for s in self.started:
            s.container.reload()
            codes[s.name] = s.container.attrs["State"].get("ExitCode")
            s.container.remove(v=True, force=True)
        return codes
