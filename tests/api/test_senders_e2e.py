"""The 2026 senders end to end (issue 9): recorded provider payloads, signed as their providers
sign them, posted to `intake serve` and ingested by an `intake worker` subprocess on PostgreSQL
and Redis; what became of them is read back through the Contacts API only.

One served app and one worker serve the whole module; every test makes its own tenant. Waits are
on what the Contacts API shows, with a deadline. A message that makes no contact is posted before
one that does, so that waiting for the second shows the first was already dealt with: the webhook
answers only after it stored (or ignored) its request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.db import Database
from tests.api.webhook_payloads import (
    SECRETS,
    mailgun_form,
    meta_whatsapp,
    raw_email,
    signed,
    telegram_update,
    twilio_sms,
)
from tests.factories import TenantFixture, make_tenant
from tests.support import ServeProcess, Workers, intake_env, wait_for

pytestmark = pytest.mark.e2e

CONTACTS = "/api/v1/contacts"
PAYLOADS = Path(__file__).parent.parent / "payloads"
WAIT_SECONDS = 20.0
MAILGUN_SIGNATURE = ("timestamp", "token", "signature")

# The people of the recorded payloads.
BSUID = "US.13491208655302741918"
NEW_BSUID = "US.99887766554433221100"
PHONE, NEW_PHONE = "+16505551234", "+12195555358"
RCS_PHONE = "+14155552671"
ANA_TELEGRAM_ID = "583920114"


@pytest.fixture(scope="module")
def served(
    postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServeProcess, Workers]]:
    """`intake serve` and one `intake worker`, both on PostgreSQL with a Redis broker and locks."""
    env = intake_env(postgres_url, redis_url, redis_url)
    cwd = tmp_path_factory.mktemp("senders-e2e")
    server, workers = ServeProcess(env, cwd), Workers(env, cwd)
    try:
        workers.start(1)
        server.wait_ready()
        yield server, workers
    finally:
        server.stop()
        workers.kill_all()


@pytest.fixture
def http(served: tuple[ServeProcess, Workers]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0].url, timeout=10) as client:
        yield client


@pytest.fixture
def worker(served: tuple[ServeProcess, Workers]) -> Workers:
    return served[1]


@pytest.fixture
def tenant(postgres_db: Database) -> TenantFixture:
    return make_tenant(postgres_db, **SECRETS)


def recorded(route: str, name: str) -> Any:
    """A recorded payload of tests/payloads/ as `intake.signing.sign_request` takes it."""
    raw = (PAYLOADS / route / name).read_bytes()
    if route in ("whatsapp", "telegram"):
        return json.loads(raw)
    if route in ("twilio", "email/mailgun"):
        fields = dict(parse_qsl(raw.decode("ascii"), keep_blank_values=True))
        # Mailgun's signature is made afresh at sending: a recorded one is stale (15 minutes).
        return {k: v for k, v in fields.items() if k not in MAILGUN_SIGNATURE}
    return raw


def deliver(http: httpx.Client, tenant: TenantFixture, route: str, payload: Any) -> None:
    """POST `payload` signed for the tenant as its provider signs it; it must be a 200."""
    request = signed(route, payload, tenant_id=tenant.id, base_url=str(http.base_url).rstrip("/"))
    response = http.post(request.path, content=request.body, headers=request.headers)
    assert response.status_code == 200, response.text


def get(http: httpx.Client, tenant: TenantFixture, path: str) -> Any:
    response = http.get(path, headers=tenant.auth)
    assert response.status_code == 200, response.text
    return response.json()


def contacts(http: httpx.Client, tenant: TenantFixture) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = get(http, tenant, CONTACTS)["data"]
    return data


def messages_of(http: httpx.Client, tenant: TenantFixture, contact_id: str) -> list[str]:
    """The provider message ids of the contact's recorded messages, newest first."""
    page = get(http, tenant, f"{CONTACTS}/{contact_id}/messages")["data"]
    return [m["providerMessageId"] for m in page]


def identities_of(
    http: httpx.Client, tenant: TenantFixture, contact_id: str
) -> set[tuple[str, str]]:
    data = get(http, tenant, f"{CONTACTS}/{contact_id}/identities")["data"]
    return {(i["kind"], i["value"]) for i in data}


def wait_for_messages(
    http: httpx.Client, tenant: TenantFixture, worker: Workers, *provider_ids: str
) -> list[dict[str, Any]]:
    """The tenant's contacts, once every message of `provider_ids` belongs to one of them."""

    def recorded_ids() -> set[str]:
        return {
            found for c in contacts(http, tenant) for found in messages_of(http, tenant, c["id"])
        }

    wait_for(
        lambda: set(provider_ids) <= recorded_ids(),
        timeout=WAIT_SECONDS,
        what=f"messages {provider_ids} of tenant {tenant.id}\n{worker.logs()}",
    )
    # Read again: a contact may have been listed just before the drain that recorded the last
    # message (and updated the contact in the same transaction) committed.
    return contacts(http, tenant)


