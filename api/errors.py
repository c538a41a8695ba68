"""Every error as an RFC 9457 problem document, and the one place domain errors become HTTP.

https://www.rfc-editor.org/rfc/rfc9457
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic.alias_generators import to_camel
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from api.schemas import Problem as ProblemSchema
from models.contacts import (
    ContactError,
    ContactNotFoundError,
    ContactValidationError,
    DuplicateContactError,
)
from models.events import InvalidEventCursorError, UnknownEventTypeError
from models.idempotency import (
    IdempotencyError,
    IdempotencyKeyInFlightError,
    IdempotencyKeyReusedError,
)
from models.merges import MergeNotFoundError, SameContactError, UndoConflictError
from models.webhook_endpoints import DeliveryNotFoundError, WebhookEndpointNotFoundError
from worker.locks import LockWaitTimeoutError
from worker.ssrf import UnsafeWebhookUrlError

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "tag:intake,2026:problems/"  # RFC 9457 §3.1.1: an identifier, not a page to fetch
READ_ONLY_FIELDS = frozenset({"id", "appliedAt", "createdAt", "updatedAt", "deletedAt", "notes"})

log = logging.getLogger("intake.api")


@dataclass
class Problem:
    status: int
    detail: str
    errors: Sequence[Mapping[str, str]] = ()
    slug: str | None = None  # None: `about:blank`, the status says it all
    extra: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "type": TYPE_BASE + self.slug if self.slug else "about:blank",
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail,
            "errors": [dict(e) for e in self.errors],
            **self.extra,
        }

    def response(self) -> JSONResponse:
        return problem_response(self.status, self.body(), headers=self.headers)


class ProblemError(Exception):
    """Raised where a handler or dependency answers with a problem of its own (401, 503)."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.detail)
        self.problem = problem


def problem_response(
    status: int, body: Mapping[str, Any], *, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        dict(body), status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {})
    )


RESPONSE_DESCRIPTIONS = {
    400: "Invalid query, body or header; `errors` names each bad field",
    401: "Missing or wrong API key",
    404: "No such contact (or endpoint, or delivery) for this tenant (also a deleted one or a "
    "malformed id)",
    409: "Conflict: a duplicate phone or email (`existingContactId`), "
    "the Idempotency-Key is in use by a request in progress, "
    "or a merge that can no longer be undone (`detail` says why)",
    413: "The request body is over 1 MiB",
    422: "The Idempotency-Key was used with a different body",
    500: "Unexpected error",
    503: "A dependency does not answer",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these problem statuses (the app moves them to problem+json)."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        responses[status] = {"model": ProblemSchema, "description": RESPONSE_DESCRIPTIONS[status]}
        if status == 401:
            responses[status]["headers"] = {
                "WWW-Authenticate": {"schema": {"type": "string"}, "required": True}
            }
    return responses


def unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        Problem(
            401,
            detail,
            errors=[{"field": "Authorization", "message": detail}],
            headers={"WWW-Authenticate": "Bearer"},
        )
    )


