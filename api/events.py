"""`/api/v1/events`: the tenant's event feed, read in order from a cursor, over models.events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from api.deps import SessionDep, TenantDep, reject_repeated_query_parameters
from api.errors import problem_responses
from models.events import EVENT_TYPES, event_body, list_events

router = APIRouter(
    prefix="/api/v1/events",
    tags=["events"],
    dependencies=[Depends(reject_repeated_query_parameters)],
)
MAX_LIMIT = 500


class EventOut(BaseModel):
    id: str
    type: str = Field(json_schema_extra={"enum": list(EVENT_TYPES)})
    sequence: int = Field(description="Grows per tenant, in commit order")
    createdAt: str = Field(json_schema_extra={"format": "date-time"})
    data: dict[str, Any]


class EventFeed(BaseModel):
    data: list[EventOut]
    next: str = Field(description="The cursor to pass as `after` to read on from here")


class EventQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: str | None = Field(
        None, max_length=40, description="A `next` cursor from an earlier page; none: the start"
    )
    limit: int = Field(100, ge=1, description=f"Events per page, at most {MAX_LIMIT}")
    type: str | None = Field(
        None,
        description="Only events of these types (comma-separated)",
        examples=["contact.created"],
    )


@router.get("", response_model=EventFeed, responses=problem_responses(400, 401))
def read_events(
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    query: Annotated[EventQuery, Query()],
) -> EventFeed:
    """The tenant's events after the cursor, oldest first, each once."""
    types = [t.strip() for t in (query.type or "").split(",") if t.strip()]
    page = list_events(
        session,
        tenant_id=tenant.id,
        # `after=` with nothing after it is a first page from a client that always sends the
        # parameter, not a cursor: it reads from the start, as no `after` does.
        after=query.after or None,
        limit=min(query.limit, MAX_LIMIT),
        types=types,
        retention_days=request.app.state.settings.events_retention_days,
    )
    return EventFeed(
        data=[EventOut.model_validate(event_body(event)) for event in page.events],
        next=page.next_cursor,
    )
