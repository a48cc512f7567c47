"""Per-user rate limits, shared through Redis when there is one, in-process otherwise.

Built on the `limits` library (moving windows; Redis through redis-py). When Redis cannot be
reached the same limits are counted in this process instead (per instance, so a buyer
spread over several instances gets the limit once per instance): failing open would let one
buyer open a Stripe session per click. While that lasts a warning is logged at most once a
minute, `keyvend_ratelimit_fallback_active` is 1 and `/healthz` reports the shop as degraded.
Redis is tried again every `retry_every` seconds (and on every `/healthz`), and used again
as soon as it answers.
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

    def __init__(
        self,
        limits: dict[str, str],
        *,
        redis_url: str | None,
        metrics: Metrics,
        retry_every: float = 5.0,
    ) -> None:
        self._items: dict[str, RateLimitItem] = {name: parse(spec) for name, spec in limits.items()}
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._redis_storage: Storage | None = None
        self._redis: MovingWindowRateLimiter | None = None
        if redis_url:
            self._redis_storage = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix="keyvend",
                socket_timeout=0.5,
                socket_connect_timeout=0.5,
            )
            self._redis = MovingWindowRateLimiter(self._redis_storage)
        self.shared = bool(redis_url)
        self._metrics = metrics
        self._retry_every = retry_every
        self._retry_at = 0.0
        self._last_warning = 0.0
        self.healthy = True

    @property
    def local(self) -> bool:
        """Whether limits are counted in this process (no Redis, or Redis unreachable)."""
        return self._redis is None or not self.healthy

    async def hit(self, bucket: str, user_id: int) -> datetime | None:
        item = self._items[bucket]
        if self._redis is not None and (self.healthy or time.monotonic() >= self._retry_at):
            # One caller at a time retries a dead Redis; the others count locally meanwhile.
            self._retry_at = time.monotonic() + self._retry_every
            try:
                retry_at = await _hit(self._redis, item, bucket, user_id)
            except Exception as exc:  # noqa: BLE001 - any storage failure: count locally
                self._fall_back(exc)
            else:
                self._recovered()
                return retry_at
        if self._redis is not None:
            self._metrics.count("keyvend_ratelimit_fallback_total")
        return await _hit(self._local, item, bucket, user_id)

    async def ping(self) -> bool:
        """Whether Redis answers (True without Redis); an answer ends a fallback."""
        if self._redis_storage is None:
            return True
        try:
            ok = await self._redis_storage.check()
        except Exception:  # noqa: BLE001 - health check
            ok = False
        if ok:
            self._recovered()
        # A failed PING changes nothing yet: the next hit finds out, falls back and says so.
        return ok

    def _fall_back(self, exc: Exception) -> None:
        self.healthy = False
        self._metrics.ratelimit_fallback.set(1)
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            log.warning(
                "Redis unreachable for rate limits (%s); counting them in this process",
                type(exc).__name__,
            )

    def _recovered(self) -> None:
        if not self.healthy:
            log.info("Redis reachable again; rate limits are shared again")
        self.healthy = True
        self._metrics.ratelimit_fallback.set(0)


async def _hit(
    limiter: MovingWindowRateLimiter, item: RateLimitItem, bucket: str, user_id: int
) -> datetime | None:
    if await limiter.hit(item, bucket, str(user_id)):
        return None
    stats = await limiter.get_window_stats(item, bucket, str(user_id))
    return datetime.fromtimestamp(stats.reset_time, UTC)
