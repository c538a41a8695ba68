"""The Contacts API routes, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from models.db import Database
from models.tenants import configure_tenant
from tests.api.conftest import CONTACTS, create, unique_email, unique_phone
from tests.factories import TenantFixture, make_contact

CONTACT_FIELDS = {
    "id",
    "name",
    "email",
    "phone",
    "status",
    "role",
    "channelPreference",
    "source",
    "referralSource",
    "language",
    "appliedAt",
    "createdAt",
    "updatedAt",
}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_create_returns_201_with_defaults(client: TestClient, tenant: TenantFixture) -> None:
    """A minimal create answers 201 with the bare contact and the documented defaults."""
    email = unique_email()
    response = client.post(
        CONTACTS, json={"name": "Jane Smith", "email": email}, headers=tenant.auth
    )
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == CONTACT_FIELDS
    assert body["status"] == "prospect"
    assert body["role"] == "prospect"
    assert body["source"] == "api"
    assert body["language"] == "en"
    assert body["appliedAt"] is None
    assert body["email"] == email
    assert response.headers["location"] == f"{CONTACTS}/{body['id']}"
    assert RFC3339_UTC.match(body["createdAt"])
    assert body["createdAt"] == body["updatedAt"]


def test_create_takes_every_documented_field(client: TestClient, tenant: TenantFixture) -> None:
    """Every field of the create table is stored as given (phone and email normalized)."""
    body = create(
        client,
        tenant,
        name="  Jane Smith ",
        email="Jane.Smith@Example.COM",
        phone="(212) 555-0142",
        status="scheduled",
        role="landlord",
        channelPreference="whatsapp",
        source="crm_import",
        referralSource="zillow",
        language="es",
    )
    assert body["name"] == "Jane Smith"
    assert body["email"] == "jane.smith@example.com"
    assert body["phone"] == "+12125550142"
    assert (body["status"], body["role"]) == ("scheduled", "landlord")
    assert body["channelPreference"] == "whatsapp"
    assert (body["source"], body["referralSource"], body["language"]) == (
        "crm_import",
        "zillow",
        "es",
    )


def test_create_reads_phone_in_tenant_region(client: TestClient, db: Database) -> None:
    """A national number is read in the tenant's region (GB here)."""
    from tests.factories import make_tenant

    british = make_tenant(db, region="GB")
    body = create(client, british, phone="020 7946 0018")
    assert body["phone"] == "+442079460018"


def test_create_with_status_applicant_sets_applied_at(
    client: TestClient, tenant: TenantFixture
) -> None:
    """Created straight as an applicant, the contact has appliedAt."""
    body = create(client, tenant, status="applicant")
    assert body["appliedAt"] is not None
    assert RFC3339_UTC.match(body["appliedAt"])


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({"email": "a@example.com"}, {"name"}),
        ({"name": "", "email": "a@example.com"}, {"name"}),
        ({"name": "   ", "email": "a@example.com"}, {"name"}),
        ({"name": "Jane"}, {"email", "phone"}),
        ({"name": "Jane", "email": "", "phone": ""}, {"email", "phone"}),
        ({"name": "Jane", "email": "not-an-email"}, {"email"}),
        ({"name": "Jane", "phone": "call me"}, {"phone"}),
        ({"name": "Jane", "phone": "12"}, {"phone"}),
        ({"name": "Jane", "email": "a@example.com", "status": "lead"}, {"status"}),
        ({"name": "Jane", "email": "a@example.com", "role": "owner"}, {"role"}),
        (
            {"name": "Jane", "email": "a@example.com", "channelPreference": "fax"},
            {"channelPreference"},
        ),
        ({"name": "Jane", "email": "a@example.com", "language": "english"}, {"language"}),
        ({"name": "Jane", "email": "a@example.com", "language": "xx"}, {"language"}),
        (
            {"name": "Jane", "email": "a@example.com", "appliedAt": "2026-01-01T00:00:00Z"},
            {"appliedAt"},
        ),
        ({"name": "Jane", "email": "a@example.com", "notes": "vip"}, {"notes"}),
        ({"name": 42, "email": "a@example.com"}, {"name"}),
        ({"name": "J" * 301, "email": "a@example.com"}, {"name"}),
        ({"name": "Jane\x00", "email": "a@example.com"}, {"name"}),
    ],
)
def test_create_rejects_bad_fields_with_400(
    client: TestClient, tenant: TenantFixture, payload: dict[str, object], fields: set[str]
) -> None:
    """An invalid body is a 400 problem whose errors name each bad field."""
    response = client.post(CONTACTS, json=payload, headers=tenant.auth)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 400
    assert {e["field"] for e in problem["errors"]} == fields
    assert all(e["message"] for e in problem["errors"])


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        (
            {"name": "", "email": "bad", "phone": "abc", "status": "nope", "language": "xx"},
            {"name", "email", "phone", "status", "language"},
        ),
        ({"email": "bad", "phone": "+1 999", "id": "x"}, {"name", "email", "phone", "id"}),
        ({"name": "   ", "email": "a@example.com", "role": "boss"}, {"name", "role"}),
        (
            {"name": "Jane", "email": "bad", "channelPreference": "fax"},
            {"email", "channelPreference"},
        ),
        ({}, {"name", "email", "phone"}),
        ({"name": "", "email": " ", "status": "nope"}, {"name", "email", "phone", "status"}),
    ],
)
def test_create_names_every_bad_field_at_once(
    client: TestClient, tenant: TenantFixture, payload: dict[str, object], fields: set[str]
) -> None:
    """A body with several bad fields is one 400 whose errors name each of them, not only the
    first kind of mistake found."""
    response = client.post(CONTACTS, json=payload, headers=tenant.auth)
    assert response.status_code == 400, response.text
    assert {e["field"] for e in response.json()["errors"]} == fields


