"""The HTTP server: Stripe's webhook, Telegram's webhook, health and metrics, on one aiohttp app.

It runs in the same event loop as the Telegram application. Requests it cannot read get a
4xx with a one-line reason; an unexpected failure is a bare 500 without a traceback (Stripe
then retries, which is what a lost commit needs).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from telegram import Update
from telegram.ext import Application

from bot.metrics import Metrics
from bot.ratelimit import RateLimiter
from bot.stripe_webhook import MAX_BODY, SIGNING_SECRET, stripe_webhook
from handlers import api
from handlers.context import SHOP, Shop

log = logging.getLogger(__name__)

METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
LIMITER: web.AppKey[RateLimiter] = web.AppKey("limiter", RateLimiter)
TELEGRAM: web.AppKey[Application] = web.AppKey("telegram", Application)
TELEGRAM_SECRET: web.AppKey[str] = web.AppKey("telegram_secret", str)
METRICS_TOKEN: web.AppKey[str] = web.AppKey("metrics_token", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time the Stripe webhook; turn an unexpected failure into a plain 500."""
    started = time.perf_counter()
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"error": "internal error"}, status=500)
    finally:
        if request.path == "/stripe/webhook":
            request.app[METRICS].webhook_seconds.observe(time.perf_counter() - started)


async def healthz(request: web.Request) -> web.Response:
    """Report whether the database and Redis answer: ok, degraded (no Redis) or down, and
    where rate limits are counted (`local`: in this process, per instance)."""
    database = await request.app[SHOP].db.ping()
    limiter = request.app[LIMITER]
    redis = await limiter.ping() if limiter.shared else None
    status = "down" if not database else "degraded" if redis is False else "ok"
    return web.json_response(
        {
            "status": status,
            "database": database,
            "redis": redis,
            "rate_limits": "local" if limiter.local or redis is False else "redis",
        },
        status=503 if status == "down" else 200,
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; only to the bearer of METRICS_TOKEN when one is set."""
    token = request.app.get(METRICS_TOKEN)
    if token is not None:
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        # Constant-time: the comparison must not tell a prober how much of the token it has.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            offered.strip().encode(), token.encode()
        ):
            return web.json_response(
                {"error": "metrics need Authorization: Bearer <METRICS_TOKEN>"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
    registry = request.app[METRICS]
    return web.Response(body=registry.render(), headers={"Content-Type": registry.content_type})


async def telegram_webhook(request: web.Request) -> web.Response:
    """Hand an update Telegram posted to the bot, if it carries our secret token."""
    token = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
    if not hmac.compare_digest(token.encode(), request.app[TELEGRAM_SECRET].encode()):
        return web.json_response({"error": "wrong secret token"}, status=403)
    application = request.app[TELEGRAM]
    try:
        data = json.loads(await request.read())
        update = Update.de_json(data, application.bot)
    except (ValueError, TypeError, KeyError, AttributeError):
        return web.json_response({"error": "not a Telegram update"}, status=400)
    if update is None:
        return web.json_response({"error": "not a Telegram update"}, status=400)
    await application.update_queue.put(update)
    return web.Response(status=200)


def build(
    shop: Shop,
    registry: Metrics,
    limiter: RateLimiter,
    *,
    telegram: Application | None = None,
    telegram_secret: str | None = None,
    stripe_webhook_secret: str | None = None,
    metrics_token: str | None = None,
    api_config: api.ApiConfig | None = None,
) -> web.Application:
    """The aiohttp application with every route keyvend serves."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_guard])
    app[SHOP] = shop
    app[METRICS] = registry
    app[LIMITER] = limiter
    if metrics_token is not None:
        app[METRICS_TOKEN] = metrics_token
    if stripe_webhook_secret is not None:
        app[SIGNING_SECRET] = stripe_webhook_secret
    app.router.add_post("/stripe/webhook", stripe_webhook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    if telegram is not None and telegram_secret is not None:
        app[TELEGRAM] = telegram
        app[TELEGRAM_SECRET] = telegram_secret
        app.router.add_post("/telegram/webhook", telegram_webhook)
    if api_config is not None:
        app.add_subapp(api.PREFIX, api.build(api_config))
    return app
