"""`/api/v1/webhook-endpoints`: the tenant's endpoints, their secrets and their deliveries."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from api.deps import SessionDep, TenantDep, reject_repeated_query_parameters
from api.errors import problem_responses
from api.schemas import ApiModel, OutModel, PageQuery, Pagination, Timestamp
from models import webhook_endpoints as endpoints
from models.events import EVENT_TYPES
from models.schema import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from worker.ssrf import check_url

router = APIRouter(
    prefix="/api/v1/webhook-endpoints",
    tags=["webhook endpoints"],
    dependencies=[Depends(reject_repeated_query_parameters)],
)
EventType = Annotated[str, Field(json_schema_extra={"enum": list(EVENT_TYPES)})]
Url = Annotated[
    str, Field(min_length=1, max_length=2000, examples=["https://crm.example.com/hooks"])
]


class EndpointCreate(ApiModel):
    url: Url
    event_types: list[EventType] = Field(
        default_factory=list, description="The types to send; empty: every type"
    )
    enabled: bool = True


class EndpointUpdate(ApiModel):
    url: Url | None = None
    event_types: list[EventType] | None = None
    enabled: bool | None = None


class EndpointOut(OutModel):
    id: uuid.UUID
    url: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None
    created_at: Timestamp
    updated_at: Timestamp

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> EndpointOut:
        return cls.model_validate(endpoint)


class EndpointWithSecret(EndpointOut):
    secret: str = Field(description="The signing secret (`whsec_…`); shown only this once")
    previous_secret_expires_at: Timestamp | None = Field(
        None, description="After a rotation: until when the old secret also signs"
    )

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> EndpointWithSecret:
        return cls.model_validate(endpoint)


class EndpointList(BaseModel):
    data: list[EndpointOut]


class AttemptOut(OutModel):
    attempted_at: Timestamp
    outcome: str
    status_code: int | None
    error: str | None
    latency_ms: int


class DeliveryOut(OutModel):
    id: uuid.UUID
    event_id: uuid.UUID
    sequence: int
    state: str = Field(json_schema_extra={"enum": ["pending", "succeeded", "failed"]})
    attempts: list[AttemptOut]
    next_attempt_at: Timestamp | None
    delivered_at: Timestamp | None
    created_at: Timestamp

    @classmethod
    def of(cls, delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryOut:
        return cls(
            id=delivery.id,
            event_id=delivery.event_id,
            sequence=delivery.sequence,
            state=delivery.state,
            attempts=[AttemptOut.model_validate(a) for a in attempts],
            next_attempt_at=delivery.next_attempt_at if delivery.state == "pending" else None,
            delivered_at=delivery.delivered_at,
            created_at=delivery.created_at,
        )


class DeliveryList(OutModel):
    data: list[DeliveryOut]
    pagination: Pagination


def _id(raw: str) -> uuid.UUID:
    """A malformed id names no endpoint: 404, like an unknown one."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise endpoints.WebhookEndpointNotFoundError(raw) from None


def _checked_url(request: Request, url: str) -> str:
    check_url(url, allow_private=request.app.state.settings.events_allow_private)
    return url


@router.post(
    "",
    status_code=201,
    response_model=EndpointWithSecret,
    responses=problem_responses(400, 401),
)
def create_endpoint(
    request: Request, payload: EndpointCreate, session: SessionDep, tenant: TenantDep
) -> EndpointWithSecret:
    """Register an endpoint; the answer holds its signing secret, shown only this once."""
    endpoint = endpoints.create_endpoint(
        session,
        tenant_id=tenant.id,
        url=_checked_url(request, payload.url),
        event_types=payload.event_types,
        enabled=payload.enabled,
    )
    return EndpointWithSecret.of(endpoint)


