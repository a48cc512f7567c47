"""Signed callbacks and e-mail for business clients, through a real receiver and SMTP server.

A local HTTP receiver answers 500 to the first attempts: the `order.fulfilled` callback is
delivered once it recovers, exactly once recorded as sent, and its signature verifies
with the client's secret. A real SMTP server (aiosmtpd) receives the order's spreadsheet,
which opens with openpyxl and holds the order's keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from email import message_from_bytes
from email.message import Message

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from sqlalchemy import select

from store.models import ClientDelivery
from tests.e2e.conftest import free_port
from tests.e2e.helpers import new_keys, rows, stock, wait_until
from tests.support.api import add_client, sold_keys, xlsx_keys

pytestmark = pytest.mark.usefixtures("afterwards")


class Receiver:
    """A client's webhook endpoint that fails its first `failures` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[bytes, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((await request.read(), request.headers.get("Keyvend-Signature", "")))
        return web.Response(status=500 if len(self.calls) <= self.failures else 200)


def verify(secret: str, body: bytes, header: str, tolerance: int = 300) -> bool:
    """What a client does with the header: Stripe's scheme, t=...,v1=... over "t.body"."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256)
    fresh = abs(time.time() - int(parts["t"])) <= tolerance
    return fresh and hmac.compare_digest(expected.hexdigest(), parts["v1"])


async def test_callback_is_delivered_once_the_receiver_recovers_and_verifies(launch, database_url):
    receiver = Receiver(failures=3)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with launch(database_url) as shop:
            shop.parts.client_outbox.retry_base = 0.05
            await stock(shop, "GAME", new_keys(5, "GAME"))
            acme = await add_client(shop, "acme", webhook_url=f"http://127.0.0.1:{port}/hook")
            order = (await acme.order("GAME", 2)).body

            async def sent() -> bool:
                found = await rows(shop, select(ClientDelivery.status, ClientDelivery.attempts))
                return found == [("sent", 4)]

            await wait_until(sent, timeout=20, what="the callback to be delivered")
    finally:
        await runner.cleanup()

    assert len(receiver.calls) == 4
    body, header = receiver.calls[-1]
    assert verify(acme.webhook_secret, body, header)
    assert not verify("whsec_wrong", body, header)
    event = json.loads(body)
    assert event["type"] == "order.fulfilled"
    assert event["data"]["order"] == {
        "id": order["id"],
        "sku": "GAME",
        "quantity": 2,
        "status": "fulfilled",
    }
    assert all(b == body for b, _ in receiver.calls)  # the same event every time
    assert b"GAME-" not in body  # a callback carries the order id, never keys


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


async def test_spreadsheet_is_emailed_through_a_real_smtp_server(launch, sqlite_url):
    inbox = Inbox()
    port = free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        async with launch(sqlite_url, smtp_url=f"smtp://127.0.0.1:{port}") as shop:
            await stock(shop, "GAME", new_keys(25, "GAME"))
            acme = await add_client(shop, "acme", email="keys@acme.example")
            order = (await acme.order("GAME", 25)).body
            await wait_until(lambda: inbox.messages, timeout=20, what="the e-mail")
            keys = await sold_keys(shop, order["id"])
    finally:
        smtp.stop()

    (mail,) = inbox.messages
    assert mail["To"] == "keys@acme.example"
    assert f"order #{order['id']}" in mail["Subject"]
    (attachment,) = [part for part in mail.walk() if part.get_filename()]
    assert attachment.get_filename().endswith(".xlsx")
    assert xlsx_keys(attachment.get_payload(decode=True)) == keys
