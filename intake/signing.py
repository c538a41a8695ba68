"""Requests signed as each provider signs them: for the demo, the tests and the benchmarks.

This is the providers' side of the handshake, built with their own algorithms (Twilio's with
its library), so that what Intake verifies is what a provider really sends.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets as token_source
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

from channels import email_raw, mailgun

DEMO_SECRETS = {
    "twilio_auth_token": "demo-twilio-auth-token",
    "whatsapp_app_secret": "demo-whatsapp-app-secret",
    "whatsapp_verify_token": "demo-whatsapp-verify-token",
    "telegram_secret_token": "demo-telegram-secret-token",
    "mailgun_signing_key": "demo-mailgun-signing-key",
    "email_webhook_secret": "demo-email-webhook-secret",
}


@dataclass(frozen=True)
class SignedRequest:
    path: str  # /webhooks/{tenant}/{route}
    headers: dict[str, str]
    body: bytes


def sign_request(
    route: str, payload: Any, *, base_url: str, tenant_id: str, secrets: dict[str, str]
) -> SignedRequest:
    """`payload` for `route` as the provider would POST it to `base_url`.

    Twilio and Mailgun payloads are dicts of form fields, WhatsApp and Telegram ones JSON
    values, raw email a str or bytes message.
    """
    path = f"/webhooks/{tenant_id}/{route}"
    if route == "twilio":
        form = {k: str(v) for k, v in payload.items()}
        signature = RequestValidator(secrets["twilio_auth_token"]).compute_signature(
            base_url + path, form
        )
        headers = {
            "content-type": "application/x-www-form-urlencoded",
            "x-twilio-signature": signature,
        }
        return SignedRequest(path, headers, urlencode(form).encode())
    if route == "whatsapp":
        body = json.dumps(payload).encode()
        digest = hmac.new(secrets["whatsapp_app_secret"].encode(), body, hashlib.sha256)
        headers = {
            "content-type": "application/json",
            "x-hub-signature-256": "sha256=" + digest.hexdigest(),
        }
        return SignedRequest(path, headers, body)
    if route == "telegram":
        headers = {
            "content-type": "application/json",
            "x-telegram-bot-api-secret-token": secrets["telegram_secret_token"],
        }
        return SignedRequest(path, headers, json.dumps(payload).encode())
    if route == "email/mailgun":
        timestamp, token = str(int(time.time())), token_source.token_hex(25)
        form = {
            **payload,
            "timestamp": timestamp,
            "token": token,
            "signature": mailgun.sign(secrets["mailgun_signing_key"], timestamp, token),
        }
        headers = {"content-type": "application/x-www-form-urlencoded"}
        return SignedRequest(path, headers, urlencode(form).encode())
    if route == "email/raw":
        body = payload.encode() if isinstance(payload, str) else bytes(payload)
        headers = {
            "content-type": "message/rfc822",
            "x-intake-signature": email_raw.sign(body, secrets["email_webhook_secret"]),
        }
        return SignedRequest(path, headers, body)
    raise ValueError(f"no such webhook route: {route}")
