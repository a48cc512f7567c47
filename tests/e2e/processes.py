"""Helpers for end-to-end tests that run keyvend as real processes and kill things.

`App` is `keyvend run` as a child process (restartable, SIGKILL-able, every incarnation's
output kept for the key grep) and `App.shop` the handle the helpers of `tests.e2e.helpers`
take; `RedisServer` is a private redis-server a test may kill. Around them: a webhook sender
that retries like Stripe (every event not answered 200 is sent again), and the outbox as a
killed process left it.

Everything here runs on the test's event loop, next to the fakes, so nothing may block it:
child processes are asyncio subprocesses, and waiting is polling with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import select

from bot.settings import Settings
from store.db import Database
from store.models import Delivery, DeliveryKind, DeliveryStatus
from tests.e2e.conftest import KEYVEND, Shop, free_port
from tests.e2e.helpers import rows, wait_until
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram

# ---------------------------------------------------------------- keyvend run as a process


def app_env(settings: Settings) -> dict[str, str]:
    """The environment that makes `keyvend run` build exactly `settings`.

    Built from scratch rather than from os.environ, so nothing of the test runner's own
    environment (or a developer's BOT_TOKEN) reaches the app.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, frozenset):
            value = ",".join(str(v) for v in sorted(value))
        elif isinstance(value, timedelta):
            value = f"PT{value.total_seconds():g}S"  # pydantic reads ISO 8601 durations
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, Enum):
            value = value.value
        env[name.upper()] = str(value)
    return env


class App:
    """`keyvend run` as a child process that can be killed and started again.

    It runs in its own empty directory, so no `.env` is picked up; each incarnation's output
    goes to its own file there, and `logs()` returns all of them.
    """

    def __init__(self, settings: Settings, workdir: Path, name: str = "keyvend") -> None:
        self.settings = settings
        self.name = name
        self.url = f"http://127.0.0.1:{settings.http_port}"
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._env = app_env(settings)
        self._process: asyncio.subprocess.Process | None = None
        self._logs: list[Path] = []

    @property
    def pid(self) -> int:
        assert self._process is not None, f"{self.name} was never started"
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def shop(
        self,
        db: Database,
        telegram: FakeTelegram,
        stripe_api: FakeStripe,
        http: aiohttp.ClientSession,
    ) -> Shop:
        """This instance as the `Shop` handle the shared e2e helpers take."""
        return Shop(self.settings, self.url, db, telegram, stripe_api, http)

    async def start(self, *, timeout: float = 60.0) -> None:
        """Start an incarnation and wait until its /healthz answers."""
        assert not self.running, f"{self.name} is already running"
        path = self.workdir / f"{self.name}-{len(self._logs) + 1}.log"
        self._logs.append(path)
        with path.open("wb") as output:
            self._process = await asyncio.create_subprocess_exec(
                str(KEYVEND),
                "run",
                cwd=self.workdir,
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
            )
        async with aiohttp.ClientSession() as http:
            await wait_until(
                lambda: self._healthy(http), timeout=timeout, what=f"{self.name} answering /healthz"
            )

    async def _healthy(self, http: aiohttp.ClientSession) -> bool:
        if not self.running:
            raise AssertionError(
                f"{self.name} exited with {self._process.returncode}:\n{self._tail()}"
            )
        try:
            async with http.get(
                f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(total=2)
            ) as reply:
                return reply.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def kill(self) -> int:
        """SIGKILL: no shutdown code runs. Returns the dead process's id."""
        assert self.running, f"{self.name} is not running"
        pid = self.pid
        self._process.send_signal(signal.SIGKILL)
        await self._process.wait()
        return pid

    async def stop(self, *, timeout: float = 30.0) -> None:
        """SIGTERM, as an operator stops it; it must exit cleanly within `timeout`."""
        if not self.running:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            await self.kill()
            raise AssertionError(
                f"{self.name} ignored SIGTERM for {timeout:.0f} s:\n{self._tail()}"
            ) from None
        assert code == 0, f"{self.name} exited with {code} on SIGTERM:\n{self._tail()}"

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self._logs if p.exists())

    def _tail(self, lines: int = 30) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])


# ---------------------------------------------------------------- a redis-server to kill


