"""A running keyvend: the real app in this event loop, talking HTTP to fake Telegram and Stripe.

The app is started with `bot.app.serve` exactly as `keyvend run` starts it (migrations,
PTB application with polling, aiohttp server, workers); only the two outside services are
fakes, and they are real HTTP servers.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from bot.app import Parts, serve
from bot.settings import Settings
from store.crypto import KeyVault
from store.db import Database
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram

ADMIN = 4242
KEYVEND = Path(sys.executable).with_name("keyvend")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def stripe_api() -> AsyncIterator[FakeStripe]:
    async with FakeStripe() as fake:
        yield fake


@pytest.fixture
def key_secret() -> str:
    return KeyVault.generate()


@dataclass
class Shop:
    """A running shop, handles to look inside it, and the app's own parts (to run its jobs)."""

    settings: Settings
    url: str
    db: Database
    telegram: FakeTelegram
    stripe: FakeStripe
    http: aiohttp.ClientSession
    parts: Parts | None = None  # None for an app in another process

    async def cli(self, *args: str, stdin: bytes | None = None) -> Completed:
        """Run the real `keyvend` command against this shop's database."""
        return await run_cli(self.settings, *args, stdin=stdin)

    async def post_event(self, event: dict) -> aiohttp.ClientResponse:
        body, headers = self.stripe.signed(event)
        async with self.http.post(f"{self.url}/stripe/webhook", data=body, headers=headers) as response:
            await response.read()
            return response


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(settings: Settings, *args: str, stdin: bytes | None = None) -> Completed:
    """`keyvend ...` as a subprocess, without blocking the loop the shop runs in."""
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "KEY_ENCRYPTION_KEY": settings.key_encryption_key.get_secret_value(),
        "LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        str(KEYVEND), *args, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=60)
    return Completed(process.returncode, out.decode(), err.decode())


def shop_settings(database_url: str, telegram: FakeTelegram, stripe_api: FakeStripe, key_secret: str, **overrides) -> Settings:
    values = dict(
        bot_token=telegram.token,
        admin_ids=str(ADMIN),
        telegram_api_url=telegram.url,
        database_url=database_url,
        stripe_secret_key=stripe_api.api_key,
        stripe_webhook_secret=stripe_api.webhook_secret,
        stripe_api_base=stripe_api.url,
        http_host="127.0.0.1",
        http_port=free_port(),
        key_encryption_key=key_secret,
        key_message_ttl=timedelta(minutes=15),
        rate_limit_updates="1000/minute",
        rate_limit_checkouts="100/minute",
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings(sqlite_url: str, telegram: FakeTelegram, stripe_api: FakeStripe, key_secret: str) -> Settings:
    return shop_settings(sqlite_url, telegram, stripe_api, key_secret)


@pytest.fixture
async def shop(settings: Settings, telegram: FakeTelegram, stripe_api: FakeStripe) -> AsyncIterator[Shop]:
    async with running(settings, telegram, stripe_api) as running_shop:
        yield running_shop


class running:
    """Start `serve()` in this loop; stop it and check it ended cleanly on exit."""

    def __init__(self, settings: Settings, telegram: FakeTelegram, stripe_api: FakeStripe) -> None:
        self.settings, self.telegram, self.stripe = settings, telegram, stripe_api

    async def __aenter__(self) -> Shop:
        self.stop, started = asyncio.Event(), asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(serve(self.settings, self.stop, started=started))
        await asyncio.wait({self.task, started}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            self.task.result()  # raises what stopped the app from starting
        assert started.done(), "keyvend did not start within 30 s"
        self.db = Database(self.settings.database_url)
        self.http = aiohttp.ClientSession()
        return Shop(self.settings, f"http://127.0.0.1:{self.settings.http_port}", self.db,
                    self.telegram, self.stripe, self.http, started.result())

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        try:
            await asyncio.wait_for(self.task, timeout=30)
        finally:
            await self.http.close()
            await self.db.dispose()
