"""A container of a pod spec, as the request that creates it on a Docker engine.

The translation half of the emulated kubelet (k8s/kubelet.py runs the containers): the
environment (envFrom, env, `$(VAR)`, the downward API), the user and the runAsNonRoot check,
volume mounts, the securityContext and the resources, each as the kubelet and a container
runtime apply them. A field this does not know is refused (`Unsupported`), never ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

# Linux capabilities by number (linux/capability.h), to name those missing from this
# machine's bounding set; up to AUDIT_READ, the ones Docker 20.10's "ALL" grants.
# fmt: off
CAPABILITIES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
]
# fmt: on

# The fields of the pod API this emulation understands. Scheduling fields are accepted and
# have no effect: there is one node.
POD_FIELDS = {
    "containers", "initContainers", "volumes", "securityContext", "terminationGracePeriodSeconds",
    "serviceAccountName", "automountServiceAccountToken", "enableServiceLinks", "nodeSelector",
    "tolerations", "affinity", "topologySpreadConstraints", "restartPolicy", "dnsPolicy",
    "schedulerName",
}  # fmt: skip
CONTAINER_FIELDS = {
    "name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "ports", "resources",
    "securityContext", "volumeMounts", "startupProbe", "livenessProbe", "readinessProbe",
    "lifecycle", "restartPolicy", "terminationMessagePath", "terminationMessagePolicy", "workingDir",
}  # fmt: skip
SECURITY_FIELDS = {
    "runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem", "allowPrivilegeEscalation",
    "capabilities", "privileged", "seccompProfile", "fsGroup", "supplementalGroups",
}  # fmt: skip


class Unsupported(Exception):
    """The manifest uses a part of the pod API this emulation does not implement."""


class Refused(Exception):
    """The kubelet would refuse to start this container (e.g. runAsNonRoot with a root user)."""


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity ("500m", "2", "512Mi", "1G") as a plain number."""
    text = str(value)
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    for suffix, factor in suffixes.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: defined variables are replaced, `$$` is a literal `$`."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


def missing_capabilities() -> list[str]:
    """Capabilities no process of this machine can have (absent from our bounding set)."""
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^CapBnd:\s*([0-9a-f]+)$", status, re.M)
    bounding = int(match.group(1), 16) if match else (1 << len(CAPABILITIES)) - 1
    return [name for bit, name in enumerate(CAPABILITIES) if not bounding >> bit & 1]


def check_fields(what: str, obj: Obj, known: set[str]) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise Unsupported(f"{what}: {', '.join(unknown)} not implemented by k8s/kubelet.py")