def wamid(payload: dict[str, Any]) -> str:
    found: str = payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    return found


def ignored_count(http: httpx.Client, channel: str, reason: str) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "intake_webhooks_ignored_total" and sample.labels == {
                "channel": channel,
                "reason": reason,
            }:
                return float(sample.value)
    return 0.0


# Meta's own webhook, and WhatsApp through Twilio (`From=whatsapp:<BSUID>`, `ExternalUserId`).
BSUID_THEN_PHONE = [
    pytest.param("whatsapp", "bsuid_only.json", "bsuid_with_wa_id.json", id="meta"),
    pytest.param("twilio", "whatsapp_bsuid.form", "whatsapp_bsuid_with_phone.form", id="twilio"),
]


def provider_id(route: str, payload: Any) -> str:
    """The provider's message id of a recorded WhatsApp message, Meta's or Twilio's."""
    return payload["MessageSid"] if route == "twilio" else wamid(payload)


@pytest.mark.parametrize(("route", "bsuid_only", "with_phone"), BSUID_THEN_PHONE)
def test_bsuid_only_sender_then_their_phone_is_one_contact_with_both_identities(
    http: httpx.Client,
    tenant: TenantFixture,
    worker: Workers,
    route: str,
    bsuid_only: str,
    with_phone: str,
) -> None:
    """A BSUID-only WhatsApp sender is a contact; later with wa_id and BSUID, the same one."""
    first, second = recorded(route, bsuid_only), recorded(route, with_phone)
    deliver(http, tenant, route, first)
    deliver(http, tenant, route, first)  # the provider's redelivery changes nothing
    [contact] = wait_for_messages(http, tenant, worker, provider_id(route, first))
    assert {k: contact[k] for k in ("name", "phone", "email", "source", "channelPreference")} == {
        "name": "Sheena Nelson",
        "phone": None,
        "email": None,
        "source": "whatsapp",
        "channelPreference": "whatsapp",
    }
    assert identities_of(http, tenant, contact["id"]) == {("whatsapp_bsuid", BSUID)}

    deliver(http, tenant, route, second)
    [same] = wait_for_messages(http, tenant, worker, provider_id(route, second))
    assert (same["id"], same["phone"], same["source"]) == (contact["id"], PHONE, "whatsapp")
    assert identities_of(http, tenant, same["id"]) == {
        ("whatsapp_bsuid", BSUID),
        ("whatsapp", PHONE.lstrip("+")),
        ("phone", PHONE),
    }
    assert messages_of(http, tenant, same["id"]) == [
        provider_id(route, second),
        provider_id(route, first),
    ]


def test_bsuid_only_sender_named_by_username_when_no_profile_name(
    http: httpx.Client, tenant: TenantFixture, worker: Workers
) -> None:
    """Without a profile name a BSUID-only sender is @username, until they give their name."""
    payload = recorded("whatsapp", "bsuid_only.json")
    del payload["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"]
    deliver(http, tenant, "whatsapp", payload)
    [contact] = wait_for_messages(http, tenant, worker, wamid(payload))
    assert (contact["name"], contact["phone"], contact["source"]) == ("@sheena.n", None, "whatsapp")
    assert identities_of(http, tenant, contact["id"]) == {("whatsapp_bsuid", BSUID)}
    # The username only stood in for a name: the profile name of a later message replaces it.
    later = recorded("whatsapp", "bsuid_with_wa_id.json")
    deliver(http, tenant, "whatsapp", later)
    [same] = wait_for_messages(http, tenant, worker, wamid(later))
    assert (same["id"], same["name"], same["phone"]) == (contact["id"], "Sheena Nelson", PHONE)


def test_phone_shared_on_request_joins_the_bsuid_contact(
    http: httpx.Client, tenant: TenantFixture, worker: Workers
) -> None:
    """A phone the BSUID-only sender shares on request (contact_request) is that same contact's."""
    first, shared = (
        recorded("whatsapp", "bsuid_only.json"),
        recorded("whatsapp", "contact_request.json"),
    )
    deliver(http, tenant, "whatsapp", first)
    [contact] = wait_for_messages(http, tenant, worker, wamid(first))
    deliver(http, tenant, "whatsapp", shared)
    [same] = wait_for_messages(http, tenant, worker, wamid(shared))
    assert (same["id"], same["name"], same["phone"]) == (contact["id"], "Sheena Nelson", PHONE)
    # The card's phone is the sender's own (origin contact_request), attested by Meta.
    assert identities_of(http, tenant, same["id"]) == {("whatsapp_bsuid", BSUID), ("phone", PHONE)}
    assert messages_of(http, tenant, same["id"]) == [wamid(shared), wamid(first)]


