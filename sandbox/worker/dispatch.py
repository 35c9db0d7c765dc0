"""The Dispatcher of the service layer, over Celery."""

from __future__ import annotations

from typing import Any

from celery import Celery

from ..config import Settings, host_queue_name


class CeleryDispatcher:
    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def provision(self, rollout_id: str, attempt: int) -> None:
        self.app.send_task(
            "sandbox.provision",
            kwargs={"rollout_id": rollout_id, "attempt": attempt},
            queue=self.settings.provision_queue,
        )

    def execute(self, host: str, request: dict[str, Any], expires_s: float) -> None:
        self.app.send_task(
            "sandbox.execute",
            kwargs={"request": request},
            queue=host_queue_name(self.settings.instance, host),
            expires=expires_s,
        )

    def destroy(self, host: str, rollout_id: str, container_name: str) -> None:
        self.app.send_task(
            "sandbox.destroy",
            kwargs={"rollout_id": rollout_id, "container_name": container_name},
            queue=host_queue_name(self.settings.instance, host),
        )

    def reconcile(self, host: str) -> None:
        self.app.send_task("sandbox.reconcile", queue=host_queue_name(self.settings.instance, host), expires=60)
