"""The FastAPI application factory."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from .. import __version__, metrics
from ..config import Settings, get_settings
from ..environments import load_file
from .context import ApiContext
from .e2b import control as e2b_control
from .e2b import envd as e2b_envd
from .e2b.service import E2BService
from .errors import install_error_handlers
from .routes import environments, grade, ops, rollouts, tools, trainer

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    ctx = ApiContext.build(settings)
    app = FastAPI(title="Rollout sandbox service", version=__version__)
    app.state.ctx = ctx
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(tools.router)
    app.include_router(rollouts.router)
    app.include_router(trainer.router)
    app.include_router(environments.router)
    app.include_router(grade.router)
    app.state.e2b = E2BService(ctx)
    app.include_router(e2b_envd.router)  # before the control plane's catch-all under /e2b
    app.include_router(e2b_control.router)
    if settings.environments_file is not None:
        names = load_file(ctx.registry, settings.environments_file)
        log.info("registered environments from %s: %s", settings.environments_file, ", ".join(names))
    metrics.init_metrics()
    app.state.state_collector = metrics.StateCollector(ctx.state_snapshot)
    return app
