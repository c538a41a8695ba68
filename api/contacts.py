"""`/api/v1/contacts`: the tenant's contacts and their messages, over models.contacts."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from api.deps import DatabaseDep, SessionDep, TenantDep, reject_repeated_query_parameters
from api.errors import PROBLEM_JSON, problem_for, problem_responses
from api.schemas import (
    ContactCreate,
    ContactList,
    ContactListQuery,
    ContactOut,
    ContactUpdate,
    IdentityList,
    IdentityOut,
    MergeList,
    MergeOut,
    MergeRequest,
    MessageList,
    PageQuery,
)
from models import contacts, identities, merges
from models.idempotency import (
    MAX_KEY_LENGTH,
    StoredResponse,
    request_fingerprint,
    run_idempotently,
)
from models.schema import Tenant
from worker.locks import TenantLocks

router = APIRouter(prefix="/api/v1/contacts", tags=["contacts"])
# Only the routes that read a query refuse a repeated parameter (a 400 they document); the
# others read none, so whatever query they are sent changes nothing.
QUERY_CHECKS = [Depends(reject_repeated_query_parameters)]

PREFIX = router.prefix
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="Sent again with the same body within 24 hours, replays the first response",
    ),
]
CREATED_HEADERS = {
    "Location": {"schema": {"type": "string"}, "description": "The new contact's URL"},
    "Idempotent-Replayed": {
        "schema": {"type": "string", "enum": ["true"]},
        "description": "Present when this is the replay of an earlier request's response",
    },
}


def _tenant_locks(request: Request) -> TenantLocks:
    locks: TenantLocks = request.app.state.tenant_locks
    return locks


# The per-tenant lock the drains hold: a merge or undo through the API never interleaves with
# a batch of that tenant's ingestion.
TenantLocksDep = Annotated[TenantLocks, Depends(_tenant_locks)]


def _contact_id(raw: str) -> uuid.UUID:
    """A malformed id names no contact: 404, like an unknown one."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise contacts.ContactNotFoundError(raw) from None


@router.get(
    "", response_model=ContactList, responses=problem_responses(400, 401), dependencies=QUERY_CHECKS
)
def list_contacts(
    session: SessionDep, tenant: TenantDep, query: Annotated[ContactListQuery, Query()]
) -> ContactList:
    """The tenant's contacts, newest first."""
    result = contacts.list_contacts(
        session,
        tenant_id=tenant.id,
        max_limit=tenant.max_page_size,
        **query.model_dump(mode="json"),
    )
    return ContactList.of(result)