@router.get("", response_model=EndpointList, responses=problem_responses(401))
def list_endpoints(session: SessionDep, tenant: TenantDep) -> EndpointList:
    return EndpointList(
        data=[EndpointOut.of(e) for e in endpoints.list_endpoints(session, tenant_id=tenant.id)]
    )


@router.get("/{endpoint_id}", response_model=EndpointOut, responses=problem_responses(401, 404))
def get_endpoint(endpoint_id: str, session: SessionDep, tenant: TenantDep) -> EndpointOut:
    endpoint = endpoints.get_endpoint(session, tenant_id=tenant.id, endpoint_id=_id(endpoint_id))
    return EndpointOut.of(endpoint)


@router.patch(
    "/{endpoint_id}", response_model=EndpointOut, responses=problem_responses(400, 401, 404)
)
def update_endpoint(
    request: Request,
    endpoint_id: str,
    payload: EndpointUpdate,
    session: SessionDep,
    tenant: TenantDep,
) -> EndpointOut:
    """Change only the fields sent; enabling a disabled endpoint clears its failure streak."""
    changes: dict[str, Any] = payload.model_dump(exclude_unset=True, by_alias=False)
    for name in [k for k, v in changes.items() if v is None]:
        del changes[name]
    if "url" in changes:
        changes["url"] = _checked_url(request, changes["url"])
    endpoint = endpoints.update_endpoint(
        session, tenant_id=tenant.id, endpoint_id=_id(endpoint_id), changes=changes
    )
    return EndpointOut.of(endpoint)


@router.delete(
    "/{endpoint_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(401, 404),
)
def delete_endpoint(endpoint_id: str, session: SessionDep, tenant: TenantDep) -> Response:
    """The endpoint goes, with its deliveries; nothing more is sent to it."""
    endpoints.delete_endpoint(session, tenant_id=tenant.id, endpoint_id=_id(endpoint_id))
    return Response(status_code=204)


@router.post(
    "/{endpoint_id}/rotate-secret",
    response_model=EndpointWithSecret,
    responses=problem_responses(401, 404),
)
def rotate_secret(endpoint_id: str, session: SessionDep, tenant: TenantDep) -> EndpointWithSecret:
    """A new signing secret, shown once; the old one keeps signing beside it for 24 hours."""
    endpoint = endpoints.rotate_secret(session, tenant_id=tenant.id, endpoint_id=_id(endpoint_id))
    return EndpointWithSecret.of(endpoint)


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=DeliveryList,
    responses=problem_responses(400, 401, 404),
)
def list_deliveries(
    endpoint_id: str,
    session: SessionDep,
    tenant: TenantDep,
    query: Annotated[PageQuery, Query()],
) -> DeliveryList:
    """The endpoint's deliveries, newest event first, each with every attempt."""
    page, attempts = endpoints.list_deliveries(
        session,
        tenant_id=tenant.id,
        endpoint_id=_id(endpoint_id),
        page=query.page,
        limit=query.limit,
        max_limit=tenant.max_page_size,
    )
    return DeliveryList(
        data=[DeliveryOut.of(d, attempts[d.id]) for d in page.items],
        pagination=Pagination(
            page=page.page, limit=page.limit, total=page.total, total_pages=page.total_pages
        ),
    )


@router.post(
    "/{endpoint_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryOut,
    responses=problem_responses(401, 404),
)
def redeliver(
    endpoint_id: str, delivery_id: str, session: SessionDep, tenant: TenantDep
) -> DeliveryOut:
    """Send the delivery again soon, with a fresh retry schedule."""
    try:
        wanted = uuid.UUID(delivery_id)
    except ValueError:
        raise endpoints.DeliveryNotFoundError(delivery_id) from None
    delivery = endpoints.redeliver(
        session, tenant_id=tenant.id, endpoint_id=_id(endpoint_id), delivery_id=wanted
    )
    attempts = endpoints.attempts_of(session, tenant_id=tenant.id, delivery_id=delivery.id)
    return DeliveryOut.of(delivery, attempts)
