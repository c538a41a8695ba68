"""Signed provider traffic for fault tests: many distinct Twilio SMS, each its own MessageSid."""

from __future__ import annotations

import uuid

from intake.signing import DEMO_SECRETS, SignedRequest, sign_request


def twilio_sms(tenant_id: uuid.UUID, *, base_url: str, number: int) -> SignedRequest:
    """The `number`th SMS of a run, from its own sender, signed for `base_url`."""
    form = {
        "MessageSid": f"SM{uuid.uuid4().hex}",
        "AccountSid": "AC" + "0" * 32,
        "From": f"+1415{number % 10_000_000:07d}",
        "To": "+14155550100",
        "Body": f"Is the flat still available? ({number})",
        "NumMedia": "0",
    }
    return sign_request(
        "twilio", form, base_url=base_url, tenant_id=str(tenant_id), secrets=DEMO_SECRETS
    )
