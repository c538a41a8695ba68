"""Request dependencies as `Annotated` aliases: the database, a unit of work, the tenant."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.errors import Problem, ProblemError, unauthorized
from api.ratelimit import enforce_api_limit
from models.api_keys import holder_of_api_key, record_api_key_use
from models.db import Database
from models.schema import Tenant, utcnow

log = logging.getLogger("intake.api")

bearer = HTTPBearer(auto_error=False, description="The tenant's API key")


def _database(request: Request) -> Database:
    database: Database = request.app.state.db
    return database


DatabaseDep = Annotated[Database, Depends(_database)]


def _session(db: DatabaseDep) -> Iterator[Session]:
    with db.unit_of_work() as session:
        yield session


# scope="function": the transaction commits before the response is sent, so a 2xx means committed
# and a failing commit still turns into an error response.
SessionDep = Annotated[Session, Depends(_session, scope="function")]


def _tenant(
    request: Request,
    db: DatabaseDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Tenant:
    if credentials is None or not credentials.credentials:
        raise unauthorized("Send the API key as `Authorization: Bearer <api_key>`.")
    # Its own short session: the tenant is read-only here and outlives the request's transaction.
    # Read on every request, never cached, so that a revoked key is refused at once everywhere.
    with db.sessions() as session:
        holder = holder_of_api_key(session, api_key=credentials.credentials)
    if holder is None:
        raise unauthorized("The API key is not valid.")
    now = utcnow()
    if holder.use_is_unrecorded(now):
        try:
            with db.unit_of_work() as session:
                record_api_key_use(session, key_id=holder.key_id, now=now)
        except SQLAlchemyError as exc:
            # `last used` is advice for the operator: never a reason to refuse the request.
            log.warning(
                "api_key.last_used_failed",
                extra={"key_id": str(holder.key_id), "error": type(exc).__name__},
            )
    enforce_api_limit(request.app, tenant_id=holder.tenant.id)
    return holder.tenant


TenantDep = Annotated[Tenant, Depends(_tenant)]


def reject_repeated_query_parameters(request: Request, _tenant: TenantDep) -> None:
    """`?limit=1&limit=50` is ambiguous: a 400 rather than silently taking one of them.

    After the key (the tenant is resolved once per request): a caller without a valid key
    learns only that, a 401, whatever its query says."""
    repeated = sorted({k for k in request.query_params if len(request.query_params.getlist(k)) > 1})
    if repeated:
        errors = [{"field": name, "message": "is given more than once"} for name in repeated]
        raise ProblemError(
            Problem(
                400,
                "A query parameter is given more than once.",
                errors=errors,
                slug="invalid-request",
            )
        )
