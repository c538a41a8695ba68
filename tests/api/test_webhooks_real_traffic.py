"""Provider traffic the first recordings missed, through the served routes, on both databases.

Each payload in tests/payloads/ named here (see SOURCES.md, "audit" rows) is signed as its
provider signs it and posted to the app, as an outside checker would: a person's message is a
200 and one stored message with exactly these fields; anything not from a person is a 200 that
stores nothing and is counted under exactly this reason. Several of them were a contact made
of a channel (Telegram's automatic forwards), a 400 for an update we skip, a service message
taken for words, or a body lost to its charset, before the adapters were fixed.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from twilio.request_validator import RequestValidator

from api.app import create_app
from intake.settings import Settings
from models.db import Database
from tests.api.test_webhooks_senders import (
    BASE,
    CHANNEL_LABEL,
    ignored_count,
    post,
    recorded,
    stored,
)
from tests.api.webhook_payloads import SECRETS, signed
from tests.factories import TenantFixture, make_tenant

PAYLOADS = Path(__file__).parent.parent / "payloads"


@pytest.fixture
def client(db: Database, tmp_path: Path) -> TestClient:
    settings = Settings(database_url=db.url, broker_url=f"sqla+sqlite:///{tmp_path}/broker.db")
    app: FastAPI = create_app(settings, db=db)
    return TestClient(app, base_url=BASE)


@pytest.fixture
def tenant(db: Database) -> TenantFixture:
    return make_tenant(db, **SECRETS)


# route, file, then the stored message: (channel, sender_id, phone, email, display_name, text,
# media kinds).
PEOPLE: list[tuple[str, str, tuple[Any, ...]]] = [
    (
        "telegram",
        "sticker.json",
        ("telegram", "583920114", None, None, "Ana Souza", None, ("sticker",)),
    ),
    ("telegram", "dice.json", ("telegram", "583920114", None, None, "Ana Souza", None, ())),
    (
        "telegram",
        "venue.json",
        ("telegram", "583920114", None, None, "Ana Souza", None, ("location",)),
    ),
    (
        "whatsapp",
        "order.json",
        (
            "whatsapp",
            "16505551234",
            "+16505551234",
            None,
            "Sheena Nelson",
            "Can I reserve these for Saturday?",
            (),
        ),
    ),
    (
        "whatsapp",
        "interactive_nfm_reply.json",
        ("whatsapp", "16505551234", "+16505551234", None, "Sheena Nelson", "Sent", ()),
    ),
    (
        "whatsapp",
        "interactive_button_reply.json",
        ("whatsapp", "16505551234", "+16505551234", None, "Sheena Nelson", "Yes, book it", ()),
    ),
    (
        "whatsapp",
        "sticker.json",
        ("whatsapp", "16505551234", "+16505551234", None, "Sheena Nelson", None, ("sticker",)),
    ),
    (
        "whatsapp",
        "video.json",
        (
            "whatsapp",
            "16505551234",
            "+16505551234",
            None,
            "Sheena Nelson",
            "The hallway has a leak",
            ("video",),
        ),
    ),
    (
        "whatsapp",
        "referral.json",
        (
            "whatsapp",
            "16505551234",
            "+16505551234",
            None,
            "Sheena Nelson",
            "Hi, I saw your ad for the 2BR",
            (),
        ),
    ),
    (
        "whatsapp",
        "request_welcome.json",
        ("whatsapp", "16505551234", "+16505551234", None, "Sheena Nelson", None, ()),
    ),
    (
        "twilio",
        "whatsapp_button.form",
        ("whatsapp", "16505551234", "+16505551234", None, "Sheena Nelson", "Yes, book it", ()),
    ),
    (
        "twilio",
        "whatsapp_referral.form",
        (
            "whatsapp",
            "16505551234",
            "+16505551234",
            None,
            "Sheena Nelson",
            "Hi, I saw your ad for the 2BR",
            (),
        ),
    ),
    ("twilio", "opt_out_stop.form", ("sms", None, "+14155552671", None, None, "STOP", ())),
    (
        "email/raw",
        "unknown_8bit.eml",
        (
            "email",
            None,
            None,
            "joao.pereira@example.org",
            "Joao Pereira",
            "Apartamento 4B\n\n"
            "Olá, o apartamento ainda está disponível? Posso visitá-lo no sábado.",
            (),
        ),
    ),
    (
        "email/raw",
        "latin1_8bit_unlabelled.eml",
        (
            "email",
            None,
            None,
            "francois.dupont@example.fr",
            "Francois Dupont",
            "Visite\n\n"
            "Bonjour, je voudrais visiter l'appartement. Très intéressé, merci — François",
            (),
        ),
    ),
    (
        "email/raw",
        "qp_encoded_words.eml",
        (
            "email",
            None,
            None,
            "lena.schmidt@example.de",
            "Lena Müller-Schmidt",
            "Besichtigung der Wohnung in der Elm Straße am Samstag\n\n"
            "Guten Tag, ich würde die Wohnung gerne am Samstag besichtigen. Ist das möglich?",
            (),
        ),
    ),
    (
        "email/raw",
        "base64_body.eml",
        ("email", None, None, "li.ming@example.cn", "李明", "看房\n\n你好，我想看房。", ()),
    ),
    (
        "email/raw",
        "lf_folded_no_message_id.eml",
        (
            "email",
            None,
            None,
            "sam.okafor@example.com",
            "Okafor, Sam",
            "Question about the 2BR on Elm Street\n\nIs parking included?",
            (),
        ),
    ),
    (
        "email/raw",
        "mbox_from_line.eml",
        (
            "email",
            None,
            None,
            "sam.okafor@example.com",
            "Sam Okafor",
            "Pets\n\nAre cats allowed?",
            (),
        ),
    ),
    (
        "email/raw",
        "forwarded_rfc822.eml",
        (
            "email",
            None,
            None,
            "priya.nair@example.in",
            "Priya Nair",
            "Fwd: Your application\n\nForwarding the letter from my current landlord.",
            ("document",),
        ),
    ),
    (
        "email/mailgun",
        "html_only.txt",
        (
            "email",
            None,
            None,
            "ravi.patel@example.com",
            "Ravi Patel",
            "Unit 4B\n\nIs unit 4B still free?\nRavi",
            (),
        ),
    ),
]


@pytest.mark.parametrize(("route", "name", "expected"), PEOPLE)
def test_a_persons_message_is_a_200_stored_with_exactly_its_fields(
    client: TestClient,
    db: Database,
    tenant: TenantFixture,
    route: str,
    name: str,
    expected: tuple[Any, ...],
) -> None:
    """A real person's message of each new shape is one stored message with these fields."""
    request = signed(route, recorded(route, name), tenant_id=tenant.id, base_url=BASE)
    response = post(client, request)
    assert response.status_code == 200, response.text
    (message,) = stored(db, tenant.id)
    found = (
        message.channel,
        message.sender_id,
        message.phone,
        message.email,
        message.display_name,
        message.text,
        tuple(media.kind for media in message.media),
    )
    assert found == expected


