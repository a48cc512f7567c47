"""Per-user rate limits, shared through Redis when there is one, in-process otherwise.

Built on the `limits` library (moving windows; Redis through redis-py). Limiting protects
the shop, it is not part of what makes a sale correct, so it fails open: when Redis cannot
be reached the action is allowed, a warning is logged at most once a minute, a metric is
counted and `/healthz` reports the shop as degraded.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from bot.metrics import Metrics

log = logging.getLogger(__name__)

_WARN_EVERY = 60.0


class RateLimiter:
    """`hit(bucket, user)` counts one action and says whether (and until when) it is refused."""

    def __init__(self, limits: dict[str, str], *, redis_url: str | None, metrics: Metrics) -> None:
        self._items: dict[str, RateLimitItem] = {name: parse(spec) for name, spec in limits.items()}
        self._storage: Storage
        if redis_url:
            self._storage = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix="keyvend",
                socket_timeout=0.5,
                socket_connect_timeout=0.5,
            )
        else:
            self._storage = MemoryStorage()
        self.shared = bool(redis_url)
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._metrics = metrics
        self._last_warning = 0.0
        self.healthy = True

    async def hit(self, bucket: str, user_id: int) -> datetime | None:
        item = self._items[bucket]
        try:
            if await self._limiter.hit(item, bucket, str(user_id)):
                self.healthy = True
                return None
            stats = await self._limiter.get_window_stats(item, bucket, str(user_id))
        except Exception as exc:  # noqa: BLE001 - any storage failure: fail open
            self._failed_open(exc)
            return None
        self.healthy = True
        return datetime.fromtimestamp(stats.reset_time, UTC)

    async def ping(self) -> bool:
        try:
            ok = await self._storage.check()
        except Exception:  # noqa: BLE001 - health check
            ok = False
        self.healthy = ok
        return ok

    def _failed_open(self, exc: Exception) -> None:
        self.healthy = False
        self._metrics.count("keyvend_ratelimit_fail_open_total")
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            log.warning(
                "rate limiter storage unreachable (%s); allowing requests unlimited",
                type(exc).__name__,
            )
