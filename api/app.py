"""The FastAPI application: settings, database, error handlers and routers put together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api import (
    contacts,
    events,
    health,
    metrics,
    ratelimit,
    webhook_endpoints,
    webhooks,
    whatsapp_shared,
)
from api.body_limit import BodyLimitMiddleware
from api.bounded import BoundedCalls
from api.deadline import DeadlineMiddleware
from api.errors import PROBLEM_JSON, RESPONSE_DESCRIPTIONS, install_error_handlers
from api.parse_pool import ParsePool
from intake.settings import Settings
from models.db import Database
from worker.accept_batcher import AcceptBatcher
from worker.celery_app import make_celery
from worker.dispatch import Dispatcher
from worker.locks import make_locks
from worker.spool import Spool

API_VERSION = "1.0.0"


def create_app(settings: Settings, *, db: Database | None = None) -> FastAPI:
    """The app; tests pass their own `db`, otherwise one is made from `settings.database_url`."""
    app = FastAPI(
        title="Intake",
        version=API_VERSION,
        description="Inbound messages from WhatsApp, Telegram, SMS and email become contacts.",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.db = db if db is not None else Database(settings.database_url)
    app.state.health_checks = list(health.DEFAULT_CHECKS)
    # /healthz and /metrics probes: bounded, on threads of their own (api/bounded.py).
    app.state.probes = BoundedCalls()
    app.state.metrics = metrics.Metrics(app.state.db, probes=app.state.probes)
    app.state.rate_limiter = ratelimit.make_rate_limiter(settings)
    app.state.tenant_secrets = webhooks.TenantSecrets(app.state.db)
    app.state.phone_number_routes = whatsapp_shared.PhoneNumberRoutes(app.state.db)
    app.state.parse_pool = ParsePool()
    app.state.celery = make_celery(settings)
    app.state.dispatcher = Dispatcher(settings, app.state.celery)
    app.state.accept_batcher = AcceptBatcher(app.state.db, app.state.dispatcher)
    app.state.spool = Spool(settings.spool_dir, app.state.db, app.state.accept_batcher.waker)
    app.state.metrics.watch_spool(app.state.spool)
    app.state.tenant_locks = make_locks(settings)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(DeadlineMiddleware)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(webhooks.build_router())
    app.include_router(whatsapp_shared.router)
    app.include_router(contacts.router)
    app.include_router(events.router)
    app.include_router(webhook_endpoints.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _api_wide_openapi(
                _problem_json_openapi(
                    get_openapi(
                        title=app.title,
                        version=app.version,
                        description=app.description,
                        routes=app.routes,
                    )
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override hook
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Segments a crashed process left behind are drained by this one.
    await to_thread.run_sync(app.state.spool.start)
    yield
    app.state.spool.close()
    # Accepts still queued are committed and answered before the process goes.
    await to_thread.run_sync(app.state.accept_batcher.close)
    app.state.probes.shutdown()
    app.state.parse_pool.close()


def _problem_json_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Describe errors as they are served: problem+json, and 400 (never FastAPI's 422 shape)."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses: dict[str, Any] = operation.get("responses", {})
            for code, response in list(responses.items()):
                content = response.get("content", {})
                if _is_fastapi_validation_error(content):
                    del responses[code]
                elif int(code) >= 400 and "application/json" in content:
                    content[PROBLEM_JSON] = content.pop("application/json")
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema


# The routes that count against a tenant's rate limit: the Contacts API (never the webhooks).
RATE_LIMITED_PREFIXES = ("/api/",)


def _rate_limited_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Document the 429 that every rate-limited operation may answer, with its Retry-After."""
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith(RATE_LIMITED_PREFIXES):
            continue
        for operation in operations.values():
            operation.setdefault("responses", {})["429"] = {
                **ratelimit.RATE_LIMITED_RESPONSE,
                "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            }
    return schema


def _api_wide_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Document what any API operation may answer whatever its handler does: the rate limit's
    429, BodyLimitMiddleware's 413 on those that take a body, and the 503 of a database that
    does not answer (api/errors.py)."""
    schema = _rate_limited_openapi(schema)
    problem = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith(RATE_LIMITED_PREFIXES):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                responses.setdefault(
                    "413",
                    {"description": RESPONSE_DESCRIPTIONS[413], "content": problem},
                )
            responses.setdefault(
                "503", {"description": RESPONSE_DESCRIPTIONS[503], "content": problem}
            )
    return schema


def _is_fastapi_validation_error(content: dict[str, Any]) -> bool:
    ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
    return bool(ref.endswith("/HTTPValidationError"))
