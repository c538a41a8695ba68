"""The bundled sample webhooks, signed as their providers sign them, posted to an app."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient

from intake.demo import load_samples
from intake.signing import DEMO_SECRETS, sign_request

BASE_URL = "http://testserver"  # TestClient's own, which Twilio's signature covers

SAMPLES = load_samples()


def payload_of(sample: dict[str, Any]) -> Any:
    original = SAMPLES[sample["repeat"]] if "repeat" in sample else sample
    return original.get("form") or original.get("json") or original.get("eml")


def post_sample(client: TestClient, tenant_id: uuid.UUID, sample: dict[str, Any],
                **headers: str) -> int:
    """POST `sample` for the tenant (whose secrets must be DEMO_SECRETS); its status code.

    `headers` are added after signing, so a forged signature header replaces the real one.
    """
    signed = sign_request(sample["route"], payload_of(sample), base_url=BASE_URL,
                          tenant_id=str(tenant_id), secrets=DEMO_SECRETS)
    response = client.post(signed.path, content=signed.body,
                           headers={**signed.headers, **headers})
    status: int = response.status_code
    return status
