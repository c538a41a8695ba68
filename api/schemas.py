"""The Contacts API's JSON shapes: request bodies, responses and the problem document.

Field names are camelCase on the wire and snake_case in Python. Request bodies refuse unknown
fields, so a read-only or misspelt field is a 400 rather than silently ignored.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from models.contacts import Channel, ContactRole, ContactStatus, Page, check_field
from models.languages import ISO_639_1
from models.schema import Contact, ContactIdentity, ContactMerge, Message


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


Timestamp = Annotated[
    datetime,
    PlainSerializer(_rfc3339, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def _checked(field: str) -> AfterValidator:
    """The domain's own check of `field` (models.contacts), run while pydantic validates the
    body: a 400 then names every bad field at once, not only those pydantic's types catch."""

    def check(value: Any) -> Any:
        try:
            check_field(field, value)
        except ValueError as exc:
            raise PydanticCustomError("invalid_value", str(exc)) from None
        return value

    return AfterValidator(check)


class _NoIdentity:
    """Put in place of an absent email and phone of a create, so that pydantic reports the
    missing identity on both fields beside every other bad field, in one answer."""


def _refuse_no_identity(value: Any) -> Any:
    if isinstance(value, _NoIdentity):
        raise PydanticCustomError("missing_identity", "a contact needs an email or a phone")
    return value


LanguageCode = Annotated[
    str,
    _checked("language"),
    Field(
        description="ISO 639-1 code",
        examples=["en", "es"],
        json_schema_extra={"enum": sorted(ISO_639_1)},
    ),
]
Name = Annotated[str, Field(min_length=1, max_length=300), _checked("name")]
Source = Annotated[str, Field(min_length=1, max_length=100), _checked("source")]
ReferralSource = Annotated[str, Field(max_length=300), _checked("referral_source")]
# Raw input: the phone is normalized to E.164 (in the tenant's region) and the email lowercased
# by models.contacts before they are stored; here they are only checked.
EmailIn = Annotated[
    str,
    Field(max_length=320, examples=["jane@example.com"], json_schema_extra={"format": "email"}),
    _checked("email"),
    BeforeValidator(_refuse_no_identity),
]
PhoneIn = Annotated[
    str,
    Field(
        max_length=40,
        description="Any common spelling; read in the tenant's region unless it starts with +",
        examples=["+15551234567", "(555) 123-4567"],
    ),
    _checked("phone"),
    BeforeValidator(_refuse_no_identity),
]


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
        extra="forbid",
    )


class ContactCreate(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": ["email"]}, {"required": ["phone"]}]}
    )

    name: Name
    email: EmailIn | None = None
    phone: PhoneIn | None = None
    status: ContactStatus = ContactStatus.PROSPECT
    role: ContactRole = ContactRole.PROSPECT
    channel_preference: Channel | None = None
    source: Source = "api"
    referral_source: ReferralSource | None = None
    language: LanguageCode = "en"

    @model_validator(mode="before")
    @classmethod
    def _mark_missing_identity(cls, data: Any) -> Any:
        """Required: a name and an email or a phone (an empty one is an absent one)."""
        if not isinstance(data, dict):
            return data
        given = [data.get(field) for field in ("email", "phone")]
        if any(
            not (value is None or (isinstance(value, str) and not value.strip())) for value in given
        ):
            return data
        return {**data, "email": _NoIdentity(), "phone": _NoIdentity()}


class ContactUpdate(ApiModel):
    """Only the fields sent are changed; `null` clears email, phone, channelPreference and
    referralSource (a contact must keep an email or a phone)."""

    name: Name | SkipJsonSchema[None] = None
    email: EmailIn | None = None
    phone: PhoneIn | None = None
    status: ContactStatus | SkipJsonSchema[None] = None
    role: ContactRole | SkipJsonSchema[None] = None
    channel_preference: Channel | None = None
    source: Source | SkipJsonSchema[None] = None
    referral_source: ReferralSource | None = None
    language: LanguageCode | SkipJsonSchema[None] = None