def test_telegram_business_customer_is_a_contact_and_the_owners_replies_are_not(
    http: httpx.Client, tenant: TenantFixture, worker: Workers
) -> None:
    """A business_message customer becomes a contact; the owner's and its bot's replies do not."""
    before = ignored_count(http, "telegram", "business owner message")
    deliver(http, tenant, "telegram", recorded("telegram", "business_owner_reply.json"))
    deliver(http, tenant, "telegram", recorded("telegram", "business_bot_reply.json"))
    customer = recorded("telegram", "business_message.json")
    deliver(http, tenant, "telegram", customer)
    sent = customer["business_message"]
    message_id = (
        f"business:{sent['business_connection_id']}:{sent['chat']['id']}:{sent['message_id']}"
    )
    [contact] = wait_for_messages(http, tenant, worker, message_id)
    assert {k: contact[k] for k in ("name", "phone", "source", "language")} == {
        "name": "Ana Souza",
        "phone": None,
        "source": "telegram",
        "language": "pt",
    }
    assert identities_of(http, tenant, contact["id"]) == {("telegram", ANA_TELEGRAM_ID)}
    assert messages_of(http, tenant, contact["id"]) == [message_id]
    assert ignored_count(http, "telegram", "business owner message") == before + 2


@pytest.mark.parametrize("rcs_first", [True, False], ids=["rcs-then-sms", "sms-then-rcs"])
def test_rcs_and_sms_from_one_number_are_one_contact(
    http: httpx.Client, tenant: TenantFixture, worker: Workers, rcs_first: bool
) -> None:
    """RCS and SMS from one number, either first: one contact of source sms, both its messages."""
    rcs, sms = recorded("twilio", "rcs_text.form"), recorded("twilio", "sms_text.form")
    assert (rcs["From"], sms["From"]) == (f"rcs:{RCS_PHONE}", RCS_PHONE)  # one person's number
    first, second = (rcs, sms) if rcs_first else (sms, rcs)
    deliver(http, tenant, "twilio", first)
    [contact] = wait_for_messages(http, tenant, worker, first["MessageSid"])
    assert {k: contact[k] for k in ("name", "phone", "source", "channelPreference")} == {
        "name": RCS_PHONE,  # neither SMS nor RCS names its sender: the phone stands in
        "phone": RCS_PHONE,
        "source": "sms",
        "channelPreference": "sms",
    }
    deliver(http, tenant, "twilio", second)
    [same] = wait_for_messages(http, tenant, worker, second["MessageSid"])
    assert (same["id"], same["phone"], same["source"]) == (contact["id"], RCS_PHONE, "sms")
    assert identities_of(http, tenant, same["id"]) == {("phone", RCS_PHONE)}
    page = get(http, tenant, f"{CONTACTS}/{same['id']}/messages")["data"]
    assert [(m["providerMessageId"], m["channel"]) for m in page] == [
        (second["MessageSid"], "sms"),
        (first["MessageSid"], "sms"),
    ]


def test_utf8_from_gives_the_lowercased_address_and_display_name(
    http: httpx.Client, tenant: TenantFixture, worker: Workers
) -> None:
    """A raw email with a UTF-8 From (RFC 6532): its lowercased address and its display name."""
    deliver(http, tenant, "email/raw", recorded("email/raw", "utf8_headers.eml"))
    [contact] = wait_for_messages(http, tenant, worker, "20251126124402.4711@bücher.example")
    assert {k: contact[k] for k in ("name", "email", "phone", "source")} == {
        "name": "Jörg Müller",
        "email": "jörg.müller@bücher.example",
        "phone": None,
        "source": "email",
    }
    assert identities_of(http, tenant, contact["id"]) == {("email", "jörg.müller@bücher.example")}


# Bounces from the null reverse path (RFC 5321 4.5.5), with the reason each is counted under.
BOUNCES = [
    pytest.param("email/raw", "null_from.eml", "null sender", id="raw-null-from"),
    pytest.param("email/raw", "dsn_bounce.eml", "delivery report", id="raw-dsn"),
    pytest.param("email/mailgun", "bounce.txt", "delivery report", id="mailgun-dsn"),
]


