"""The worker's Celery application, built on first use rather than at import.

`celery -A sandbox.worker.app:celery_app` looks the attribute up, which builds the app from
`get_settings()` then (module `__getattr__`), so importing this module reads no settings.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from ..config import get_settings
from ..dispatch.celery_app import create_celery


@lru_cache(maxsize=1)
def worker_celery() -> Celery:
    return create_celery(get_settings())


def __getattr__(name: str) -> Any:
    if name == "celery_app":
        return worker_celery()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
