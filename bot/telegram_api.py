"""How keyvend talks to the Bot API: PTB's HTTP transport on aiohttp, and the send pace.

python-telegram-bot ships an httpx transport. Profiling the delivery worker showed it
spending 3-5 ms of CPU per message, most of it in httpcore's connection-pool bookkeeping;
`AiohttpRequest` sends the same requests through one aiohttp session for about 1 ms. It
implements PTB's documented `BaseRequest` interface: PTB still builds every request, parses
every answer and raises its own errors (RetryAfter, Forbidden, BadRequest).

`SendPace` is PTB's `BaseRateLimiter` for the bot-wide limit. PTB's reference limiter takes
a slot first and then waits out a 429, so every send queued during the pause goes out at
once when it ends, earning the next 429 (measured: 7 cascading 429s and 180 msg/s against a
300/s cap). Here a send waits out the pause first and takes its slot after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from aiolimiter import AsyncLimiter
from telegram._utils.defaultvalue import DefaultValue
from telegram.error import NetworkError, RetryAfter, TimedOut
from telegram.ext import BaseRateLimiter
from telegram.request import BaseRequest, RequestData

log = logging.getLogger(__name__)


class AiohttpRequest(BaseRequest):
    def __init__(
        self,
        *,
        connections: int = 16,
        connect_timeout: float = 5.0,
        read_timeout: float = 5.0,
        write_timeout: float = 5.0,
        media_write_timeout: float = 20.0,
    ) -> None:
        self._connections = connections
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._media_write_timeout = media_write_timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float:
        return self._read_timeout

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                headers={"User-Agent": self.USER_AGENT},
            )

    async def shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: float | None | DefaultValue[None] = BaseRequest.DEFAULT_NONE,
        write_timeout: float | None | DefaultValue[None] = BaseRequest.DEFAULT_NONE,
        connect_timeout: float | None | DefaultValue[None] = BaseRequest.DEFAULT_NONE,
        pool_timeout: float | None | DefaultValue[None] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        if self._session is None:
            raise RuntimeError("AiohttpRequest is not initialized")
        files = request_data.multipart_data if request_data else None
        read = self._read_timeout if isinstance(read_timeout, DefaultValue) else read_timeout
        write = (
            (self._media_write_timeout if files else self._write_timeout)
            if isinstance(write_timeout, DefaultValue)
            else write_timeout
        )
        connect = (
            self._connect_timeout if isinstance(connect_timeout, DefaultValue) else connect_timeout
        )
        # aiohttp has no separate write timeout: the request may take until both have passed.
        timeout = aiohttp.ClientTimeout(
            total=None if read is None or write is None else read + write,
            sock_connect=connect,
            sock_read=read,
        )
        try:
            async with self._session.request(
                method, url, data=self._body(request_data), timeout=timeout
            ) as response:
                return response.status, await response.read()
        except TimeoutError as exc:
            raise TimedOut from exc
        except aiohttp.ClientError as exc:
            # The URL's path holds the bot token, and some of aiohttp's errors quote the URL.
            reason = str(exc).replace(url, "<Bot API URL>")
            raise NetworkError(f"aiohttp.{type(exc).__name__}: {reason}") from exc

    @staticmethod
    def _body(request_data: RequestData | None) -> aiohttp.FormData | dict[str, str] | None:
        if request_data is None:
            return None
        if not request_data.contains_files:
            return request_data.json_parameters
        form = aiohttp.FormData()
        for name, value in request_data.json_parameters.items():
            form.add_field(name, value)
        for name, (filename, content, mime_type) in request_data.multipart_data.items():
            form.add_field(name, content, filename=filename, content_type=mime_type)
        return form


class SendPace(BaseRateLimiter[int]):
    """Never more than about `rate` messages a second bot-wide (`paid_rate` for those sent
    as paid broadcast); 429s waited out, then retried."""

    def __init__(
        self,
        rate: float,
        *,
        max_retries: int = 2,
        paid_rate: float | None = None,
        on_sent: Callable[[bool], None] | None = None,
    ) -> None:
        self._bucket = _bucket(rate)
        # Sends with allow_paid_broadcast have Telegram's higher limit and a bucket of their own.
        self._paid_bucket = _bucket(paid_rate) if paid_rate is not None else self._bucket
        self._max_retries = max_retries
        self._resume_at = 0.0  # loop time before which Telegram asked us not to send
        self._on_sent = on_sent  # told of each message sent, and whether it was a paid one

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        """Nothing to release."""

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        paced = data.get("chat_id") is not None  # messages and their edits, not getUpdates
        paid = bool(data.get("allow_paid_broadcast"))
        bucket = self._paid_bucket if paid else self._bucket
        for attempt in range(self._max_retries + 1):
            while (pause := self._resume_at - loop.time()) > 0 or paced:
                if pause > 0:
                    await asyncio.sleep(pause)
                    continue
                await bucket.acquire()
                if self._resume_at <= loop.time():
                    break  # a slot, and no 429 came while queueing for it
            try:
                answer = await callback(*args, **kwargs)
                if paced and self._on_sent is not None:
                    self._on_sent(paid)
                return answer
            except RetryAfter as exc:
                seconds = retry_after(exc)
                self._resume_at = max(self._resume_at, loop.time() + seconds + 0.1)
                log.info("Telegram asked to wait %.1f s before sending more", seconds)
                if attempt == self._max_retries:
                    raise
        raise AssertionError("unreachable")


def _bucket(rate: float) -> AsyncLimiter:
    """A leaky bucket draining at 97% of `rate`, holding 1% of it (at least a message and a
    bit): a burst of a full second's worth would earn 429s from Telegram's per-second window,
    while the small slack absorbs timer latency that a one-message bucket would lose."""
    burst = max(1.2, rate * 0.01)
    return AsyncLimiter(burst, burst / (rate * 0.97))


def retry_after(exc: RetryAfter) -> float:
    """Seconds Telegram asked to wait (read as PTB's own limiter does: its public property
    answers int or timedelta depending on an environment variable, with a warning)."""
    return exc._retry_after.total_seconds()
