"""E2B's view of a rollout, as data: the sandbox record, its wire shapes, and the small shell
programs that answer E2B's filesystem calls inside the sandbox. Pure, no I/O.

E2B's SDK (PyPI `e2b`) talks to two services: a REST control plane (create, get, list, kill,
timeout) and "envd", the in-sandbox daemon (commands over Connect RPC, files over HTTP).
Here both are routes of this API (api/e2b/), and a sandbox is a rollout of the same id.
docs/e2b-compatibility.md lists every SDK call and how it is served.
"""

from __future__ import annotations

import hmac
import json
import posixpath
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# The envd version we answer as. The SDK switches features on by version; 0.6.4 turns on all it
# knows (e2b/envd/versions.py), and with >= 0.4.0 it sends no user unless the caller names one.
ENVD_VERSION = "0.6.4"
DEFAULT_TEMPLATE = "base"  # E2B's default template: our `default` environment
DEFAULT_TIMEOUT_S = 300  # E2B's default sandbox timeout when create names none
MAX_TIMEOUT_S = 86400  # E2B's own upper bound (24 h)
ID_PREFIX = "e2b-"


def new_sandbox_id() -> str:
    return f"{ID_PREFIX}{secrets.token_hex(10)}"


def new_access_token() -> str:
    return secrets.token_hex(24)


def environment_of_template(template: str) -> str:
    """A template id names one of our environments; `base` (E2B's default) is `default`.
    An alias's tag (`name:default`, as verifiers asks) names the same environment."""
    name = template.split(":", 1)[0]
    return "default" if name in ("", DEFAULT_TEMPLATE) else name


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass
class SandboxRecord:
    sandbox_id: str
    template: str
    started_at: float
    end_at: float
    # Kept as given: connect answers it again (the SDK sends it as X-Access-Token on every envd
    # request). The store is the service's own, as trusted as its API tokens.
    access_token: str
    metadata: dict[str, str] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)

    def token_matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.access_token.encode())

    def to_hash(self) -> dict[str, str]:
        return {
            "template": self.template,
            "started_at": repr(self.started_at),
            "end_at": repr(self.end_at),
            "access_token": self.access_token,
            "metadata": json.dumps(self.metadata),
            "env_vars": json.dumps(self.env_vars),
        }

    @classmethod
    def from_hash(cls, sid: str, h: dict[str, str]) -> SandboxRecord:
        return cls(
            sandbox_id=sid,
            template=h.get("template", DEFAULT_TEMPLATE),
            started_at=float(h.get("started_at") or 0),
            end_at=float(h.get("end_at") or 0),
            access_token=h.get("access_token", ""),
            metadata=json.loads(h.get("metadata") or "{}"),
            env_vars=json.loads(h.get("env_vars") or "{}"),
        )

    def detail(self, limits: tuple[int, int], access_token: str | None = None) -> dict[str, Any]:
        """GET /sandboxes/{id}, the list's entries, and (with the token) create's and connect's answer."""
        cpus, memory_mb = limits
        body: dict[str, Any] = {
            "templateID": self.template,
            "sandboxID": self.sandbox_id,
            "clientID": "rollout-sandbox",
            "envdVersion": ENVD_VERSION,
            "startedAt": rfc3339(self.started_at),
            "endAt": rfc3339(self.end_at),
            "cpuCount": cpus,
            "memoryMB": memory_mb,
            "diskSizeMB": 0,  # no disk quota on this kernel (docs/architecture.md, "Disk")
            "state": "running",
            "metadata": self.metadata,
        }
        if access_token is not None:
            body["envdAccessToken"] = access_token
        return body


