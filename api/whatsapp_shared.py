"""The shared WhatsApp route, `GET`/`POST /webhooks/whatsapp`: one Meta app for every tenant.

Verified with the operator's app secret and verify token (settings); each change goes to the
tenant that registered its `metadata.phone_number_id`, through the same accept path as the
per-tenant route. A change for a number nobody registered is kept as unrouted and answered
200: Meta disables the webhooks of an app whose callback keeps failing, and the operator can
replay it (`intake events replay`) once a tenant registers the number.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from api.metrics import Metrics
from api.schemas import Problem as ProblemSchema
from api.webhooks import (
    MAX_BODY,
    ClientGoneError,
    WebhookRefusedError,
    accept_parsed,
    read_body,
    refusal_response,
)
from channels.base import ChannelError, RawRequest
from channels.whatsapp import answer_subscription, load_json, verify
from channels.whatsapp_shared import (
    ParsedChange,
    SharedNotification,
    merged,
    parse_shared_notification,
)
from intake.logs import request_id_var
from intake.settings import Settings
from models.db import Database
from models.whatsapp_routing import (
    NewUnroutedChange,
    store_unrouted,
    tenants_of_phone_number_ids,
)

log = logging.getLogger("intake.webhooks")

PATH = "/webhooks/whatsapp"
CHANNEL = "whatsapp"
UNROUTED = "unrouted"  # the `reason` an unrouted change is counted under


class PhoneNumberRoutes:
    """Which tenant registered each phone number id, cached for a few seconds like
    TenantSecrets: every shared-route request needs it. A number nobody registered is cached
    too, so a newly registered one is routed within `ttl_seconds` (earlier changes are kept
    as unrouted, to replay)."""

    def __init__(self, db: Database, *, ttl_seconds: float = 5.0) -> None:
        self.db = db
        self.ttl_seconds = ttl_seconds
        self._cache: dict[str, tuple[float, uuid.UUID | None]] = {}

    def cached(self, phone_number_ids: Sequence[str]) -> dict[str, uuid.UUID | None] | None:
        """All their tenants if each was read recently (no database, no thread), else None."""
        now = time.monotonic()
        found: dict[str, uuid.UUID | None] = {}
        for phone_number_id in phone_number_ids:
            hit = self._cache.get(phone_number_id)
            if hit is None or hit[0] <= now:
                return None
            found[phone_number_id] = hit[1]
        return found

    def get(self, phone_number_ids: Sequence[str]) -> dict[str, uuid.UUID | None]:
        """Raises SQLAlchemyError when the database fails and a number was never read."""
        hit = self.cached(phone_number_ids)
        if hit is not None:
            return hit
        try:
            with self.db.sessions() as session:
                registered = tenants_of_phone_number_ids(session, phone_number_ids=phone_number_ids)
        except SQLAlchemyError:
            # A database outage should not unroute a known number: the last answer stands,
            # so its messages still reach the accept path (which knows what to do when the
            # database is down).
            if all(p in self._cache for p in phone_number_ids):
                return {p: self._cache[p][1] for p in phone_number_ids}
            raise
        expires = time.monotonic() + self.ttl_seconds
        found: dict[str, uuid.UUID | None] = {}
        for phone_number_id in phone_number_ids:
            found[phone_number_id] = registered.get(phone_number_id)
            self._cache[phone_number_id] = (expires, found[phone_number_id])
        return found


async def _keep_unrouted(app: Any, changes: Sequence[NewUnroutedChange]) -> None:
    """Store the unrouted changes (a redelivered one once), count and log them."""
    if not changes:
        return
    metrics: Metrics = app.state.metrics
    db: Database = app.state.db

    def keep() -> int:
        with db.unit_of_work() as session:
            return store_unrouted(session, changes=changes)

    try:
        kept = await run_in_threadpool(keep)
    except SQLAlchemyError as exc:
        raise WebhookRefusedError(
            503, "unavailable", f"the unrouted store is unavailable ({type(exc).__name__})"
        ) from None
    metrics.webhooks_ignored.labels(CHANNEL, UNROUTED).inc(len(changes))
    log.warning(
        "webhook.unrouted",
        extra={
            "channel": CHANNEL,
            "phone_number_ids": sorted({c.phone_number_id for c in changes}),
            "changes": len(changes),
            "kept": kept,
            "messages": sum(c.message_count for c in changes),
        },
    )


def _unrouted_of(phone_number_id: str, changes: Sequence[ParsedChange]) -> list[NewUnroutedChange]:
    """The changes worth keeping: those carrying messages, kept as sent so that a replay
    parses them with the parser of its day. A status of nobody's is not kept."""
    return [
        NewUnroutedChange(
            phone_number_id=phone_number_id,
            entry_id=c.change.entry_id,
            change=c.change.raw,
            change_key=c.change.key,
            message_count=len(c.parsed.messages),
        )
        for c in changes
        if c.parsed.messages or c.change.carries_messages
    ]


