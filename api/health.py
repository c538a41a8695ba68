"""`GET /healthz`: 200 when every dependency answers, 503 naming the ones that do not.

The checks are a list on `app.state.health_checks`, so another (a broker check) is one append.
They run side by side on probe threads of their own, each bounded by CHECK_TIMEOUT_SECONDS, so
a stalled database or broker makes the answer a 503 within seconds, never a hang.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fastapi import APIRouter, FastAPI, Request
from sqlalchemy import text

from api.bounded import BoundedCalls
from api.errors import Problem, ProblemError, problem_responses
from api.schemas import HealthOut
from models.db import Database

log = logging.getLogger("intake.api")

HealthCheck = tuple[str, Callable[[FastAPI], None]]  # (name, raises when not healthy)


CHECK_TIMEOUT_SECONDS = 3.0


def check_database(app: FastAPI) -> None:
    database: Database = app.state.db
    with database.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


# A probe answers within seconds or the broker counts as down: an orchestrator's probe times out
# long before kombu's own connection retries would give up.
BROKER_TIMEOUT_SECONDS = 2.0


def check_broker(app: FastAPI) -> None:
    celery = app.state.celery
    options: dict[str, float] = {}
    if str(celery.conf.broker_url).startswith(("redis://", "rediss://")):
        # redis-py waits forever by default, on the connect and on each reply; a host that
        # drops packets or a server that accepts and never answers would hang the probe.
        options = {
            "socket_connect_timeout": BROKER_TIMEOUT_SECONDS,
            "socket_timeout": BROKER_TIMEOUT_SECONDS,
        }
    with celery.connection_for_write(transport_options=options) as connection:
        connection.ensure_connection(max_retries=0, timeout=BROKER_TIMEOUT_SECONDS)


DEFAULT_CHECKS: tuple[HealthCheck, ...] = (
    ("database", check_database),
    ("broker", check_broker),
)

router = APIRouter(tags=["operations"])


async def _run_check(app: FastAPI, name: str, check: Callable[[FastAPI], None]) -> str | None:
    """None when the check passed, else the name of the failing dependency."""
    probes: BoundedCalls = app.state.probes
    try:
        await probes.acall(lambda: check(app), timeout=CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # any failure of a check is what this endpoint reports
        log.warning("health.failed", extra={"check": name, "error": type(exc).__name__})
        return name
    return None


@router.get("/healthz", response_model=HealthOut, responses=problem_responses(503))
async def healthz(request: Request) -> HealthOut:
    app = request.app
    checks: list[HealthCheck] = app.state.health_checks
    results = await asyncio.gather(*(_run_check(app, name, check) for name, check in checks))
    failing = [{"field": name, "message": "does not answer"} for name in results if name]
    spooled = app.state.spool.stats().depth
    if failing:
        names = ", ".join(f["field"] for f in failing)
        detail = f"Not healthy: {names}."
        if spooled:
            detail += f" spooling: {spooled} verified messages wait on local disk."
        raise ProblemError(Problem(503, detail, errors=failing))
    return HealthOut(status="spooling" if spooled else "ok")
