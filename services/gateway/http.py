"""The gateway's FastAPI application: middleware, auth, problem+json, OpenAPI, routers."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from opentelemetry import trace

from libs import __version__
from libs.service import Context
from services.gateway import openapi, problems
from services.gateway.auth import gate
from services.gateway.middleware import GatewayMiddleware
from services.gateway.routes import audit as audit_routes
from services.gateway.routes import (
    dashboard,
    endpoints,
    enrollment,
    events,
    hosts,
    keys,
    metrics,
    models,
    subscriptions,
    system,
    tenants,
)
from services.gateway.routes import inventory as inventory_routes
from services.gateway.routes import workloads as workload_routes
from services.gateway.state import GatewayState


def traces_exported() -> bool:
    """Whether this process's tracer provider sends spans anywhere (an OTLP endpoint or a test exporter)."""
    provider = trace.get_tracer_provider()
    return bool(getattr(getattr(provider, "_active_span_processor", None), "_span_processors", ()))


def create_app(ctx: Context[GatewayState]) -> FastAPI:
    exporting = traces_exported()
    app = FastAPI(
        title="xpumesh API",
        version=__version__,
        description="One API for heterogeneous compute: ask for a kind and amount of hardware; "
                    "xpumesh finds it in any city and runs the work there.",
        openapi_url="/openapi.json",
        dependencies=[Depends(gate)],
        # FastAPI's own OpenTelemetry server spans, only when traces go somewhere (they cost ~10% per request).
        telemetry={"tracing": exporting, "operation_spans": exporting, "metrics": False, "logs": False},
    )
    app.state.ctx = ctx
    app.add_middleware(GatewayMiddleware, ctx=ctx)
    problems.install(app)
    openapi.install(app)
    app.include_router(system.router)
    app.include_router(hosts.router)
    app.include_router(inventory_routes.router)
    app.include_router(keys.router)
    app.include_router(enrollment.router)
    app.include_router(tenants.router)
    app.include_router(audit_routes.router)
    app.include_router(subscriptions.router)
    app.include_router(events.router)
    app.include_router(metrics.router)
    app.include_router(dashboard.router)
    app.include_router(workload_routes.router)
    app.include_router(endpoints.router)
    app.include_router(models.router)
    return app