@router.post(
    "",
    status_code=201,
    response_model=ContactOut,
    responses={
        201: {"description": "Created", "headers": CREATED_HEADERS},
        **problem_responses(400, 401, 409, 422),
    },
)
def create_contact(
    payload: ContactCreate,
    db: DatabaseDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a contact; `Idempotency-Key` makes a retry safe."""
    fields = payload.model_dump(mode="json", by_alias=False)
    if idempotency_key is None:
        with db.unit_of_work() as session:
            created = _create(session, tenant, fields)
        return _created_response(created, replayed=False)
    stored, replayed = run_idempotently(
        db,
        tenant_id=tenant.id,
        key=idempotency_key,
        request_hash=request_fingerprint(payload.model_dump(mode="json", exclude_unset=True)),
        action=lambda session: _create(session, tenant, fields),
        error_response=_stored_problem,
    )
    return _created_response(stored, replayed=replayed)


@router.get("/{contact_id}", response_model=ContactOut, responses=problem_responses(401, 404))
def get_contact(contact_id: str, session: SessionDep, tenant: TenantDep) -> ContactOut:
    contact = contacts.get_contact(session, tenant_id=tenant.id, contact_id=_contact_id(contact_id))
    return ContactOut.of(contact)


@router.patch(
    "/{contact_id}", response_model=ContactOut, responses=problem_responses(400, 401, 404, 409)
)
def update_contact(
    contact_id: str, payload: ContactUpdate, session: SessionDep, tenant: TenantDep
) -> ContactOut:
    """Change only the fields sent."""
    contact = contacts.update_contact(
        session,
        tenant_id=tenant.id,
        contact_id=_contact_id(contact_id),
        region=tenant.region,
        changes=payload.model_dump(mode="json", by_alias=False, exclude_unset=True),
    )
    return ContactOut.of(contact)


@router.delete(
    "/{contact_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(401, 404),
)
def delete_contact(contact_id: str, session: SessionDep, tenant: TenantDep) -> Response:
    """Soft delete: the contact disappears from the API and its phone and email become free."""
    contacts.delete_contact(session, tenant_id=tenant.id, contact_id=_contact_id(contact_id))
    return Response(status_code=204)


@router.get(
    "/{contact_id}/messages",
    response_model=MessageList,
    responses=problem_responses(400, 401, 404),
    dependencies=QUERY_CHECKS,
)
def list_contact_messages(
    contact_id: str, session: SessionDep, tenant: TenantDep, query: Annotated[PageQuery, Query()]
) -> MessageList:
    """The contact's recorded messages, newest first."""
    result = contacts.list_contact_messages(
        session,
        tenant_id=tenant.id,
        contact_id=_contact_id(contact_id),
        max_limit=tenant.max_page_size,
        **query.model_dump(mode="json"),
    )
    return MessageList.of(result)


@router.post(
    "/{contact_id}/merge",
    response_model=ContactOut,
    responses=problem_responses(400, 401, 404, 503),
)
def merge_contact(
    contact_id: str,
    payload: MergeRequest,
    db: DatabaseDep,
    tenant: TenantDep,
    locks: TenantLocksDep,
) -> ContactOut:
    """Merge `contactId` into this contact, which survives with both's identities and messages."""
    path_id = _contact_id(contact_id)
    with locks.hold(tenant.id), db.unit_of_work() as session:
        survivor = contacts.resolve_contact(session, tenant_id=tenant.id, contact_id=path_id)
        other = contacts.resolve_contact(
            session, tenant_id=tenant.id, contact_id=payload.contact_id
        )
        merges.merge_contacts(
            session,
            tenant_id=tenant.id,
            survivor_id=survivor.id,
            merged_id=other.id,
            reason=merges.API_REASON,
        )
        return ContactOut.of(survivor)


@router.get(
    "/{contact_id}/identities",
    response_model=IdentityList,
    responses=problem_responses(401, 404),
)
def list_contact_identities(
    contact_id: str, session: SessionDep, tenant: TenantDep
) -> IdentityList:
    """The ways this contact is known: phones, emails and channel ids."""
    contact = contacts.get_contact(session, tenant_id=tenant.id, contact_id=_contact_id(contact_id))
    found = identities.list_identities(session, tenant_id=tenant.id, contact_id=contact.id)
    return IdentityList(data=[IdentityOut.of(i) for i in found])


@router.get(
    "/{contact_id}/merges",
    response_model=MergeList,
    responses=problem_responses(401, 404),
)
def list_contact_merges(contact_id: str, session: SessionDep, tenant: TenantDep) -> MergeList:
    """The contacts merged into this one, newest first, undone ones included."""
    found = merges.list_merges(session, tenant_id=tenant.id, contact_id=_contact_id(contact_id))
    return MergeList(data=[MergeOut.of(m) for m in found])


@router.post(
    "/{contact_id}/merges/{merge_id}/undo",
    response_model=ContactOut,
    responses=problem_responses(401, 404, 409, 503),
)
def undo_contact_merge(
    contact_id: str, merge_id: str, db: DatabaseDep, tenant: TenantDep, locks: TenantLocksDep
) -> ContactOut:
    """Bring the merged contact back with what it had; answers with the restored contact."""
    path_id = _contact_id(contact_id)
    try:
        wanted = uuid.UUID(merge_id)
    except ValueError:
        raise merges.MergeNotFoundError(merge_id) from None
    with locks.hold(tenant.id), db.unit_of_work() as session:
        restored = merges.undo_merge(
            session, tenant_id=tenant.id, contact_id=path_id, merge_id=wanted
        )
        return ContactOut.of(restored)


def _create(session: Session, tenant: Tenant, fields: dict[str, Any]) -> StoredResponse:
    contact = contacts.create_contact(session, tenant_id=tenant.id, region=tenant.region, **fields)
    return StoredResponse(status=201, body=ContactOut.of(contact).model_dump(mode="json"))


def _stored_problem(exc: Exception) -> StoredResponse | None:
    """The client's error to store and replay; None for a 5xx (say, the database was down),
    whose key is released so that a retry runs again rather than replaying the outage."""
    problem = problem_for(exc)
    if problem is None or problem.status >= 500:
        return None
    return StoredResponse(problem.status, problem.body())


def _created_response(stored: StoredResponse, *, replayed: bool) -> JSONResponse:
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    if stored.status >= 400:
        return JSONResponse(
            stored.body, status_code=stored.status, media_type=PROBLEM_JSON, headers=headers
        )
    if stored.body is not None:
        headers["Location"] = f"{PREFIX}/{stored.body['id']}"
    return JSONResponse(stored.body, status_code=stored.status, headers=headers)