# route, file, reason, how many times the reason is counted.
IGNORED: list[tuple[str, str, str, int]] = [
    ("telegram", "automatic_forward.json", "channel post", 1),
    ("telegram", "message_reaction.json", "reaction", 1),
    ("telegram", "chat_join_request.json", "join request", 1),
    ("telegram", "poll_answer.json", "poll update", 1),
    ("telegram", "checklist_tasks_done.json", "service message", 1),
    ("telegram", "web_app_data.json", "service message", 1),
    ("whatsapp", "errors_only.json", "error notification", 1),
    ("whatsapp", "account_update.json", "account_update notification", 1),
    ("whatsapp", "status_failed_with_pricing.json", "status callback", 2),
    ("twilio", "status_undelivered.form", "status callback", 1),
    ("twilio", "status_sent.form", "status callback", 1),
    ("twilio", "whatsapp_status_channel_metadata.form", "status callback", 1),
    ("email/raw", "gmail_vacation.eml", "auto-submitted", 1),
    ("email/raw", "outlook_oof.eml", "auto-submitted", 1),
    ("email/raw", "postfix_bounce.eml", "delivery report", 1),
    ("email/raw", "gmail_bounce.eml", "delivery report", 1),
    ("email/raw", "exchange_ndr.eml", "delivery report", 1),
    ("email/raw", "read_receipt.eml", "read receipt", 1),
]


