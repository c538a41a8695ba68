"""Fresh provider payloads for the webhook tests and the benchmark: one new message each.

Each builder follows a recorded payload in tests/payloads/ and changes only what must be unique
(the provider's message id, the sender), so that every request is a real insert.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from intake.signing import SignedRequest, sign_request

SECRETS = {
    "twilio_auth_token": "test-twilio-auth-token",
    "whatsapp_app_secret": "test-whatsapp-app-secret",
    "whatsapp_verify_token": "test-whatsapp-verify-token",
    "telegram_secret_token": "test-telegram-secret-token",
    "mailgun_signing_key": "test-mailgun-signing-key",
    "email_webhook_secret": "test-email-webhook-secret",
}
# The secret each route needs; a tenant without it gets 403.
SECRET_OF_ROUTE = {
    "twilio": "twilio_auth_token",
    "whatsapp": "whatsapp_app_secret",
    "telegram": "telegram_secret_token",
    "email/mailgun": "mailgun_signing_key",
    "email/raw": "email_webhook_secret",
}
ROUTES = tuple(SECRET_OF_ROUTE)


def unique_digits(count: int) -> str:
    return f"{uuid.uuid4().int % 10**count:0{count}d}"


def twilio_sms(
    *, phone: str, body: str = "Hi, is the 2-bed on Elm St still available?", sid: str | None = None
) -> dict[str, str]:
    sid = sid or f"SM{uuid.uuid4().hex}"
    return {
        "ToCountry": "US",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "FromZip": "",
        "SmsSid": sid,
        "SmsStatus": "received",
        "FromCity": "",
        "Body": body,
        "FromCountry": "US",
        "To": "+14155550100",
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": "AC3f1c2b7e9d8a4c6b5e0f1a2b3c4d5e6f",
        "From": phone,
        "ApiVersion": "2010-04-01",
    }


def twilio_whatsapp(
    *, phone: str, name: str, body: str = "Quero agendar uma visita.", sid: str | None = None
) -> dict[str, str]:
    sid = sid or f"SM{uuid.uuid4().hex}"
    return {
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ProfileName": name,
        "MessageType": "text",
        "SmsSid": sid,
        "WaId": phone.lstrip("+"),
        "SmsStatus": "received",
        "Body": body,
        "To": "whatsapp:+14155238886",
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": "AC3f1c2b7e9d8a4c6b5e0f1a2b3c4d5e6f",
        "From": f"whatsapp:{phone}",
        "ApiVersion": "2010-04-01",
    }


def twilio_status(*, sid: str | None = None) -> dict[str, str]:
    """A delivery receipt for a message the tenant sent: not from a person."""
    sid = sid or f"SM{uuid.uuid4().hex}"
    return {
        "SmsSid": sid,
        "SmsStatus": "delivered",
        "MessageStatus": "delivered",
        "To": "+14155552671",
        "MessageSid": sid,
        "From": "+14155550100",
        "AccountSid": "AC3f1c2b7e9d8a4c6b5e0f1a2b3c4d5e6f",
        "ApiVersion": "2010-04-01",
    }


def _meta_change(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550783881",
                                "phone_number_id": "106540352242922",
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def meta_whatsapp(
    *, phone: str, name: str, text: str = "Does it come with parking?", wamid: str | None = None
) -> dict[str, Any]:
    wa_id = phone.lstrip("+")
    return _meta_change(
        {
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
            "messages": [
                {
                    "from": wa_id,
                    "id": wamid or f"wamid.{uuid.uuid4().hex}",
                    "timestamp": "1764161300",
                    "type": "text",
                    "text": {"body": text},
                }
            ],
        }
    )


def meta_status() -> dict[str, Any]:
    return _meta_change(
        {
            "statuses": [
                {
                    "id": f"wamid.{uuid.uuid4().hex}",
                    "status": "read",
                    "timestamp": "1764161320",
                    "recipient_id": "16505551234",
                }
            ]
        }
    )


def telegram_update(
    *,
    user_id: int,
    first_name: str,
    last_name: str,
    username: str,
    language_code: str = "pt-br",
    text: str = "Is the flat still available?",
    message_id: int | None = None,
) -> dict[str, Any]:
    person = {"id": user_id, "first_name": first_name, "last_name": last_name, "username": username}
    return {
        "update_id": int(unique_digits(9)),
        "message": {
            "message_id": message_id or int(unique_digits(9)),
            "from": {**person, "is_bot": False, "language_code": language_code},
            "chat": {**person, "type": "private"},
            "date": 1764161400,
            "text": text,
        },
    }


def telegram_channel_post() -> dict[str, Any]:
    return {
        "update_id": int(unique_digits(9)),
        "channel_post": {
            "message_id": 7,
            "date": 1764161400,
            "text": "New listings this week",
            "chat": {"id": -1001234567890, "title": "Elm Street news", "type": "channel"},
        },
    }


def mailgun_form(
    *,
    address: str,
    name: str,
    subject: str = "Is unit 4B pet friendly?",
    text: str = "Do you allow a small dog?",
    message_id: str | None = None,
    auto_reply: bool = False,
) -> dict[str, str]:
    form = {
        "recipient": "leasing@mg.elmstreet.example.com",
        "sender": address.lower(),
        "from": f"{name} <{address}>",
        "subject": subject,
        "Message-Id": message_id or f"<{uuid.uuid4().hex}@mail.example.com>",
        "Date": "Wed, 26 Nov 2025 07:58:31 -0500",
        "body-plain": text,
        "stripped-text": text,
        "To": "leasing@mg.elmstreet.example.com",
    }
    if auto_reply:
        form["Auto-Submitted"] = "auto-replied"
    return form


def raw_email(
    *,
    address: str,
    name: str,
    subject: str = "Viewing the 2BR at 12 Elm Street",
    text: str = "Could I see it on Saturday morning?",
    message_id: str | None = None,
    auto_reply: bool = False,
) -> str:
    extra = "Auto-Submitted: auto-replied\r\n" if auto_reply else ""
    return (
        f"From: {name} <{address}>\r\n"
        "To: leasing@elmstreet.example.com\r\n"
        "Date: Wed, 26 Nov 2025 07:41:03 -0500\r\n"
        f"Message-ID: {message_id or f'<{uuid.uuid4().hex}@mail.example.net>'}\r\n"
        f"Subject: {subject}\r\n"
        f"{extra}"
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="UTF-8"\r\n'
        "\r\n"
        f"{text}\r\n"
    )


@dataclass(frozen=True)
class Expected:
    """The contact a fresh message should make: what the Contacts API shows."""

    name: str
    source: str
    language: str = "en"
    phone: str | None = None
    email: str | None = None


def fresh_message(route: str, *, twilio_whatsapp_sender: bool = False) -> tuple[Any, Expected]:
    """A message of a sender nobody has used, for `route`, and the contact it should make."""
    phone = f"+1415{unique_digits(7)}"
    if route == "twilio" and twilio_whatsapp_sender:
        return twilio_whatsapp(phone=phone, name="Joao Silva"), Expected(
            "Joao Silva", "whatsapp", phone=phone
        )
    if route == "twilio":
        return twilio_sms(phone=phone), Expected(phone, "sms", phone=phone)
    if route == "whatsapp":
        return meta_whatsapp(phone=phone, name="Sheena Nelson"), Expected(
            "Sheena Nelson", "whatsapp", phone=phone
        )
    if route == "telegram":
        return telegram_update(
            user_id=int(unique_digits(9)),
            first_name="Ana",
            last_name="Souza",
            username=f"ana_{unique_digits(6)}",
        ), Expected("Ana Souza", "telegram", language="pt")
    address = f"Dana.{uuid.uuid4().hex[:10]}@Example.com"
    if route == "email/mailgun":
        return mailgun_form(address=address, name="Dana Whitfield"), Expected(
            "Dana Whitfield", "email", email=address.lower()
        )
    if route == "email/raw":
        return raw_email(address=address, name="Maria Garcia"), Expected(
            "Maria Garcia", "email", email=address.lower()
        )
    raise ValueError(route)


def not_from_a_person(route: str) -> Any:
    """A verified request that carries no message from a person: a receipt, a post, a bounce."""
    builders: dict[str, Callable[[], Any]] = {
        "twilio": twilio_status,
        "whatsapp": meta_status,
        "telegram": telegram_channel_post,
        "email/mailgun": lambda: mailgun_form(address="a@example.com", name="A", auto_reply=True),
        "email/raw": lambda: raw_email(address="a@example.com", name="A", auto_reply=True),
    }
    return builders[route]()


def signed(
    route: str,
    payload: Any,
    *,
    tenant_id: object,
    base_url: str,
    secrets: dict[str, str] | None = None,
) -> SignedRequest:
    return sign_request(
        route, payload, base_url=base_url, tenant_id=str(tenant_id), secrets=secrets or SECRETS
    )
