"""The OpenAPI document against the running server: schemathesis finds no 5xx, no mismatch.

Schemathesis generates requests for every operation of /api/v1/openapi.json (as served),
sends them over HTTP to the running app with a client's token, and checks each answer:
never a server error, a status, content type and body the document declares. The
examples per operation are capped to keep the run short; the requests run in a thread
(schemathesis is synchronous) while the app serves them on this test's event loop.
Also here: the error shape for requests the document cannot describe, and rate limits.
"""

from __future__ import annotations

import asyncio

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.helpers import new_keys, stock
from tests.support.api import add_client

pytestmark = pytest.mark.usefixtures("afterwards")

EXAMPLES = 30
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
)


def fuzz(document: dict, base_url: str, token: str) -> list[str]:
    """Every operation's generated cases, validated; the operations exercised."""
    schema = schemathesis.openapi.from_dict(document)
    seen = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case) -> None:
            response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {token}"})
            case.validate_response(response, checks=CHECKS)

        check()
        seen.append(operation.label)
    return seen


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(launch, sqlite_url):
    async with launch(
        sqlite_url, rate_limit_api="100000/minute", rate_limit_api_ip="100000/minute"
    ) as shop:
        await stock(shop, "GAME", new_keys(50, "GAME"), price="1.00")
        acme = await add_client(shop, "acme")
        first = (await acme.order("GAME", 1)).body  # a real order id 1 for the generator
        assert first["id"] == 1
        served = (await acme.call("GET", "/openapi.json")).body

        seen = await asyncio.to_thread(fuzz, served, f"{shop.url}/api/v1", acme.token)

        assert len(seen) == 6, seen


async def test_bad_requests_get_json_errors_with_stable_codes(launch, sqlite_url):
    async with launch(sqlite_url, rate_limit_api="5/minute") as shop:
        await stock(shop, "GAME", new_keys(3, "GAME"))
        acme = await add_client(shop, "acme")
        bad = [
            await acme.call("GET", "/products", token="kv_not-a-token"),
            await acme.call("POST", "/orders", body={"sku": "GAME", "quantity": 1}),
            await acme.call(
                "POST",
                "/orders",
                body={"sku": "GAME", "quantity": True},
                headers={"Idempotency-Key": "k"},
            ),
            await acme.order("GAME", 10_001),
            await acme.order("NOPE", 1),
        ]
        assert [(r.status, r.code) for r in bad] == [
            (401, "unauthorized"),
            (400, "idempotency_key_required"),
            (400, "invalid_request"),
            (400, "invalid_request"),
            (404, "not_found"),
        ]
        short = await acme.order("GAME", 4)
        assert (short.status, short.code) == (409, "out_of_stock")
        missing = await acme.call("GET", "/nowhere")
        assert (missing.status, missing.code) == (404, "not_found")
        # The per-token limit (5/minute here) answers 429 with Retry-After.
        limited = await acme.call("GET", "/products")
        assert (limited.status, limited.code) == (429, "rate_limited")
        assert int(limited.headers["Retry-After"]) >= 1
        assert all(isinstance(r.body, dict) and r.body["error"]["message"] for r in bad)
