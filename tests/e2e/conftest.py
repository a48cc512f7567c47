"""A running keyvend: the real app in this event loop, talking HTTP to fake Telegram and Stripe.

The app is started with `bot.app.serve` exactly as `keyvend run` starts it (migrations,
PTB application with polling, aiohttp server, workers); only the two outside services are
fakes, and they are real HTTP servers. `Shop`, `running`, `shop_settings`, `run_cli` and
`free_port` live here (bench/ imports them too); the fixtures every test directory uses
(`telegram`, `stripe_api`, `key_secret`, `settings`, `shop`) are in tests/conftest.py.

The e2e fixtures: `launch`, a shop with chosen settings, and `afterwards`, the audit a
module turns on for each of its tests with `pytestmark = pytest.mark.usefixtures("afterwards")`:
`keyvend check` passes on every database the test launched a shop on, and no key imported
there appears in any log line, CLI output or admin alert.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from bot import cli
from bot.app import Parts, serve
from bot.settings import Settings
from store.crypto import KeyVault
from store.db import Database
from store.models import Key
from tests.e2e.helpers import captured_logs
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram

ADMIN = 4242
KEYVEND = Path(sys.executable).with_name("keyvend")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        async with self.http.post(
            f"{self.url}/stripe/webhook", data=body, headers=headers
        ) as response:
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
        str(KEYVEND),
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=60)
    return Completed(process.returncode, out.decode(), err.decode())


def shop_settings(
    database_url: str, telegram: FakeTelegram, stripe_api: FakeStripe, key_secret: str, **overrides
) -> Settings:
    values = {
        "bot_token": telegram.token,
        "admin_ids": str(ADMIN),
        "telegram_api_url": telegram.url,
        "database_url": database_url,
        "stripe_secret_key": stripe_api.api_key,
        "stripe_webhook_secret": stripe_api.webhook_secret,
        "stripe_api_base": stripe_api.url,
        "http_host": "127.0.0.1",
        "http_port": free_port(),
        "key_encryption_key": key_secret,
        "key_message_ttl": timedelta(minutes=15),
        "rate_limit_updates": "1000/minute",
        "rate_limit_checkouts": "100/minute",
    }
    values.update(overrides)
    # The product cards' pay links lead to this very app, as PUBLIC_URL does in production.
    values.setdefault("public_url", f"http://127.0.0.1:{values['http_port']}")
    return Settings(_env_file=None, **values)


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
        return Shop(
            self.settings,
            f"http://127.0.0.1:{self.settings.http_port}",
            self.db,
            self.telegram,
            self.stripe,
            self.http,
            started.result(),
        )

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        try:
            await asyncio.wait_for(self.task, timeout=30)
        finally:
            await self.http.close()
            await self.db.dispose()


# ---------------------------------------------------------------- e2e fixtures

Launch = Callable[..., running]


@pytest.fixture
def launch(
    sqlite_url: str,
    telegram: FakeTelegram,
    stripe_api: FakeStripe,
    key_secret: str,
    afterwards: Afterwards,
) -> Launch:
    """`async with launch(**settings) as shop:` runs the real app on this test's database
    (or on `launch(database_url)`), and the audit after the test checks that database."""

    def run(database_url: str | None = None, **overrides: Any) -> running:
        settings = shop_settings(
            database_url or sqlite_url, telegram, stripe_api, key_secret, **overrides
        )
        afterwards.uses(settings)
        return running(settings, telegram, stripe_api)

    return run


@dataclass
class Afterwards:
    """What a test used, so the audit after it knows what to check."""

    databases: dict[str, Settings] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # CLI stdout/stderr and the like

    def uses(self, settings: Settings) -> None:
        # The latest settings: after a key rotation only the new key opens the database.
        self.databases[settings.database_url] = settings


@pytest.fixture
async def afterwards(settings: Settings, telegram: FakeTelegram) -> AsyncIterator[Afterwards]:
    """After the test: `keyvend check` passes and no imported key leaked anywhere."""
    audit = Afterwards()
    keys: set[str] = set()
    # Everything logged from the start of the test's setup to the end of its teardown.
    with captured_logs(settings) as logs:
        yield audit
        for used in audit.databases.values():
            code, report = await _keyvend_check(used)
            audit.outputs.append(report)
            assert code == 0, f"keyvend check failed after the test:\n{report}"
            keys |= await _imported_keys(used)
    alerts = [m.text or "" for m in telegram.messages_to(ADMIN)]
    leaked = logs.leaked(keys, also=[*audit.outputs, *alerts])
    assert not leaked, f"imported keys leaked: {sorted(leaked)[:5]}"
    assert keys, "the audit saw no imported key: the grep would prove nothing"


async def _keyvend_check(settings: Settings) -> tuple[int, str]:
    """`keyvend check` on a shop's database: its exit code and report.

    The command's own function, run in this process: a subprocess per test would spend
    seconds starting Python for the same check (the backorder test runs the real CLI).
    """
    report = io.StringIO()
    with redirect_stdout(report):
        code = await cli.cmd_check(settings, argparse.Namespace(full=True))
    return code, report.getvalue()


async def _imported_keys(settings: Settings) -> set[str]:
    """Every key in a shop's database, decrypted: however it got there, the grep looks for it."""
    box = KeyVault(settings.key_encryption_key.get_secret_value())
    db = Database(settings.database_url)

    async def work(session):
        return list((await session.scalars(select(Key.ciphertext))).all())

    try:
        return {box.decrypt(ciphertext) for ciphertext in await db.read(work)}
    finally:
        await db.dispose()
