"""The bundled sample webhooks, signed as their providers sign them, posted to an app."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient

from intake.demo import load_samples
from intake.signing import DEMO_SECRETS, SignedRequest, sign_request

BASE_URL = "http://testserver"  # TestClient's own, which Twilio's signature covers

SAMPLES = load_samples()


def payload_of(sample: dict[str, Any]) -> Any:
    original = SAMPLES[sample["repeat"]] if "repeat" in sample else sample
    return original.get("form") or original.get("json") or original.get("eml")


def sign_sample(sample: dict[str, Any], tenant_id: uuid.UUID) -> SignedRequest:
    """`sample` as its provider would send it to the tenant, whose secrets are DEMO_SECRETS."""
    return sign_request(
        sample["route"],
        payload_of(sample),
        base_url=BASE_URL,
        tenant_id=str(tenant_id),
        secrets=DEMO_SECRETS,
    )


def post_signed(client: TestClient, signed: SignedRequest, **headers: str) -> int:
    """POST a signed request; `headers` are added after signing, so they can forge one."""
    response = client.post(signed.path, content=signed.body, headers={**signed.headers, **headers})
    status: int = response.status_code
    return status


def post_sample(
    client: TestClient, tenant_id: uuid.UUID, sample: dict[str, Any], **headers: str
) -> int:
    """POST `sample` signed for the tenant; its status code."""
    return post_signed(client, sign_sample(sample, tenant_id), **headers)
