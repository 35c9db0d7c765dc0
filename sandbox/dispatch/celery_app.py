"""The Celery application, as both the API (sending) and the workers (running) configure it.

Queues: `<instance>.provision` (shared: any host may create a new rollout's container),
`<instance>.host.<host_id>` (everything touching an existing container goes to the host
that owns it) and `<instance>.maintenance` (reaper and reconciler fan-out, run by beat).
Replies do not use Celery's result backend: workers push them to a Redis list the API
blocks on, so any API replica can wait for any worker without polling.
"""

from __future__ import annotations

from celery import Celery

from ..config import Settings


def create_celery(settings: Settings) -> Celery:
    app = Celery("sandbox", broker=settings.celery_broker_url, include=["sandbox.worker.tasks"])
    app.conf.update(
        task_ignore_result=True,
        task_default_queue=settings.maintenance_queue,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        # Tool calls wait on a unix socket; threads let one process hold many at once.
        worker_pool="threads",
        worker_concurrency=settings.worker_concurrency,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 3600},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        beat_schedule={
            "reap": {
                "task": "sandbox.reap",
                "schedule": settings.lifecycle.reaper_interval_s,
                "options": {"queue": settings.maintenance_queue, "expires": settings.lifecycle.reaper_interval_s},
            },
            "refill": {
                "task": "sandbox.refill_all",
                "schedule": 5.0,
                "options": {"queue": settings.maintenance_queue, "expires": 5.0},
            },
            "watch-hosts": {
                "task": "sandbox.watch_hosts",
                "schedule": settings.hosts.heartbeat_s,
                "options": {"queue": settings.maintenance_queue, "expires": settings.hosts.heartbeat_s},
            },
            "reconcile": {
                "task": "sandbox.reconcile_all",
                "schedule": settings.lifecycle.reaper_interval_s,
                "options": {"queue": settings.maintenance_queue, "expires": settings.lifecycle.reaper_interval_s},
            },
        },
    )
    return app
