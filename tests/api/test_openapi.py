"""The published OpenAPI document is truthful: schemathesis drives the app from it.

Each operation is its own test, drawn from the app's own /openapi.json. schemathesis's lazy
pytest loader (`from_fixture`) breaks on pytest 9 (it reads `Function._nodeid`), so the cases
come from `APIOperation.as_strategy()` under a plain hypothesis `@given`.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from intake.settings import Settings
from tests.api.conftest import unique_phone
from tests.api.test_contacts import CONTACT_FIELDS
from tests.factories import TenantFixture

# 30 a test by default; FUZZ_EXAMPLES=400 for a longer hunt before a release.
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
DOCUMENT = create_app(Settings(database_url="sqlite://")).openapi()
OPERATIONS = [
    pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode.value}")
    for path, methods in DOCUMENT["paths"].items()
    for method, operation in methods.items()
    for mode in GenerationMode
    # Negative cases need something to break: healthz takes no input at all, and a webhook
    # only a provider body that its signature, not a schema, vouches for (tests/channels
    # fuzzes those parsers).
    if mode is GenerationMode.POSITIVE
    or (
        not path.startswith("/webhooks/")
        and (operation.get("parameters") or operation.get("requestBody"))
    )
]
# Left out on purpose: positive_data_acceptance, because a schema cannot say which strings
# libphonenumber takes for a phone or email-validator for an address, so some schema-valid
# bodies are rightly a 400; negative_data_rejection, because it blames us for a negated
# Authorization header that these tests always send, and for extras that never reach the wire.
# Negative cases still run: they must never get a 5xx or an undocumented response.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS)
def test_operation_conforms_to_the_schema(
    app: FastAPI,
    client: TestClient,
    tenant: TenantFixture,
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    """Generated requests with a valid key never get a 5xx, and every response fits the schema."""
    operation = schemathesis.openapi.from_asgi("/openapi.json", app)[path][method]
    # A real contact for the id-taking routes, so that generated bodies and queries reach the
    # code behind the 404 (DELETE keeps a random id: it would leave nothing for the rest).
    contact = client.post(
        "/api/v1/contacts", json={"name": "Fuzz", "phone": unique_phone()}, headers=tenant.auth
    ).json()
    fixed = {"contact_id": contact["id"]} if "{contact_id}" in path and method != "DELETE" else {}
    if "{tenant_id}" in path:
        fixed["tenant_id"] = str(tenant.id)

    @given(case=operation.as_strategy(mode, path_parameters=fixed or None))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def conforms(case: Any) -> None:
        case.call_and_validate(headers=tenant.auth, checks=CHECKS)

    conforms()


def test_schema_documents_problem_json_and_no_422_validation(client: TestClient) -> None:
    """Errors are documented as problem+json; FastAPI's 422 validation shape is gone."""
    document = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            for code, response in operation["responses"].items():
                if int(code) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (
                        path,
                        method,
                        code,
                    )
    create = document["paths"]["/api/v1/contacts"]["post"]
    assert set(create["responses"]) == {"201", "400", "401", "409", "413", "422", "429", "503"}
    assert "422" not in document["paths"]["/api/v1/contacts"]["get"]["responses"]


def test_schema_names_fields_enums_and_the_idempotency_header(client: TestClient) -> None:
    """camelCase fields, the enums, the bearer scheme and Idempotency-Key are all described."""
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    contact = schemas["ContactOut"]["properties"]
    assert set(contact) == CONTACT_FIELDS
    assert schemas["ContactStatus"]["enum"] == [
        "prospect",
        "scheduled",
        "applicant",
        "renter",
        "archived",
    ]
    assert schemas["ContactRole"]["enum"] == [
        "prospect",
        "tenant",
        "landlord",
        "property_manager",
        "vendor",
        "other",
    ]
    assert schemas["Channel"]["enum"] == ["whatsapp", "telegram", "sms", "email"]
    assert "en" in schemas["ContactCreate"]["properties"]["language"]["enum"]
    assert set(schemas["Pagination"]["properties"]) == {"page", "limit", "total", "totalPages"}
    create = document["paths"]["/api/v1/contacts"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in create["parameters"])
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    unauthorized = document["paths"]["/api/v1/contacts"]["get"]["responses"]["401"]
    assert "WWW-Authenticate" in unauthorized["headers"]


def test_schema_documents_the_body_limit_and_an_unavailable_database(client: TestClient) -> None:
    """Every API operation that takes a body documents the 413, and every one the 503."""
    document = client.get("/openapi.json").json()
    api = [
        (path, method, operation)
        for path, methods in document["paths"].items()
        if path.startswith("/api/")
        for method, operation in methods.items()
    ]
    with_body = [(p, m) for p, m, op in api if "requestBody" in op]
    assert ("/api/v1/contacts/{contact_id}/merge", "post") in with_body
    assert ("/api/v1/contacts/{contact_id}", "patch") in with_body
    assert all("413" in op["responses"] for _, _, op in api if "requestBody" in op)
    assert all("503" in op["responses"] for _, _, op in api)