@pytest.mark.parametrize(("route", "name", "reason"), BOUNCES)
def test_bounce_with_a_null_sender_is_a_200_and_makes_nothing(
    http: httpx.Client,
    tenant: TenantFixture,
    worker: Workers,
    route: str,
    name: str,
    reason: str,
) -> None:
    """A bounce from the null sender (<>) answers 200, is counted, and makes no contact."""
    before = ignored_count(http, "email", reason)
    deliver(http, tenant, route, recorded(route, name))
    assert ignored_count(http, "email", reason) == before + 1
    # A person's mail after it: once that is a contact, the bounce has had every chance.
    person = raw_email(address="dana@example.com", name="Dana Whitfield", message_id="<after@x>")
    deliver(http, tenant, "email/raw", person)
    [contact] = wait_for_messages(http, tenant, worker, "after@x")
    assert (contact["email"], contact["name"]) == ("dana@example.com", "Dana Whitfield")
    assert messages_of(http, tenant, contact["id"]) == ["after@x"]


def test_changed_number_keeps_one_contact_and_the_old_number_is_a_new_one_later(
    http: httpx.Client, tenant: TenantFixture, worker: Workers
) -> None:
    """user_changed_number: one contact with the new phone primary; the old number later is new."""
    first = recorded("whatsapp", "bsuid_with_wa_id.json")
    deliver(http, tenant, "whatsapp", first)
    [contact] = wait_for_messages(http, tenant, worker, wamid(first))
    changed = recorded("whatsapp", "changed_number.json")
    deliver(http, tenant, "whatsapp", changed)
    # The system message says nothing to wait on but the contact's new phone.
    wait_for(
        lambda: [c["phone"] for c in contacts(http, tenant)] == [NEW_PHONE],
        timeout=WAIT_SECONDS,
        what=f"the new phone on the contact\n{worker.logs()}",
    )
    [same] = contacts(http, tenant)
    assert (same["id"], same["name"], same["source"]) == (
        contact["id"],
        "Sheena Nelson",
        "whatsapp",
    )
    # The old number and the old business-scoped id are retired: neither finds this contact.
    assert identities_of(http, tenant, same["id"]) == {
        ("phone", NEW_PHONE),
        ("whatsapp", NEW_PHONE.lstrip("+")),
        ("whatsapp_bsuid", NEW_BSUID),
    }
    # The system message is kept with the history it belongs to.
    assert messages_of(http, tenant, same["id"]) == [wamid(changed), wamid(first)]

    # The person writing from their new number is still this contact.
    again = meta_whatsapp(phone=NEW_PHONE, name="Sheena Nelson", text="New number, same me")
    deliver(http, tenant, "whatsapp", again)
    [still] = wait_for_messages(http, tenant, worker, wamid(again))
    assert (still["id"], still["phone"]) == (contact["id"], NEW_PHONE)

    # Whoever writes from the old number now (it may be recycled) is somebody else.
    later = meta_whatsapp(phone=PHONE, name="Marcus Lee", text="Saw your listing")
    deliver(http, tenant, "whatsapp", later)
    found = wait_for_messages(http, tenant, worker, wamid(later))
    assert len(found) == 2
    newer = next(c for c in found if c["id"] != contact["id"])
    assert (newer["name"], newer["phone"], newer["source"]) == ("Marcus Lee", PHONE, "whatsapp")
    assert messages_of(http, tenant, newer["id"]) == [wamid(later)]
    assert {c["id"]: c["phone"] for c in found} == {contact["id"]: NEW_PHONE, newer["id"]: PHONE}
    assert identities_of(http, tenant, newer["id"]) == {
        ("phone", PHONE),
        ("whatsapp", PHONE.lstrip("+")),
    }


def test_another_tenant_cannot_read_these_contacts(
    http: httpx.Client, tenant: TenantFixture, postgres_db: Database, worker: Workers
) -> None:
    """A BSUID contact of one tenant is a 404 on every contact route for another tenant."""
    payload = recorded("whatsapp", "bsuid_only.json")
    deliver(http, tenant, "whatsapp", payload)
    [contact] = wait_for_messages(http, tenant, worker, wamid(payload))
    other = make_tenant(postgres_db, **SECRETS)
    for suffix in ("", "/identities", "/messages"):
        response = http.get(f"{CONTACTS}/{contact['id']}{suffix}", headers=other.auth)
        assert response.status_code == 404, (suffix, response.text)
    assert contacts(http, other) == []


# The two attested links from the person: wa_id with BSUID, and a phone shared on request.
LINKS = [
    pytest.param("bsuid_with_wa_id.json", {("whatsapp", PHONE.lstrip("+"))}, id="wa_id-and-bsuid"),
    pytest.param("contact_request.json", set(), id="contact-request"),
]