def test_update_names_every_bad_field_at_once(client: TestClient, tenant: TenantFixture) -> None:
    """A PATCH with several bad values names each, and changes nothing."""
    created = create(client, tenant)
    payload = {"email": "bad", "phone": "no digits", "role": "boss", "language": "EN", "id": "x"}
    response = client.patch(f"{CONTACTS}/{created['id']}", json=payload, headers=tenant.auth)
    assert response.status_code == 400, response.text
    assert {e["field"] for e in response.json()["errors"]} == set(payload)
    assert client.get(f"{CONTACTS}/{created['id']}", headers=tenant.auth).json() == created


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '"a string"', ""])
def test_create_rejects_a_body_that_is_not_an_object(
    client: TestClient, tenant: TenantFixture, raw: str
) -> None:
    """A body that is not a JSON object is a 400, not a 422 or a 500."""
    response = client.post(
        CONTACTS, content=raw, headers={**tenant.auth, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["errors"]


def test_create_duplicate_phone_is_409_naming_existing(
    client: TestClient, tenant: TenantFixture
) -> None:
    """A second live contact with the same phone (any spelling) is a 409 naming the first."""
    first = create(client, tenant, phone="+1 212 555 0199")
    response = client.post(
        CONTACTS, json={"name": "Other", "phone": "(212) 555-0199"}, headers=tenant.auth
    )
    assert response.status_code == 409
    problem = response.json()
    assert problem["existingContactId"] == first["id"]
    assert first["id"] in problem["detail"]
    assert problem["errors"] == [{"field": "phone", "message": "already belongs to a contact"}]


def test_create_duplicate_email_is_409(client: TestClient, tenant: TenantFixture) -> None:
    """The same email in another case is the same email: 409."""
    email = unique_email()
    first = create(client, tenant, email=email)
    response = client.post(
        CONTACTS, json={"name": "Other", "email": email.upper()}, headers=tenant.auth
    )
    assert response.status_code == 409
    assert response.json()["existingContactId"] == first["id"]
    assert response.json()["errors"][0]["field"] == "email"


def test_get_returns_the_contact(client: TestClient, tenant: TenantFixture) -> None:
    """GET by id returns the same bare object the create returned."""
    created = create(client, tenant, phone=unique_phone())
    response = client.get(f"{CONTACTS}/{created['id']}", headers=tenant.auth)
    assert response.status_code == 200
    assert response.json() == created


@pytest.mark.parametrize("contact_id", ["not-a-uuid", "123", str(uuid.uuid4())])
def test_get_unknown_or_malformed_id_is_404(
    client: TestClient, tenant: TenantFixture, contact_id: str
) -> None:
    """A malformed or unknown id is a 404 problem."""
    response = client.get(f"{CONTACTS}/{contact_id}", headers=tenant.auth)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404


def test_contact_never_exposes_notes_or_deleted_at(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """Internal notes and deletedAt stay out of every contact representation."""
    contact_id = make_contact(db, tenant.id, notes="pays late")
    got = client.get(f"{CONTACTS}/{contact_id}", headers=tenant.auth).json()
    listed = client.get(CONTACTS, headers=tenant.auth).json()["data"][0]
    for body in (got, listed):
        assert set(body) == CONTACT_FIELDS
        assert "pays late" not in str(body)


def test_update_changes_only_the_fields_sent(client: TestClient, tenant: TenantFixture) -> None:
    """PATCH changes what is sent, keeps the rest, and bumps updatedAt."""
    created = create(client, tenant, phone=unique_phone(), referralSource="zillow")
    response = client.patch(
        f"{CONTACTS}/{created['id']}",
        json={"status": "scheduled", "channelPreference": "email"},
        headers=tenant.auth,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "scheduled"
    assert body["channelPreference"] == "email"
    assert body["referralSource"] == "zillow"
    assert body["name"] == created["name"]
    assert body["createdAt"] == created["createdAt"]
    assert body["updatedAt"] > created["updatedAt"]
    assert client.get(f"{CONTACTS}/{created['id']}", headers=tenant.auth).json() == body


def test_update_every_updatable_field(client: TestClient, tenant: TenantFixture) -> None:
    """Each field of the doc's updatable table can be changed."""
    created = create(client, tenant)
    changes = {
        "name": "Janet Smith",
        "email": "JANET@example.org",
        "phone": "212-555-0123",
        "status": "renter",
        "role": "tenant",
        "channelPreference": "telegram",
        "source": "walk_in",
        "referralSource": "friend",
        "language": "fr",
    }
    response = client.patch(f"{CONTACTS}/{created['id']}", json=changes, headers=tenant.auth)
    assert response.status_code == 200
    body = response.json()
    assert body["email"] == "janet@example.org"
    assert body["phone"] == "+12125550123"
    for field in (
        "name",
        "status",
        "role",
        "channelPreference",
        "source",
        "referralSource",
        "language",
    ):
        assert body[field] == changes[field]


def test_applied_at_follows_status(client: TestClient, tenant: TenantFixture) -> None:
    """appliedAt is set when status becomes applicant, kept while it stays, cleared after."""
    url = f"{CONTACTS}/{create(client, tenant)['id']}"
    applied = client.patch(url, json={"status": "applicant"}, headers=tenant.auth).json()
    assert applied["appliedAt"] is not None
    again = client.patch(url, json={"status": "applicant", "name": "J"}, headers=tenant.auth).json()
    assert again["appliedAt"] == applied["appliedAt"]
    moved = client.patch(url, json={"status": "renter"}, headers=tenant.auth).json()
    assert moved["appliedAt"] is None


@pytest.mark.parametrize(
    "payload",
    [
        {"id": str(uuid.uuid4())},
        {"appliedAt": "2026-01-01T00:00:00Z"},
        {"createdAt": "2026-01-01T00:00:00Z"},
        {"updatedAt": "2026-01-01T00:00:00Z"},
        {"deletedAt": None},
        {"notes": "x"},
        {"favouriteColour": "blue"},
    ],
)
def test_update_read_only_or_unknown_field_is_400(
    client: TestClient, tenant: TenantFixture, payload: dict[str, object]
) -> None:
    """Read-only and unknown fields are refused by name, and nothing changes."""
    created = create(client, tenant)
    response = client.patch(f"{CONTACTS}/{created['id']}", json=payload, headers=tenant.auth)
    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == list(payload)
    assert client.get(f"{CONTACTS}/{created['id']}", headers=tenant.auth).json() == created


@pytest.mark.parametrize(
    "payload",
    [
        {"name": ""},
        {"name": None},
        {"status": None},
        {"status": "gone"},
        {"language": "eng"},
        {"source": None},
        {"email": "nope"},
    ],
)
def test_update_invalid_value_is_400(
    client: TestClient, tenant: TenantFixture, payload: dict[str, object]
) -> None:
    """An invalid or forbidden-null value is a 400 naming the field."""
    created = create(client, tenant)
    response = client.patch(f"{CONTACTS}/{created['id']}", json=payload, headers=tenant.auth)
    assert response.status_code == 400, response.text
    assert [e["field"] for e in response.json()["errors"]] == list(payload)


def test_update_must_keep_email_or_phone(client: TestClient, tenant: TenantFixture) -> None:
    """Clearing the only identity is a 400; clearing one of two is fine."""
    created = create(client, tenant, email=unique_email(), phone=unique_phone())
    url = f"{CONTACTS}/{created['id']}"
    cleared = client.patch(url, json={"email": None}, headers=tenant.auth)
    assert cleared.status_code == 200
    assert cleared.json()["email"] is None
    response = client.patch(url, json={"phone": None}, headers=tenant.auth)
    assert response.status_code == 400
    assert {e["field"] for e in response.json()["errors"]} == {"email", "phone"}


def test_update_of_a_contact_without_phone_or_email(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """A contact the worker made from a Telegram id alone can still have its status changed."""
    contact_id = make_contact(db, tenant.id, name="@janes", email=None, source="telegram")
    response = client.patch(
        f"{CONTACTS}/{contact_id}", json={"status": "scheduled"}, headers=tenant.auth
    )
    assert response.status_code == 200
    assert response.json()["status"] == "scheduled"
    assert response.json()["source"] == "telegram"


def test_update_to_a_taken_phone_is_409(client: TestClient, tenant: TenantFixture) -> None:
    """Moving a contact onto another live contact's phone is a 409 naming that contact."""
    taken = create(client, tenant, phone=unique_phone())
    mover = create(client, tenant)
    response = client.patch(
        f"{CONTACTS}/{mover['id']}", json={"phone": taken["phone"]}, headers=tenant.auth
    )
    assert response.status_code == 409
    assert response.json()["existingContactId"] == taken["id"]


def test_update_keeping_its_own_phone_is_fine(client: TestClient, tenant: TenantFixture) -> None:
    """Sending a contact's own phone back is not a duplicate of itself."""
    created = create(client, tenant, phone=unique_phone())
    response = client.patch(
        f"{CONTACTS}/{created['id']}", json={"phone": created["phone"]}, headers=tenant.auth
    )
    assert response.status_code == 200


def test_update_unknown_contact_is_404(client: TestClient, tenant: TenantFixture) -> None:
    """PATCH on an id that names nothing is a 404."""
    response = client.patch(f"{CONTACTS}/{uuid.uuid4()}", json={"name": "x"}, headers=tenant.auth)
    assert response.status_code == 404


def test_delete_is_soft_and_final(client: TestClient, tenant: TenantFixture) -> None:
    """DELETE answers 204 once, then the contact is 404 everywhere and absent from lists."""
    created = create(client, tenant)
    url = f"{CONTACTS}/{created['id']}"
    response = client.delete(url, headers=tenant.auth)
    assert response.status_code == 204
    assert response.content == b""
    assert client.get(url, headers=tenant.auth).status_code == 404
    assert client.delete(url, headers=tenant.auth).status_code == 404
    assert client.patch(url, json={"name": "x"}, headers=tenant.auth).status_code == 404
    assert client.get(f"{url}/messages", headers=tenant.auth).status_code == 404
    listed = client.get(CONTACTS, headers=tenant.auth).json()
    assert listed["pagination"]["total"] == 0


def test_delete_keeps_the_row(client: TestClient, db: Database, tenant: TenantFixture) -> None:
    """The deleted contact is retained with deleted_at set, for compliance."""
    from models.schema import Contact

    created = create(client, tenant)
    client.delete(f"{CONTACTS}/{created['id']}", headers=tenant.auth)
    with db.sessions() as session:
        row = session.get(Contact, uuid.UUID(created["id"]))
        assert row is not None
        assert row.deleted_at is not None


def test_deleted_contacts_phone_and_email_are_free(
    client: TestClient, tenant: TenantFixture
) -> None:
    """After a delete, a new contact may take the same phone and email."""
    phone, email = unique_phone(), unique_email()
    first = create(client, tenant, phone=phone, email=email)
    client.delete(f"{CONTACTS}/{first['id']}", headers=tenant.auth)
    second = create(client, tenant, phone=phone, email=email)
    assert second["id"] != first["id"]


def test_list_shape_and_defaults(client: TestClient, tenant: TenantFixture) -> None:
    """The list has data and pagination{page, limit, total, totalPages}, 20 a page by default."""
    for _ in range(3):
        create(client, tenant)
    response = client.get(CONTACTS, headers=tenant.auth)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"data", "pagination"}
    assert body["pagination"] == {"page": 1, "limit": 20, "total": 3, "totalPages": 1}
    assert all(set(item) == CONTACT_FIELDS for item in body["data"])


def test_list_is_newest_first_with_id_tiebreak(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """Newest createdAt first; equal timestamps fall back to id, descending."""
    base = datetime(2026, 2, 10, 14, 30, tzinfo=UTC)
    older = make_contact(db, tenant.id, created_at=base, updated_at=base)
    same = sorted(
        (
            make_contact(
                db,
                tenant.id,
                created_at=base + timedelta(hours=1),
                updated_at=base + timedelta(hours=1),
            )
            for _ in range(3)
        ),
        reverse=True,
    )
    newest = make_contact(
        db, tenant.id, created_at=base + timedelta(days=1), updated_at=base + timedelta(days=1)
    )
    ids = [item["id"] for item in client.get(CONTACTS, headers=tenant.auth).json()["data"]]
    assert ids == [str(i) for i in [newest, *same, older]]


def test_list_paginates(client: TestClient, tenant: TenantFixture) -> None:
    """Pages split the list without overlap; totalPages rounds up."""
    for _ in range(5):
        create(client, tenant)
    first = client.get(CONTACTS, params={"limit": 2}, headers=tenant.auth).json()
    third = client.get(CONTACTS, params={"limit": 2, "page": 3}, headers=tenant.auth).json()
    assert first["pagination"] == {"page": 1, "limit": 2, "total": 5, "totalPages": 3}
    assert len(first["data"]) == 2
    assert len(third["data"]) == 1
    assert not {c["id"] for c in first["data"]} & {c["id"] for c in third["data"]}


def test_list_page_past_the_end_is_empty_200(client: TestClient, tenant: TenantFixture) -> None:
    """A page past the end is a 200 with empty data, even an absurdly large one."""
    create(client, tenant)
    for page in (2, 10**30):
        response = client.get(CONTACTS, params={"page": page}, headers=tenant.auth)
        assert response.status_code == 200
        assert response.json()["data"] == []
        assert response.json()["pagination"]["total"] == 1


def test_list_clamps_limit_to_the_plan_maximum(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """A limit above the tenant's max_page_size is clamped and pagination shows it."""
    response = client.get(CONTACTS, params={"limit": 1000}, headers=tenant.auth)
    assert response.status_code == 200
    assert response.json()["pagination"]["limit"] == 100
    with db.unit_of_work() as session:
        configure_tenant(session, tenant_id=tenant.id, values={"max_page_size": "3"})
    for _ in range(4):
        create(client, tenant)
    body = client.get(CONTACTS, params={"limit": 50}, headers=tenant.auth).json()
    assert body["pagination"] == {"page": 1, "limit": 3, "total": 4, "totalPages": 2}
    assert len(body["data"]) == 3


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": -1}, "limit"),
        ({"page": 0}, "page"),
        ({"page": "two"}, "page"),
        ({"limit": "1.5"}, "limit"),
        ({"status": "lead"}, "status"),
        ({"role": "owner"}, "role"),
        ({"channel": "fax"}, "channel"),
        ({"stauts": "renter"}, "stauts"),
    ],
)
def test_list_bad_query_is_400(
    client: TestClient, tenant: TenantFixture, params: dict[str, object], field: str
) -> None:
    """Out-of-range, non-numeric, unknown-enum or unknown parameters: 400 naming the parameter."""
    response = client.get(CONTACTS, params=params, headers=tenant.auth)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == [field]


def test_list_filters_by_status_role_and_channel(client: TestClient, tenant: TenantFixture) -> None:
    """status, role and channel each narrow the list, and combine."""
    a = create(client, tenant, status="scheduled", role="landlord", channelPreference="sms")
    b = create(client, tenant, status="scheduled", role="vendor", channelPreference="email")
    create(client, tenant, status="renter", role="landlord")

    def ids(**params: str) -> set[str]:
        data = client.get(CONTACTS, params=params, headers=tenant.auth).json()["data"]
        return {c["id"] for c in data}

    assert ids(status="scheduled") == {a["id"], b["id"]}
    assert ids(role="vendor") == {b["id"]}
    assert ids(channel="sms") == {a["id"]}
    assert ids(status="scheduled", role="landlord") == {a["id"]}
    assert ids(status="applicant") == set()


def test_search_matches_name_email_and_phone(client: TestClient, tenant: TenantFixture) -> None:
    """search is a case-insensitive substring of name, email or phone."""
    jane = create(client, tenant, name="Jane Smith", email="js@alpha.example")
    bob = create(client, tenant, name="Bob Jones", email="BOB@beta.example", phone="+12125557788")

    def ids(term: str) -> set[str]:
        data = client.get(CONTACTS, params={"search": term}, headers=tenant.auth).json()["data"]
        return {c["id"] for c in data}

    assert ids("smi") == {jane["id"]}
    assert ids("SMITH") == {jane["id"]}
    assert ids("Beta.Example") == {bob["id"]}
    assert ids("+1212555") == {bob["id"]}
    assert ids("example") == {jane["id"], bob["id"]}
    assert ids("nobody") == set()


def test_search_folds_case_beyond_ascii(client: TestClient, tenant: TenantFixture) -> None:
    """search ignores case in any script, on SQLite as on PostgreSQL: 'élodie' finds 'Élodie'."""
    elodie = create(client, tenant, name="Élodie Ünal", email="elodie@example.com")
    create(client, tenant, name="Eloise Unger", email="eloise@example.com")
    for term in ("élodie", "ÉLODIE", "ünal", "ÜNAL", "Élodie Ü"):
        data = client.get(CONTACTS, params={"search": term}, headers=tenant.auth).json()["data"]
        assert [c["id"] for c in data] == [elodie["id"]], term


def test_search_matches_phone_digits(client: TestClient, tenant: TenantFixture) -> None:
    """A phone-like search matches on digits: '555-123' finds +15551234…."""
    found = create(client, tenant, phone="+15551234567")
    create(client, tenant, phone="+12125550100")
    for term in ("555-123", "(555) 123", "555.123.4567", "1 555 123"):
        data = client.get(CONTACTS, params={"search": term}, headers=tenant.auth).json()["data"]
        assert [c["id"] for c in data] == [found["id"]], term


def test_search_treats_wildcards_literally(client: TestClient, tenant: TenantFixture) -> None:
    """% and _ in a search are characters, not LIKE wildcards."""
    create(client, tenant, name="Plain Name")
    literal = create(client, tenant, name="100% sure_thing")
    for term in ("%", "_", "0% s"):
        data = client.get(CONTACTS, params={"search": term}, headers=tenant.auth).json()["data"]
        assert [c["id"] for c in data] == [literal["id"]], term


def test_search_total_counts_matches(client: TestClient, tenant: TenantFixture) -> None:
    """pagination.total counts the matching contacts, not all of them."""
    create(client, tenant, name="Alice Match")
    create(client, tenant, name="Alice Match Two")
    create(client, tenant, name="Other")
    body = client.get(CONTACTS, params={"search": "match", "limit": 1}, headers=tenant.auth).json()
    assert body["pagination"] == {"page": 1, "limit": 1, "total": 2, "totalPages": 2}


def test_list_repeated_query_parameter_is_400(client: TestClient, tenant: TenantFixture) -> None:
    """A parameter given twice is ambiguous: 400 naming it, rather than picking one."""
    response = client.get(f"{CONTACTS}?limit=1&limit=50", headers=tenant.auth)
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "limit", "message": "is given more than once"}]
