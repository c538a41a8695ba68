"""Meta notifications for the shared WhatsApp route, signed with the operator's app secret.

Built like the recorded payloads in tests/payloads/whatsapp (Meta's `messages` webhook
reference), with what must be unique (the business number, the sender, the wamid) fresh.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

import httpx
from fastapi.testclient import TestClient

from models.db import Database
from models.tenants import configure_tenant
from tests.api.webhook_payloads import unique_digits

PATH = "/webhooks/whatsapp"
APP_SECRET = "operator-meta-app-secret"
VERIFY_TOKEN = "operator-verify-token"


def unique_phone_number_id() -> str:
    """A Meta phone number id no other test uses (15 digits, as Meta's are)."""
    return "1" + unique_digits(14)


def message_change(
    phone_number_id: str,
    *,
    phone: str | None = None,
    name: str = "Sheena Nelson",
    wamid: str | None = None,
    text: str = "Is the flat on Elm Street still available?",
) -> dict[str, Any]:
    """One `messages` change for the business number `phone_number_id`, as Meta sends it."""
    wa_id = (phone or f"+1415{unique_digits(7)}").lstrip("+")
    return {
        "field": "messages",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": "15550783881",
                "phone_number_id": phone_number_id,
            },
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
        },
    }


def status_change(phone_number_id: str) -> dict[str, Any]:
    return {
        "field": "messages",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
            "statuses": [
                {
                    "id": f"wamid.{uuid.uuid4().hex}",
                    "status": "delivered",
                    "timestamp": "1764161320",
                    "recipient_id": "16505551234",
                }
            ],
        },
    }


def notification(*entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A notification with one entry (a WhatsApp Business Account) per list of changes."""
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": f"10{unique_digits(13)}", "changes": changes} for changes in entries],
    }


def sign(body: bytes, secret: str = APP_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-hub-signature-256": f"sha256={digest}"}


def post_shared(
    client: TestClient | httpx.Client, payload: Any, *, secret: str = APP_SECRET
) -> httpx.Response:
    body = json.dumps(payload).encode()
    response: httpx.Response = client.post(PATH, content=body, headers=sign(body, secret))
    return response


def register(db: Database, tenant_id: uuid.UUID, *phone_number_ids: str) -> None:
    with db.unit_of_work() as session:
        configure_tenant(
            session,
            tenant_id=tenant_id,
            values={"whatsapp_phone_number_id": ",".join(phone_number_ids)},
        )


def wamid_of(change: dict[str, Any]) -> str:
    wamid: str = change["value"]["messages"][0]["id"]
    return wamid
