"""Provider webhooks: read the body within its limit, verify and parse it, accept it durably.

The route does no ingestion: a 2xx means the message is committed to the inbox (or, while the
database cannot take it, fsynced to the spool), and the worker does the rest. Every refusal is
counted and logged with its reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from api.bounded import BoundedCalls, ProbeTimeoutError
from api.errors import Problem
from api.metrics import Metrics
from api.parse_pool import ParsePool
from api.public_url import public_url
from api.schemas import Problem as ProblemSchema
from channels.base import ChannelAdapter, ChannelError, Parsed, RawRequest
from channels.registry import ADAPTERS
from intake.logs import request_id_var
from intake.settings import Settings
from models.db import Database
from models.tenants import ChannelSecrets, TenantNotFoundError, channel_secrets_of, get_tenant
from worker.accept import AcceptUnavailableError, NonceReplayedError
from worker.accept_batcher import AcceptBatcher
from worker.spool import Spool, SpoolUnavailableError

log = logging.getLogger("intake.webhooks")

MAX_BODY = 1024 * 1024
MAX_EMAIL_BODY = 25 * 1024 * 1024
# How long a webhook waits for the database before it falls back: to the last-known secrets,
# and to the spool for its messages. Providers wait 5-15 s; a few seconds leave a margin.
SECRETS_TIMEOUT_SECONDS = 2.0
ACCEPT_TIMEOUT_SECONDS = 2.0
TWIML_EMPTY = "<Response/>"  # TwiML that tells Twilio to send no reply


class WebhookRefusedError(Exception):
    def __init__(self, status: int, reason: str, detail: str, problem: Problem | None = None):
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail
        self.problem = problem or Problem(status, detail)


class ClientGoneError(Exception):
    """The client hung up before its body was complete: nothing to verify, no one to answer."""

    def __init__(self, received: int) -> None:
        super().__init__(f"client closed the connection after {received} bytes")
        self.received = received


class TenantSecrets:
    """Tenants' channel secrets, cached for a few seconds: every webhook needs them.

    The last value read is kept past its freshness: while the database is down or stalled, a
    webhook is still verified with the tenant's last-known secrets (and spooled), rather than
    refused. A refresh waits only SECRETS_TIMEOUT_SECONDS, and one refresh a tenant at a time
    is in flight, so a stalled database holds a fixed number of probe threads.
    """

    ttl_seconds = 5.0

    def __init__(self, db: Database, probes: BoundedCalls | None = None) -> None:
        self.db = db
        self.probes = probes or BoundedCalls(threads=4, name="intake-secrets")
        self._cache: dict[uuid.UUID, tuple[float, ChannelSecrets]] = {}

    def cached(self, tenant_id: uuid.UUID) -> ChannelSecrets | None:
        """The secrets if they were read recently: no database, so no worker thread needed."""
        hit = self._cache.get(tenant_id)
        return hit[1] if hit and hit[0] > time.monotonic() else None

    def last_known(self, tenant_id: uuid.UUID) -> ChannelSecrets | None:
        """The secrets as last read, however long ago; None if never read by this process."""
        hit = self._cache.get(tenant_id)
        return hit[1] if hit else None

    def get(self, tenant_id: uuid.UUID) -> ChannelSecrets:
        hit = self.cached(tenant_id)
        if hit is not None:
            return hit
        with self.db.sessions() as session:
            secrets = channel_secrets_of(get_tenant(session, tenant_id=tenant_id))
        self._cache[tenant_id] = (time.monotonic() + self.ttl_seconds, secrets)
        return secrets

    async def fetch(self, tenant_id: uuid.UUID) -> ChannelSecrets:
        """Fresh secrets, or the last-known ones when the database fails or does not answer
        in time; raises TenantNotFoundError, or the database's error with nothing known."""
        hit = self.cached(tenant_id)
        if hit is not None:
            return hit
        try:
            return await self.probes.acall(
                lambda: self.get(tenant_id), timeout=SECRETS_TIMEOUT_SECONDS
            )
        except (SQLAlchemyError, ProbeTimeoutError):
            known = self.last_known(tenant_id)
            if known is None:
                raise
            return known


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise WebhookRefusedError(413, "too_large", f"body over {limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # refused while reading, whatever Content-Length claimed
                raise WebhookRefusedError(413, "too_large", f"body over {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGoneError(size) from None
    return b"".join(chunks)


async def _store(
    app: Any,
    channel: str,
    tenant: uuid.UUID,
    parsed: Parsed,
    nonce: tuple[str, str] | None,
    request_id: str,
) -> None:
    """Store the request's messages in the inbox, or, when the database cannot take them in
    time, in the spool; raises WebhookRefusedError when neither holds them."""
    metrics: Metrics = app.state.metrics
    spool: Spool = app.state.spool
    cause = "spooling"
    if not spool.holding:  # while the spool holds messages, new ones queue behind them
        batcher: AcceptBatcher = app.state.accept_batcher
        try:
            # Group commit: this request shares a transaction with those waiting beside it.
            result = await asyncio.wait_for(
                batcher.accept(
                    tenant_id=tenant, messages=parsed.messages, nonce=nonce, request_id=request_id
                ),
                ACCEPT_TIMEOUT_SECONDS,
            )
        except NonceReplayedError:
            raise WebhookRefusedError(403, "replay", "this request was seen before") from None
        except AcceptUnavailableError:
            cause = "unavailable"
        except TimeoutError:
            # Still queued, it is cancelled and never stored; already in a transaction, it may
            # yet commit, and the spool's copy is then a duplicate its drain ignores.
            cause = "timeout"
        else:
            metrics.messages_accepted.labels(channel).inc(result.new)
            metrics.messages_duplicate.labels(channel).inc(result.duplicates)
            return
    try:
        await run_in_threadpool(
            spool.append,
            tenant_id=tenant,
            messages=parsed.messages,
            nonce=nonce,
            request_id=request_id,
        )
    except SpoolUnavailableError as exc:
        raise WebhookRefusedError(
            503, "unavailable", f"the message store is unavailable ({cause}); {exc}"
        ) from None
    metrics.messages_spooled.labels(channel, cause).inc(len(parsed.messages))


async def accept_parsed(
    app: FastAPI, *, route: str, tenant_id: uuid.UUID, parsed: Parsed, request_id: str
) -> None:
    """Accept a verified request's messages for the tenant durably, count and log them.

    The one accept path of every webhook route (the shared WhatsApp route too). Raises
    WebhookRefusedError (403 replay, 503 unavailable); returning means committed or spooled.
    """
    metrics: Metrics = app.state.metrics
    channel = route.split("/")[0]
    if parsed.messages or parsed.nonce:
        nonce = (route, parsed.nonce) if parsed.nonce else None
        await _store(app, channel, tenant_id, parsed, nonce, request_id)
    for reason in parsed.ignored:
        metrics.webhooks_ignored.labels(channel, reason).inc()
    log.info(
        "webhook.accepted",
        extra={
            "channel": channel,
            "tenant_id": str(tenant_id),
            "messages": len(parsed.messages),
            "ignored": list(parsed.ignored),
        },
    )


def _answer(adapter: ChannelAdapter, parsed: Parsed) -> Response:
    if parsed.reply is not None:
        return PlainTextResponse(parsed.reply)
    if adapter.route == "twilio":
        # Exactly `text/xml`: Starlette would append a charset to a media_type of text/*.
        return Response(TWIML_EMPTY, headers={"content-type": "text/xml"})
    return JSONResponse({"ok": True})


_REFUSALS = {
    400: "Malformed body",
    403: "Missing or wrong signature, or a replayed request",
    404: "No such tenant",
    413: "Body over 1 MiB (email: 25 MiB)",
    503: "The message could not be stored durably; the provider should retry",
}


async def handle_webhook(adapter: ChannelAdapter, tenant_id: str, request: Request) -> Response:
    app = request.app
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    channel = adapter.route.split("/")[0]
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    token = request_id_var.set(request_id[:64])
    metrics.webhooks_received.labels(channel).inc()
    try:
        try:
            tenant = uuid.UUID(tenant_id)
        except ValueError:
            raise WebhookRefusedError(404, "unknown_tenant", "no such tenant") from None
        limit = MAX_EMAIL_BODY if channel == "email" else MAX_BODY
        body = await read_body(request, limit)
        tenant_secrets: TenantSecrets = app.state.tenant_secrets
        try:
            # While the spool holds messages the database is known not to answer: verify with
            # the last-known secrets at once rather than wait on it for every request.
            secrets = (tenant_secrets.last_known(tenant) if app.state.spool.holding else None) or (
                await tenant_secrets.fetch(tenant)
            )
        except TenantNotFoundError:
            raise WebhookRefusedError(404, "unknown_tenant", "no such tenant") from None
        except (SQLAlchemyError, ProbeTimeoutError) as exc:
            # The database is down and this process never knew the tenant's secrets, so the
            # request cannot be verified: the provider must retry later, so 503, never a 500.
            raise WebhookRefusedError(
                503, "unavailable", f"the tenant store is unavailable ({type(exc).__name__})"
            ) from None
        raw = RawRequest(
            method=request.method,
            url=public_url(request, settings),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            query=dict(request.query_params),
        )
        try:
            # Off the event loop (a large body in a child process): a large email's MIME and
            # HTML parsing is seconds of pure Python that would hold every other request.
            pool: ParsePool = app.state.parse_pool
            parsed, secret_used = await pool.parse(adapter, raw, secrets, datetime.now(UTC))
        except ChannelError as exc:
            raise WebhookRefusedError(exc.status, exc.reason, str(exc)) from None
        metrics.webhook_secret_used.labels(channel, secret_used).inc()
        await accept_parsed(
            app, route=adapter.route, tenant_id=tenant, parsed=parsed, request_id=request_id
        )
        return _answer(adapter, parsed)
    except (ClientGoneError, WebhookRefusedError) as exc:
        return refusal_response(metrics, exc, channel=channel, tenant_id=tenant_id)
    finally:
        request_id_var.reset(token)


def refusal_response(
    metrics: Metrics, exc: ClientGoneError | WebhookRefusedError, **fields: str
) -> Response:
    """Count and log a refused webhook, and answer it; `fields` name the channel and where."""
    channel = fields["channel"]
    if isinstance(exc, ClientGoneError):
        # The provider's connection, not our failure: it retries as for any unanswered request.
        metrics.webhooks_rejected.labels(channel, "client_gone").inc()
        log.info("webhook.client_gone", extra={**fields, "received_bytes": exc.received})
        return Response(status_code=400)
    metrics.webhooks_rejected.labels(channel, exc.reason).inc()
    log.warning(
        "webhook.rejected",
        extra={**fields, "status": exc.status, "reason": exc.reason, "detail": exc.detail},
    )
    return exc.problem.response()


def _endpoint(adapter: ChannelAdapter) -> Callable[[str, Request], Awaitable[Response]]:
    async def endpoint(tenant_id: str, request: Request) -> Response:
        return await handle_webhook(adapter, tenant_id, request)

    return endpoint


_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ProblemSchema, "description": text} for code, text in _REFUSALS.items()
}


def build_router() -> APIRouter:
    router = APIRouter(prefix="/webhooks/{tenant_id}", tags=["webhooks"])
    for adapter in ADAPTERS:
        # Meta checks a subscription with a GET to the same URL it POSTs notifications to.
        for method in ("GET", "POST") if adapter.route == "whatsapp" else ("POST",):
            router.add_api_route(
                f"/{adapter.route}",
                _endpoint(adapter),
                methods=[method],
                name=f"webhook_{adapter.route.replace('/', '_')}_{method.lower()}",
                summary=f"{adapter.route} webhook"
                + (" subscription check" if method == "GET" else ""),
                responses=_RESPONSES,
            )
    return router