@pytest.mark.parametrize(("route", "name", "reason", "times"), IGNORED)
def test_what_is_not_a_person_is_a_200_counted_under_its_reason(
    client: TestClient,
    db: Database,
    tenant: TenantFixture,
    route: str,
    name: str,
    reason: str,
    times: int,
) -> None:
    """Receipts, reactions, channel forwards, service messages and automated mail: 200, counted."""
    channel = CHANNEL_LABEL.get(route, "email")
    before = ignored_count(client, channel, reason)
    request = signed(route, recorded(route, name), tenant_id=tenant.id, base_url=BASE)
    response = post(client, request)
    assert response.status_code == 200, response.text
    assert stored(db, tenant.id) == []
    assert ignored_count(client, channel, reason) == before + times


def test_a_skipped_telegram_update_in_a_shape_the_library_refuses_is_still_a_200(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """A poll answer without Bot API 9.6's persistent ids (python-telegram-bot refuses it) is
    acknowledged as skipped, not a 400: skipped updates are read from the JSON alone."""
    update = json.loads((PAYLOADS / "telegram" / "poll_answer.json").read_text())
    older = copy.deepcopy(update)
    del older["poll_answer"]["option_persistent_ids"]
    before = ignored_count(client, "telegram", "poll update")
    response = post(client, signed("telegram", older, tenant_id=tenant.id, base_url=BASE))
    assert response.status_code == 200, response.text
    assert stored(db, tenant.id) == []
    assert ignored_count(client, "telegram", "poll update") == before + 1


def test_twilio_signs_the_public_url_with_its_query_and_every_blank_parameter(
    db: Database, tmp_path: Path, tenant: TenantFixture
) -> None:
    """A Twilio webhook configured with a query string verifies through the served route when
    signed over the public URL, query and blank fields included; without either it is a 403."""
    settings = Settings(
        database_url=db.url,
        broker_url=f"sqla+sqlite:///{tmp_path}/broker.db",
        public_url="https://intake.example.com",
    )
    app_client = TestClient(create_app(settings, db=db), base_url=BASE)
    form = recorded("twilio", "sms_text.form")
    assert (form["FromZip"], form["FromCity"]) == ("", "")  # Twilio posts them blank
    path = f"/webhooks/{tenant.id}/twilio?property=elm-street&campaign="
    validator = RequestValidator(SECRETS["twilio_auth_token"])
    headers = {"content-type": "application/x-www-form-urlencoded"}

    def send(signed_url: str, fields: dict[str, str]) -> int:
        signature = validator.compute_signature(signed_url, fields)
        response = app_client.post(
            path, content=urlencode(form), headers={**headers, "x-twilio-signature": signature}
        )
        status: int = response.status_code
        return status

    without_blank = {k: v for k, v in form.items() if k != "FromZip"}
    assert send("https://intake.example.com" + path.split("?")[0], form) == 403
    assert send("https://intake.example.com" + path, without_blank) == 403
    assert stored(db, tenant.id) == []
    assert send("https://intake.example.com" + path, form) == 200
    (message,) = stored(db, tenant.id)
    assert (message.channel, message.phone) == ("sms", "+14155552671")