def problem_for(exc: Exception) -> Problem | None:
    """The HTTP answer for a domain error; None for anything unexpected."""
    if isinstance(exc, ContactNotFoundError):
        return Problem(404, "No such contact.", slug="contact-not-found")
    if isinstance(exc, MergeNotFoundError):
        return Problem(404, "No such merge of this contact.", slug="merge-not-found")
    if isinstance(exc, SameContactError):
        return Problem(
            400,
            "A contact cannot be merged into itself.",
            errors=[{"field": "contactId", "message": "is the contact itself"}],
            slug="invalid-request",
        )
    if isinstance(exc, UndoConflictError):
        return Problem(409, f"The merge cannot be undone: {exc}.", slug="undo-conflict")
    if isinstance(exc, LockWaitTimeoutError):
        # Ingestion held the tenant's lock for longer than we wait: retry shortly.
        return Problem(
            503,
            "The contact is busy; retry shortly.",
            slug="unavailable",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, DuplicateContactError):
        field_name = to_camel(exc.field)
        if exc.existing_id is None:
            detail = f"Another contact already has this {field_name}."
        else:
            detail = f"Contact {exc.existing_id} already has this {field_name}."
        return Problem(
            409,
            detail,
            errors=[{"field": field_name, "message": "already belongs to a contact"}],
            slug="duplicate-contact",
            extra={"existingContactId": str(exc.existing_id) if exc.existing_id else None},
        )
    if isinstance(exc, ContactValidationError):
        errors = [{"field": to_camel(p.field), "message": p.message} for p in exc.problems]
        return Problem(400, _summary(errors), errors=errors, slug="invalid-request")
    if isinstance(exc, IdempotencyKeyInFlightError):
        return Problem(
            409,
            "A request with this Idempotency-Key is still being processed; retry shortly.",
            errors=[{"field": "Idempotency-Key", "message": "in use by a request in progress"}],
            slug="idempotency-key-in-use",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, IdempotencyKeyReusedError):
        return Problem(
            422,
            "This Idempotency-Key was used with a different request body.",
            errors=[{"field": "Idempotency-Key", "message": "already used for another body"}],
            slug="idempotency-key-reused",
        )
    if isinstance(exc, InvalidEventCursorError):
        return Problem(
            400,
            str(exc)[0].upper() + str(exc)[1:] + ".",
            errors=[{"field": "after", "message": "is unknown or has expired"}],
            slug="invalid-cursor",
            extra={
                "oldestCursor": exc.oldest_cursor,
                "oldestSequence": exc.oldest_sequence,
                "oldestCreatedAt": exc.oldest_at.isoformat() if exc.oldest_at else None,
                "retentionDays": exc.retention_days,
            },
        )
    if isinstance(exc, UnknownEventTypeError):
        return Problem(
            400,
            f"Unknown event type {exc.event_type!r}.",
            errors=[{"field": "type", "message": str(exc)}],
            slug="invalid-request",
        )
    if isinstance(exc, UnsafeWebhookUrlError):
        return Problem(
            400,
            f"The URL is refused: {exc}.",
            errors=[{"field": "url", "message": str(exc)}],
            slug="unsafe-webhook-url",
        )
    if isinstance(exc, WebhookEndpointNotFoundError):
        return Problem(404, "No such webhook endpoint.", slug="webhook-endpoint-not-found")
    if isinstance(exc, DeliveryNotFoundError):
        return Problem(404, "No such delivery for this endpoint.", slug="delivery-not-found")
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is down or unreachable: the client did nothing wrong and may retry.
        return Problem(
            503,
            "The database does not answer; retry shortly.",
            slug="unavailable",
            headers={"Retry-After": "5"},
        )
    return None


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(ContactError, _on_domain_error)
    app.add_exception_handler(IdempotencyError, _on_domain_error)
    for error in (
        LockWaitTimeoutError,
        InvalidEventCursorError,
        UnknownEventTypeError,
        UnsafeWebhookUrlError,
        WebhookEndpointNotFoundError,
        DeliveryNotFoundError,
    ):
        app.add_exception_handler(error, _on_domain_error)
    app.add_exception_handler(OperationalError, _on_domain_error)
    app.add_exception_handler(InterfaceError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)


async def _on_problem(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return exc.problem.response()


async def _on_domain_error(request: Request, exc: Exception) -> JSONResponse:
    problem = problem_for(exc)
    if problem is None:
        return await _on_unexpected(request, exc)
    return problem.response()


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, str]] = []
    for error in exc.errors():
        field_error = _field_error(error)
        if all(e["field"] != field_error["field"] for e in errors):  # one per field, the first
            errors.append(field_error)
    return Problem(400, _summary(errors), errors=errors, slug="invalid-request").response()


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, ClientDisconnect):  # FastAPI's body reading wraps it in a 400
        return _client_gone(request)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and detail == "Not Found":
        detail = "There is nothing at this URL."
    elif exc.status_code == 405:
        detail = "This URL does not take this method."
        headers["Allow"] = _allowed_methods(request)
    return Problem(exc.status_code, detail, headers=headers).response()


def _allowed_methods(request: Request) -> str:
    """Every method some route takes at this path: Starlette names only the first route's."""
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


def _client_gone(request: Request) -> JSONResponse:
    # The client hung up mid-body: its connection, not our failure. Nobody reads this answer.
    log.info("request.client_gone", extra={"method": request.method, "path": request.url.path})
    return Problem(400, "The client closed the connection before sending the body.").response()


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ClientDisconnect) or isinstance(exc.__cause__, ClientDisconnect):
        # The client hung up mid-body: its connection, not our failure. Nobody reads this answer.
        log.info("request.client_gone", extra={"method": request.method, "path": request.url.path})
        return Problem(400, "The client closed the connection before sending the body.").response()
    log.error(
        "request.failed",
        extra={"method": request.method, "path": request.url.path, "error": type(exc).__name__},
        exc_info=exc,
    )
    return Problem(500, "Something went wrong on our side; the error has been logged.").response()


def _field_error(error: Mapping[str, Any]) -> dict[str, str]:
    """`{"field", "message"}` for one pydantic error, the field named as the client sent it."""
    loc = [str(part) for part in error.get("loc", ())]
    # ("query", "limit") or ("body", "name", <union member>): our bodies are flat, so the
    # second part is the field; a union adds members after it that mean nothing to a client.
    name = loc[1] if len(loc) > 1 else (loc[0] if loc else "body")
    if error.get("type") == "extra_forbidden":
        message = "is read-only" if name in READ_ONLY_FIELDS else "is not a known field"
    elif error.get("type") in ("json_invalid", "model_attributes_type", "dict_type"):
        name, message = "body", "must be a JSON object"
    else:
        message = str(error.get("msg", "is invalid"))
    return {"field": name, "message": message}


def _summary(errors: Sequence[Mapping[str, str]]) -> str:
    if not errors:
        return "The request is invalid."
    return "Invalid request: " + "; ".join(f"{e['field']} {e['message']}" for e in errors) + "."