async def _routes(app: Any, phone_number_ids: Sequence[str]) -> dict[str, uuid.UUID | None]:
    routes: PhoneNumberRoutes = app.state.phone_number_routes
    found = routes.cached(phone_number_ids)
    if found is not None:
        return found
    try:
        return await run_in_threadpool(routes.get, phone_number_ids)
    except SQLAlchemyError as exc:
        raise WebhookRefusedError(
            503, "unavailable", f"the tenant store is unavailable ({type(exc).__name__})"
        ) from None


def _verified_notification(raw: RawRequest, app_secret: str) -> SharedNotification:
    verify(raw, app_secret)
    return parse_shared_notification(load_json(raw.body))


async def _deliver(app: Any, request: Request, request_id: str) -> Response:
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    if request.method == "GET":
        verify_token = settings.whatsapp_verify_token.get_secret_value()
        if not verify_token:
            raise WebhookRefusedError(404, "not_configured", "the shared WhatsApp route is off")
        try:
            parsed = answer_subscription(dict(request.query_params), verify_token)
        except ChannelError as exc:
            raise WebhookRefusedError(exc.status, exc.reason, str(exc)) from None
        return PlainTextResponse(parsed.reply)
    app_secret = settings.whatsapp_app_secret.get_secret_value()
    if not app_secret:
        raise WebhookRefusedError(404, "not_configured", "the shared WhatsApp route is off")
    body = await read_body(request, MAX_BODY)
    raw = RawRequest(
        method=request.method,
        url=str(request.url),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=body,
    )
    try:
        # Every change is parsed before anything is stored: a malformed one is a 400 for the
        # whole notification, with nothing kept, as on the per-tenant route. Off the event loop,
        # like every webhook's parse.
        shared = await run_in_threadpool(_verified_notification, raw, app_secret)
    except ChannelError as exc:
        raise WebhookRefusedError(exc.status, exc.reason, str(exc)) from None
    routes = await _routes(app, list(shared.by_phone_number_id))
    routed: dict[uuid.UUID, list[ParsedChange]] = {}  # a tenant may have several numbers
    unrouted: list[NewUnroutedChange] = []
    for phone_number_id, changes in shared.by_phone_number_id.items():
        tenant_id = routes[phone_number_id]
        if tenant_id is not None:
            routed.setdefault(tenant_id, []).extend(changes)
            continue
        unrouted.extend(_unrouted_of(phone_number_id, changes))
        for reason in merged(changes).ignored:
            metrics.webhooks_ignored.labels(CHANNEL, reason).inc()
    # Each tenant's part joins the batcher on its own, so they may share one transaction;
    # the answer waits for every commit. A 503 for any makes Meta redeliver the whole
    # notification, and the parts already stored are then acknowledged without a second copy.
    outcomes = await asyncio.gather(
        _keep_unrouted(app, unrouted),
        *(
            accept_parsed(
                app,
                route=CHANNEL,
                tenant_id=tenant_id,
                parsed=merged(changes),
                request_id=request_id,
            )
            for tenant_id, changes in routed.items()
        ),
        return_exceptions=True,
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    for reason in shared.ignored:
        metrics.webhooks_ignored.labels(CHANNEL, reason).inc()
    return JSONResponse({"ok": True})


async def shared_whatsapp_webhook(request: Request) -> Response:
    app = request.app
    metrics: Metrics = app.state.metrics
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    token = request_id_var.set(request_id[:64])
    metrics.webhooks_received.labels(CHANNEL).inc()
    try:
        return await _deliver(app, request, request_id)
    except (ClientGoneError, WebhookRefusedError) as exc:
        return refusal_response(metrics, exc, channel=CHANNEL, route=PATH)
    finally:
        request_id_var.reset(token)


_REFUSALS = {
    400: "Malformed body",
    403: "Missing or wrong signature (the operator's app secret) or verify token",
    404: "The shared route is not configured (INTAKE_WHATSAPP_APP_SECRET, _VERIFY_TOKEN)",
    413: "Body over 1 MiB",
    503: "The message could not be stored durably; Meta should retry",
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ProblemSchema, "description": text} for code, text in _REFUSALS.items()
}

router = APIRouter(tags=["webhooks"])
router.add_api_route(
    PATH,
    shared_whatsapp_webhook,
    methods=["GET"],
    name="webhook_whatsapp_shared_get",
    summary="shared WhatsApp webhook subscription check",
    responses=_RESPONSES,
)
router.add_api_route(
    PATH,
    shared_whatsapp_webhook,
    methods=["POST"],
    name="webhook_whatsapp_shared_post",
    summary="shared WhatsApp webhook: changes routed by phone_number_id",
    responses=_RESPONSES,
)