@dataclass
class PodContext:
    """What the translation of one container needs to know about its pod and the cluster."""

    name: str
    namespace: str
    template: Obj
    volumes: dict[str, Path]
    config_maps: dict[str, dict[str, str]]
    secrets: dict[str, dict[str, str]]
    network_container: str
    cpus: int
    # The engine refuses `privileged: true` (kubelet.Cluster.privileged_error): emulate it.
    emulate_privileged: bool
    image_user: Callable[[str], str]  # image name -> its configured user ("" = root)

    @property
    def spec(self) -> Obj:
        return self.template["spec"]

    def pod_security(self) -> Obj:
        sc: Obj = self.spec.get("securityContext", {})
        check_fields(f"pod {self.name} securityContext", sc, SECURITY_FIELDS)
        return sc

    # ------------------------------------------------------------- environment ----

    def environment(self, c: Obj) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in c.get("envFrom", []):
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                data = self.config_maps[src["configMapRef"]["name"]]
            elif "secretRef" in src:
                data = self.secrets[src["secretRef"]["name"]]
            else:
                raise Unsupported(f"pod {self.name} container {c['name']}: envFrom {sorted(src)}")
            env.update({prefix + k: v for k, v in data.items()})
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(str(e["value"]), env)
            elif ref := e.get("valueFrom", {}).get("secretKeyRef"):
                env[e["name"]] = self.secrets[ref["name"]][ref["key"]]
            elif ref := e.get("valueFrom", {}).get("configMapKeyRef"):
                env[e["name"]] = self.config_maps[ref["name"]][ref["key"]]
            elif ref := e.get("valueFrom", {}).get("fieldRef"):
                env[e["name"]] = self.field(ref["fieldPath"])
            else:
                raise Unsupported(f"pod {self.name} container {c['name']}: env {e['name']} {sorted(e)}")
        return env

    def field(self, path: str) -> str:
        """The downward API."""
        labels = self.template.get("metadata", {}).get("labels", {})
        fields = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "status.podIP": "127.0.0.1",
            "spec.nodeName": os.uname().nodename,
        }
        if path in fields:
            return fields[path]
        m = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
        if m and m.group(1) in labels:
            return str(labels[m.group(1)])
        raise Unsupported(f"pod {self.name}: fieldRef {path}")

    # ----------------------------------------------------------------- security ----

    def security(self, c: Obj) -> Obj:
        """The container's securityContext over the pod's fields that apply to containers."""
        own = c.get("securityContext", {})
        check_fields(f"pod {self.name} container {c['name']} securityContext", own, SECURITY_FIELDS)
        inherited = {"runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile"}
        return {**{k: v for k, v in self.pod_security().items() if k in inherited}, **own}

    def user(self, c: Obj, sc: Obj) -> str | None:
        uid, gid = sc.get("runAsUser"), sc.get("runAsGroup")
        if sc.get("runAsNonRoot"):
            # The kubelet's check: the user must be known to be non-root before the start.
            if uid is None:
                image_user = (self.image_user(c["image"]) or "0").split(":")[0]
                if not image_user.isdigit():
                    raise Refused(
                        f"{self.name}/{c['name']}: image has non-numeric user ({image_user}), "
                        "cannot verify user is non-root"
                    )
                uid = int(image_user)
            if int(uid) == 0:
                raise Refused(f"{self.name}/{c['name']}: container has runAsNonRoot and image will run as root")
        if uid is None:
            if gid is not None:
                raise Unsupported(f"pod {self.name} container {c['name']}: runAsGroup without runAsUser")
            return None
        return f"{uid}:{gid}" if gid is not None else str(uid)

    def binds(self, c: Obj) -> list[str]:
        binds = []
        read_only_claims = {
            v["name"] for v in self.spec.get("volumes", []) if v.get("persistentVolumeClaim", {}).get("readOnly")
        }
        for m in c.get("volumeMounts", []):
            extra = set(m) - {"name", "mountPath", "readOnly"}
            if extra:
                raise Unsupported(f"pod {self.name} container {c['name']} volumeMount: {', '.join(sorted(extra))}")
            mode = "ro" if m.get("readOnly") or m["name"] in read_only_claims else "rw"
            binds.append(f"{self.volumes[m['name']]}:{m['mountPath']}:{mode}")
        return binds

    def host_config(self, c: Obj, sc: Obj) -> Obj:
        """Keyword arguments of the Docker SDK's create_host_config, plus `extra` for raw fields."""
        pod_sc = self.pod_security()
        caps = sc.get("capabilities", {})
        groups = [pod_sc.get("fsGroup"), *pod_sc.get("supplementalGroups", [])]
        kwargs: Obj = {
            "network_mode": f"container:{self.network_container}",
            "binds": self.binds(c),
            "read_only": bool(sc.get("readOnlyRootFilesystem")),
            "cap_add": caps.get("add"),
            "cap_drop": caps.get("drop"),
            "security_opt": [],
            "group_add": [str(g) for g in groups if g is not None] or None,
        }
        privileged = bool(sc.get("privileged"))
        extra: Obj = {}
        if privileged and not self.emulate_privileged:
            kwargs["privileged"] = True
        elif privileged:
            # What `privileged` grants, one by one, less what this machine cannot grant.
            kwargs["cap_add"] = ["ALL"]
            kwargs["cap_drop"] = missing_capabilities() or None
            kwargs["security_opt"] += ["seccomp=unconfined", "apparmor=unconfined"]
            kwargs["device_cgroup_rules"] = ["a *:* rwm"]
            # /proc unmasked, as the CLI's --security-opt systempaths=unconfined does.
            extra = {"MaskedPaths": [], "ReadonlyPaths": []}
        else:
            profile = sc.get("seccompProfile", {}).get("type", "Unconfined")
            if profile == "Unconfined":
                kwargs["security_opt"].append("seccomp=unconfined")
            elif profile != "RuntimeDefault":
                raise Unsupported(f"pod {self.name} container {c['name']}: seccompProfile {profile}")
        # The kubelet lets a privileged container escalate, whatever it says.
        if sc.get("allowPrivilegeEscalation") is False and not privileged:
            kwargs["security_opt"].append("no-new-privileges")
        resources = c.get("resources", {})
        limits, requests = resources.get("limits", {}), resources.get("requests", {})
        if "memory" in limits:
            kwargs["mem_limit"] = int(quantity(limits["memory"]))
        if "cpu" in limits:
            kwargs["nano_cpus"] = int(min(quantity(limits["cpu"]), self.cpus) * 1e9)
        if "cpu" in requests:
            kwargs["cpu_shares"] = max(2, int(quantity(requests["cpu"]) * 1024))
        return {"kwargs": {k: v for k, v in kwargs.items() if v is not None}, "extra": extra}

    def create_request(self, c: Obj) -> Obj:
        """The container's create_container arguments (host_config as create_host_config kwargs)."""
        check_fields(f"pod {self.name} container {c['name']}", c, CONTAINER_FIELDS)
        for port in c.get("ports", []):
            if "hostPort" in port:
                raise Unsupported(f"pod {self.name} container {c['name']}: hostPort")
        env = self.environment(c)
        sc = self.security(c)
        request: Obj = {
            "image": c["image"],
            "environment": env,
            "host_config": self.host_config(c, sc),
            "user": self.user(c, sc) or "",
            "working_dir": c.get("workingDir"),
        }
        # command replaces the image's ENTRYPOINT and drops its CMD (the engine does not merge
        # the image's CMD once an entrypoint is given); args replace CMD.
        if c.get("command"):
            request["entrypoint"] = [expand(a, env) for a in c["command"]]
        if c.get("args"):
            request["command"] = [expand(a, env) for a in c["args"]]
        return {k: v for k, v in request.items() if v is not None}