class PageQuery(BaseModel):
    """Query parameters of a paginated route; an unknown one (a typo) is a 400, not ignored."""

    model_config = ConfigDict(extra="forbid")

    page: int = Field(1, ge=1, description="Page number, from 1")
    limit: int = Field(
        20, ge=1, description="Items per page; above the plan's maximum it is clamped"
    )


class ContactListQuery(PageQuery):
    status: ContactStatus | None = None
    role: ContactRole | None = None
    channel: Channel | None = Field(None, description="Channel preference")
    search: str | None = Field(
        None,
        max_length=200,
        description="Name, email or phone, case-insensitive; a phone-like search also matches "
        "on digits",
    )


class OutModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        serialize_by_alias=True,
        from_attributes=True,
    )


class ContactOut(OutModel):
    id: uuid.UUID
    name: str
    email: str | None
    phone: str | None = Field(description="E.164")
    status: ContactStatus
    role: ContactRole
    channel_preference: Channel | None
    source: str
    referral_source: str | None
    language: str
    applied_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp

    @classmethod
    def of(cls, contact: Contact) -> ContactOut:
        return cls.model_validate(contact)


class MessageOut(OutModel):
    id: uuid.UUID
    channel: Channel
    provider_message_id: str
    text: str | None
    media: list[dict[str, Any]]
    received_at: Timestamp
    created_at: Timestamp = Field(description="When Intake accepted the message")

    @classmethod
    def of(cls, message: Message) -> MessageOut:
        return cls(
            id=message.id,
            channel=message.channel,
            provider_message_id=message.provider_message_id,
            text=message.body,
            media=message.media or [],
            received_at=message.received_at,
            created_at=message.accepted_at,
        )


class Pagination(OutModel):
    page: int
    limit: int = Field(description="The effective page size, after the plan's maximum")
    total: int
    total_pages: int


ItemT = TypeVar("ItemT", bound=OutModel)


class Paginated(OutModel, Generic[ItemT]):
    data: list[ItemT]
    pagination: Pagination


def paginated(page: Page[Any], items: list[ItemT]) -> dict[str, Any]:
    return {
        "data": items,
        "pagination": Pagination(
            page=page.page, limit=page.limit, total=page.total, total_pages=page.total_pages
        ),
    }


class ContactList(Paginated[ContactOut]):
    @classmethod
    def of(cls, page: Page[Contact]) -> ContactList:
        return cls.model_validate(paginated(page, [ContactOut.of(c) for c in page.items]))


class MessageList(Paginated[MessageOut]):
    @classmethod
    def of(cls, page: Page[Message]) -> MessageList:
        return cls.model_validate(paginated(page, [MessageOut.of(m) for m in page.items]))


class MergeRequest(ApiModel):
    contact_id: uuid.UUID = Field(
        description="The contact merged into the path's contact, which survives"
    )


class IdentityOut(OutModel):
    kind: str = Field(
        description="phone, email, whatsapp (wa_id), whatsapp_bsuid or telegram (user id)"
    )
    value: str
    created_at: Timestamp

    @classmethod
    def of(cls, identity: ContactIdentity) -> IdentityOut:
        return cls.model_validate(identity)


class IdentityList(OutModel):
    data: list[IdentityOut]


class MergeOut(OutModel):
    id: uuid.UUID
    merged_contact_id: uuid.UUID
    reason: str = Field(examples=["api", "attested: telegram shared phone"])
    created_at: Timestamp
    undone_at: Timestamp | None

    @classmethod
    def of(cls, merge: ContactMerge) -> MergeOut:
        return cls(
            id=merge.id,
            merged_contact_id=merge.merged_id,
            reason=merge.reason,
            created_at=merge.created_at,
            undone_at=merge.undone_at,
        )


class MergeList(OutModel):
    data: list[MergeOut]


class FieldError(BaseModel):
    field: str = Field(description="The bad field, query parameter or header, as sent")
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document, served as application/problem+json."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] = Field(default_factory=list)
    existing_contact_id: uuid.UUID | None = Field(
        default=None,
        alias="existingContactId",
        description="On a 409 for a duplicate phone or email: the contact that has it",
    )


class HealthOut(BaseModel):
    status: str = Field(examples=["ok"])
