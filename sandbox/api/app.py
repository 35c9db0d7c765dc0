"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import REGISTRY

from .. import __version__, metrics
from ..config import Settings, get_settings
from .context import ApiContext
from .errors import install_error_handlers
from .routes import ops, rollouts, tools

_collector_registered = False


def create_app(settings: Settings | None = None) -> FastAPI:
    global _collector_registered
    settings = settings or get_settings()
    ctx = ApiContext.build(settings)
    app = FastAPI(title="Rollout sandbox service", version=__version__)
    app.state.ctx = ctx
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(tools.router)
    app.include_router(rollouts.router)
    metrics.init_metrics()
    if not _collector_registered:
        REGISTRY.register(metrics.LiveSandboxesCollector(lambda: ctx.store))
        _collector_registered = True
    return app