class RedisServer:
    """A private redis-server on a free port: the shared one must never be stopped."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = workdir
        self._process: asyncio.subprocess.Process | None = None

    async def start(self, *, timeout: float = 20.0) -> None:
        """Start it (again, on the same port) and wait until it answers PING."""
        self._process = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            cwd=self._workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await wait_until(
            self._answers, timeout=timeout, what=f"redis-server on port {self.port} answering"
        )

    async def _answers(self) -> bool:
        client = Redis.from_url(self.url, socket_timeout=1)
        try:
            return await client.ping()
        except (OSError, RedisError):
            return False
        finally:
            await client.aclose()

    async def keys(self) -> list[str]:
        """Every key stored (the server is private, so these are all the app's)."""
        client = Redis.from_url(self.url, decode_responses=True)
        try:
            return await client.keys("*")
        finally:
            await client.aclose()

    async def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGKILL)
            await self._process.wait()


# ---------------------------------------------------------------- Stripe's retries


@dataclass
class StripeRetries:
    """Posts signed events to the app the way Stripe does: any answer but 200 (a refused or
    dropped connection, a 5xx) means the event is sent again, freshly signed, until a 200.

    `urls` are taken in turn, so events spread over several instances.
    """

    http: aiohttp.ClientSession
    stripe_api: FakeStripe
    urls: list[str]
    parallel: int = 8
    attempts: Counter[str] = field(default_factory=Counter)  # event id -> POSTs made
    outcomes: dict[str, str] = field(default_factory=dict)  # event id -> outcome its 200 reported
    refusals: Counter[str] = field(
        default_factory=Counter
    )  # "HTTP 500", "ClientOSError"... -> times
    in_flight: int = 0
    _turn: int = 0

    @property
    def answered(self) -> int:
        return len(self.outcomes)

    @property
    def retried(self) -> int:
        """Events that needed more than one POST."""
        return sum(1 for n in self.attempts.values() if n > 1)

    async def send_all(self, events: Iterable[dict[str, Any]]) -> None:
        gate = asyncio.Semaphore(self.parallel)

        async def one(event: dict[str, Any]) -> None:
            async with gate:
                await self.send(event)

        await asyncio.gather(*(one(e) for e in events))

    async def send(
        self, event: dict[str, Any], *, url: str | None = None, timeout: float = 90.0
    ) -> str:
        """Deliver one event until it is answered 200; returns the outcome the app reported."""
        deadline = time.monotonic() + timeout
        backoff = 0.05
        while True:
            self.attempts[event["id"]] += 1
            answer = await self._post(url or self._next_url(), event)
            if answer is not None:
                self.outcomes[event["id"]] = answer["outcome"]
                return answer["outcome"]
            assert time.monotonic() < deadline, (
                f"event {event['id']} never answered 200 within {timeout:.0f} s"
            )
            await asyncio.sleep(backoff)
            backoff = min(1.0, backoff * 2)

    async def _post(self, url: str, event: dict[str, Any]) -> dict[str, Any] | None:
        body, headers = self.stripe_api.signed(event)
        self.in_flight += 1
        try:
            async with self.http.post(
                f"{url}/stripe/webhook",
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=15),
            ) as reply:
                if reply.status == 200:
                    return await reply.json()
                self.refusals[f"HTTP {reply.status}"] += 1
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.refusals[type(exc).__name__] += 1
        finally:
            self.in_flight -= 1
        return None

    def _next_url(self) -> str:
        self._turn = (self._turn + 1) % len(self.urls)
        return self.urls[self._turn]


# ---------------------------------------------------------------- the outbox


async def leased_to(shop: Shop, pid: int) -> dict[int, datetime]:
    """Orders whose queued delivery a process holds the lease on: order id -> lease end.

    The lease owner is `host:pid:random`, so the pid names the process.
    """
    return dict(
        await rows(
            shop,
            select(Delivery.order_id, Delivery.lease_expires_at).where(
                Delivery.status == DeliveryStatus.QUEUED,
                Delivery.lease_owner.like(f"%:{pid}:%"),
            ),
        )
    )


async def sent_times(shop: Shop, order_ids: Iterable[int]) -> dict[int, datetime]:
    """When each order's key delivery was recorded as sent."""
    return dict(
        await rows(
            shop,
            select(Delivery.order_id, Delivery.sent_at).where(
                Delivery.order_id.in_(list(order_ids)),
                Delivery.kind == DeliveryKind.KEYS,
                Delivery.status == DeliveryStatus.SENT,
            ),
        )
    )


async def sent_count(shop: Shop, order_ids: Iterable[int]) -> int:
    return len(await sent_times(shop, order_ids))