@pytest.mark.parametrize(("link", "more"), LINKS)
def test_bsuid_contact_and_sms_contact_of_one_phone_merge_when_whatsapp_links_them(
    http: httpx.Client,
    tenant: TenantFixture,
    worker: Workers,
    link: str,
    more: set[tuple[str, str]],
) -> None:
    """An SMS contact and a BSUID-only one, joined by an attested link: the older survives."""
    sms = twilio_sms(phone=PHONE, body="Is the 2-bed still free?")
    deliver(http, tenant, "twilio", sms)
    [by_phone] = wait_for_messages(http, tenant, worker, sms["MessageSid"])
    bsuid_only = recorded("whatsapp", "bsuid_only.json")
    deliver(http, tenant, "whatsapp", bsuid_only)
    found = wait_for_messages(http, tenant, worker, wamid(bsuid_only))
    [by_bsuid] = [c for c in found if c["id"] != by_phone["id"]]
    linking = recorded("whatsapp", link)
    deliver(http, tenant, "whatsapp", linking)
    wait_for(
        lambda: len(contacts(http, tenant)) == 1,
        timeout=WAIT_SECONDS,
        what=f"the two contacts merged\n{worker.logs()}",
    )
    [survivor] = wait_for_messages(http, tenant, worker, wamid(linking))
    assert survivor["id"] == by_phone["id"]  # the older one
    assert (survivor["phone"], survivor["source"], survivor["name"]) == (
        PHONE,
        "sms",
        "Sheena Nelson",
    )
    assert identities_of(http, tenant, survivor["id"]) == {
        ("phone", PHONE),
        ("whatsapp_bsuid", BSUID),
        *more,
    }
    # Newest first by the provider's time: Twilio gives none (now), Meta's are from April 2026.
    assert messages_of(http, tenant, survivor["id"]) == [
        sms["MessageSid"],
        wamid(linking),
        wamid(bsuid_only),
    ]
    # The merged-away id answers with its survivor.
    merged = get(http, tenant, f"{CONTACTS}/{by_bsuid['id']}")
    assert merged["id"] == survivor["id"]


def test_telegram_business_customer_writing_to_the_bot_directly_is_the_same_contact(
    http: httpx.Client, tenant: TenantFixture, worker: Workers
) -> None:
    """A business customer's edit is not a message; their own message to the bot: same contact."""
    edits = ignored_count(http, "telegram", "edited message")
    customer = recorded("telegram", "business_message.json")
    deliver(http, tenant, "telegram", customer)
    deliver(http, tenant, "telegram", customer)  # Telegram's redelivery changes nothing
    deliver(http, tenant, "telegram", recorded("telegram", "edited_business_message.json"))
    sent = customer["business_message"]
    business_id = (
        f"business:{sent['business_connection_id']}:{sent['chat']['id']}:{sent['message_id']}"
    )
    [contact] = wait_for_messages(http, tenant, worker, business_id)
    assert ignored_count(http, "telegram", "edited message") == edits + 1
    direct = telegram_update(
        user_id=int(ANA_TELEGRAM_ID), first_name="Ana", last_name="Souza", username="ana_souza"
    )
    deliver(http, tenant, "telegram", direct)
    direct_id = f"{ANA_TELEGRAM_ID}:{direct['message']['message_id']}"
    [same] = wait_for_messages(http, tenant, worker, direct_id)
    assert same["id"] == contact["id"]
    assert same["name"] == "Ana Souza"
    assert identities_of(http, tenant, same["id"]) == {("telegram", ANA_TELEGRAM_ID)}
    # Newest first by Telegram's `date`: the direct message's is the earlier one.
    assert messages_of(http, tenant, same["id"]) == [business_id, direct_id]


def test_one_address_in_utf8_raw_mail_and_by_mailgun_is_one_contact(
    http: httpx.Client, tenant: TenantFixture, worker: Workers
) -> None:
    """The UTF-8 address again, in other case through Mailgun: the same contact, two messages."""
    deliver(http, tenant, "email/raw", recorded("email/raw", "utf8_headers.eml"))
    [contact] = wait_for_messages(http, tenant, worker, "20251126124402.4711@bücher.example")
    form = mailgun_form(
        address="JÖRG.MÜLLER@BÜCHER.EXAMPLE",
        name="Jörg Müller",
        message_id="<again@bücher.example>",
    )
    deliver(http, tenant, "email/mailgun", form)
    [same] = wait_for_messages(http, tenant, worker, "again@bücher.example")
    assert (same["id"], same["email"]) == (contact["id"], "jörg.müller@bücher.example")
