"""Python client of the rollout sandbox service (PROTOCOL.md): a sandbox per RL rollout.

    from rollout_sandbox import Client

    with Client("http://127.0.0.1:8000", token) as client, client.rollout(item={"environment": "repo"}) as r:
        r.write_file("notes.txt", "hello\\n")
        result = r.exec(["python3", "-m", "pytest", "-q"], timeout=120)
        print(result.exit_code, result.stdout)

`AsyncClient` is the same for asyncio. Errors follow the service's taxonomy (errors.py): an
`InfraError` means discard the rollout, never score it 0. docs/clients.md has more.
"""

from ._core import NO_RETRY, ExecResult, RetryPolicy
from .aio import AsyncClient, AsyncRollout
from .client import Client, Rollout
from .errors import InfraError, RequestError, SandboxError, ServerTooOld

__version__ = "0.1.0"

__all__ = [
    "NO_RETRY",
    "AsyncClient",
    "AsyncRollout",
    "Client",
    "ExecResult",
    "InfraError",
    "RequestError",
    "RetryPolicy",
    "Rollout",
    "SandboxError",
    "ServerTooOld",
    "__version__",
]
