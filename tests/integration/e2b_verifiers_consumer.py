"""verifiers' own E2B runtime against this service: a command and a file round trip.

Run by the python of `.venv-verifiers` (deploy/install.sh: verifiers[e2b] 0.4.0 and a pinned
e2b SDK), never by the service's venv, so it imports nothing from this repository.
tests/integration/test_e2b_verifiers.py drives it:

    e2b_verifiers_consumer.py --template-name   the template (environment) name verifiers will
                                                ask for, computed by verifiers itself; no network
    e2b_verifiers_consumer.py                   start an E2BRuntime (workdir /workspace), run a
                                                command, write and read a binary file, stop it

The second form needs E2B_API_KEY, E2B_API_URL (http://HOST:PORT/e2b) and E2B_SANDBOX_URL
(http://HOST:PORT/e2b/envd). On success it prints one JSON line (sandbox id, template, what
the command and the file round trip gave) and exits 0; on any failure it says what failed on
stderr and exits 1, after stopping the runtime if it had started.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from importlib.metadata import version
from typing import Any

WORKDIR = "/workspace"
PROBE = "vf-probe-value"
# echo's output, the working directory and an environment variable on stdout, a line on
# stderr, and a non-zero exit, which verifiers must report as a result, not an error.
COMMAND = ["sh", "-c", 'echo "out:$VF_PROBE"; pwd; echo err >&2; exit 3']
EXPECTED = {"exit_code": 3, "stdout": f"out:{PROBE}\n{WORKDIR}\n", "stderr": "err\n"}
FILE = "vf-roundtrip/data.bin"  # relative: verifiers resolves it against the workdir
DATA = bytes(range(256)) * 3 + b"\x00\r\n\xff not utf-8: \xc3\x28"


class Failed(Exception):
    """A check of this script failed; the message says which."""


def make_runtime() -> Any:
    from verifiers.v1.runtimes import E2BConfig, E2BRuntime

    # creates_per_sec=None: no run-wide creation limiter (E2B's plan rate is not ours).
    return E2BRuntime(E2BConfig(workdir=WORKDIR, creates_per_sec=None), name="vf-consumer-test")


def check(what: str, got: Any, want: Any) -> None:
    if got != want:
        raise Failed(f"{what}: got {got!r}, want {want!r}")


async def round_trip(rt: Any, report: dict[str, Any]) -> None:
    await rt.start()  # alias check, POST /v2/sandboxes, MakeDir of the workdir
    report["sandbox_id"] = rt.info.id
    report["template"] = rt.info.template
    if not rt.info.id:
        raise Failed("the runtime started but recorded no sandbox id")

    result = await rt.run(COMMAND, {"VF_PROBE": PROBE})
    got = {"exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr}
    report["run"] = got
    check("run(...) result", got, EXPECTED)

    await rt.write(FILE, DATA)  # MakeDir of the parent, then multipart POST /files
    back = await rt.read(FILE)  # GET /files
    report["file"] = {
        "path": f"{WORKDIR}/{FILE}",
        "written_bytes": len(DATA),
        "read_bytes": len(back),
        "sha256": hashlib.sha256(back).hexdigest(),
        "equal": back == DATA,
    }
    if back != DATA:
        raise Failed(f"read back {len(back)} bytes differing from the {len(DATA)} written: {back[:64]!r}...")


async def main() -> int:
    if sys.argv[1:] == ["--template-name"]:
        print(make_runtime()._template_name())
        return 0
    if sys.argv[1:]:
        print(f"usage: {sys.argv[0]} [--template-name]", file=sys.stderr)
        return 2
    missing = [v for v in ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL") if not os.environ.get(v)]
    if missing:
        print(f"e2b_verifiers_consumer: FAILED: set {', '.join(missing)}", file=sys.stderr)
        return 1
    os.environ.setdefault("VF_RUN_ID", "e2b-verifiers-consumer")  # else verifiers warns

    report: dict[str, Any] = {"verifiers": version("verifiers"), "e2b": version("e2b")}
    rt = make_runtime()
    failure: str | None = None
    try:
        await round_trip(rt, report)
    except Exception as exc:  # noqa: BLE001 - any failure is reported, with what was done
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            await rt.stop()  # DELETE /sandboxes/{id}; a no-op if start failed
        except Exception as exc:  # noqa: BLE001 - reported like the rest
            failure = failure or f"stop: {type(exc).__name__}: {exc}"
        # A failed kill is only logged by verifiers' teardown, which then keeps its handle.
        report["stopped"] = rt._sandbox is None
        if not report["stopped"] and report.get("sandbox_id"):
            failure = failure or f"stop: sandbox {report['sandbox_id']} was not killed (see the log above)"
    if failure is not None:
        print(f"e2b_verifiers_consumer: FAILED: {failure}", file=sys.stderr)
        print(f"e2b_verifiers_consumer: so far: {json.dumps(report)}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