def check_string_map(value: Any, what: str) -> dict[str, str]:
    """E2B's metadata and envVars: string -> string. Raises ValueError with what is wrong."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{what} must be an object of strings")
    return dict(value)


# --- filesystem calls, answered by small programs in the sandbox ------------------------------

# One record per entry, ended by a NUL (a name may hold a newline): type, size, mode (octal),
# owner, group, mtime, link target, then the path last, so a tab in a name cannot shift a field.
_FIND_FORMAT = r"%y\t%s\t%m\t%u\t%g\t%T@\t%l\t%p\0"
# Exit codes of the programs below, read back into E2B's error codes.
EXIT_NOT_FOUND, EXIT_EXISTS, EXIT_NOT_DIR = 40, 41, 42


# Relative paths are the workspace's (the commands' working directory), made absolute so the
# answers name absolute paths, as envd's do. Paths travel as arguments, never inside the script.
_PRELUDE = 'absolute() { case $1 in /*) printf %s "$1";; *) printf %s "$PWD/$1";; esac; }; '
_PRINT = f"find \"$p\" -maxdepth 0 -printf '{_FIND_FORMAT}'"


def _program(script: str, *paths: str) -> list[str]:
    return ["sh", "-c", _PRELUDE + script, "e2b", *paths]


def stat_program(path: str) -> list[str]:
    return _program(f'p=$(absolute "$1"); [ -e "$p" ] || [ -L "$p" ] || exit {EXIT_NOT_FOUND}; {_PRINT}', path)


def list_program(path: str, depth: int) -> list[str]:
    return _program(
        f'p=$(absolute "$1"); [ -e "$p" ] || exit {EXIT_NOT_FOUND}; [ -d "$p" ] || exit {EXIT_NOT_DIR}; '
        f"find \"$p\" -mindepth 1 -maxdepth {int(depth)} -printf '{_FIND_FORMAT}'",
        path,
    )


def make_dir_program(path: str) -> list[str]:
    return _program(f'p=$(absolute "$1"); [ -e "$p" ] && exit {EXIT_EXISTS}; mkdir -p -- "$p" && {_PRINT}', path)


def remove_program(path: str) -> list[str]:
    return _program(f'p=$(absolute "$1"); [ -e "$p" ] || [ -L "$p" ] || exit {EXIT_NOT_FOUND}; rm -rf -- "$p"', path)


def move_program(source: str, destination: str) -> list[str]:
    return _program(
        f'[ -e "$1" ] || [ -L "$1" ] || exit {EXIT_NOT_FOUND}; p=$(absolute "$2"); '
        f'mkdir -p -- "$(dirname -- "$p")" && mv -T -- "$1" "$p" && {_PRINT}',
        source,
        destination,
    )


_TYPES = {"f": "FILE_TYPE_FILE", "d": "FILE_TYPE_DIRECTORY", "l": "FILE_TYPE_SYMLINK"}


def parse_entries(out: str) -> list[dict[str, Any]]:
    """find's records as envd's EntryInfo JSON (protobuf JSON: int64 as string, enum names)."""
    entries = []
    for record in out.split("\0"):
        fields = record.split("\t", 7)
        if len(fields) != 8:
            continue
        kind, size, mode, owner, group, mtime, target, path = fields
        path = posixpath.normpath(path)  # `./x` of a relative listing, a trailing slash
        entry: dict[str, Any] = {
            "name": path.rstrip("/").rsplit("/", 1)[-1] or "/",
            "type": _TYPES.get(kind, "FILE_TYPE_UNSPECIFIED"),
            "path": path,
            "size": str(int(size)) if size.isdigit() else "0",
            "mode": int(mode, 8) if mode else 0,
            "permissions": _permissions(kind, int(mode, 8) if mode else 0),
            "owner": owner,
            "group": group,
            "modifiedTime": rfc3339(float(mtime)) if mtime else rfc3339(0),
        }
        if kind == "l":
            entry["symlinkTarget"] = target
            entry["isSymlink"] = True
        entries.append(entry)
    return entries


def _permissions(kind: str, mode: int) -> str:
    bits = "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
    return {"d": "d", "l": "l"}.get(kind, "-") + bits
