"""What an operator relies on: `/healthz`, `/metrics`, and logs that never carry a secret or a key.

Health and metrics are read over HTTP from the running shop. The log test installs the same
logging `keyvend run` installs (`bot.logs.configure`), at DEBUG, runs a whole purchase with a
failed Telegram send and a failed Stripe call on the way (error paths are where secrets
leak), and searches everything written for the secrets and the keys.
"""

from __future__ import annotations

import logging
import time

import pytest

from bot import logs
from bot.settings import Settings
from store.models import OrderStatus
from tests.e2e.conftest import Shop, running, shop_settings
from tests.e2e.helpers import (
    captured_logs,
    checkout,
    health,
    key_message,
    metrics,
    order_status,
    outbox_empty,
    pay,
    post,
    stock,
    wait_until,
)

BUYER = 7001
REDIS = "redis://127.0.0.1:6379/14"


async def test_healthz_without_redis(shop: Shop) -> None:
    assert await health(shop) == {
        "status": "ok",
        "database": True,
        "redis": None,
        "rate_limits": "local",
    }


async def test_healthz_with_redis(sqlite_url: str, telegram, stripe_api, key_secret: str) -> None:
    # Redis down at start is refused (tests/bot/test_startup_errors.py); down later, the shop
    # is degraded and buyers still buy (tests/e2e/test_redis_down.py).
    config = shop_settings(sqlite_url, telegram, stripe_api, key_secret, redis_url=REDIS)
    async with running(config, telegram, stripe_api) as shop:
        assert await health(shop) == {
            "status": "ok",
            "database": True,
            "redis": True,
            "rate_limits": "redis",
        }
        await stock(shop, "GAME", 1)
        sale = await checkout(shop, BUYER, "GAME")
        assert await order_status(shop, sale.order_id) == OrderStatus.PENDING


# ---------------------------------------------------------------- metrics


async def test_metrics_count_webhooks_transitions_and_deliveries(shop: Shop) -> None:
    await stock(shop, "GAME", 2)
    sale = await checkout(shop, BUYER, "GAME")
    body, before = await metrics(shop)
    assert "keyvend_webhook_events_total" in body and "keyvend_deliveries_total" in body

    await pay(shop, sale)
    delivered = await key_message(shop, BUYER)
    await post(shop, "/stripe/webhook", b"{}", {"Stripe-Signature": "t=1,v1=00"})

    async def after_delivery() -> dict | None:
        _, samples = await metrics(shop)
        return (
            samples
            if samples.get(("keyvend_deliveries_total", (("outcome", "sent"),))) == 1
            else None
        )

    after = await wait_until(after_delivery, what="the delivery to be counted")
    completed = (("outcome", "fulfilled"), ("type", "checkout.session.completed"))
    assert after[("keyvend_webhook_events_total", completed)] == 1
    assert after[("keyvend_transitions_total", (("outcome", "fulfilled"),))] == 1
    assert after[("keyvend_webhook_rejected_total", (("reason", "signature"),))] == 1
    assert after[("keyvend_checkouts_total", (("outcome", "started"),))] == 1
    assert (
        after[("keyvend_webhook_seconds_count", ())]
        == before[("keyvend_webhook_seconds_count", ())] + 2
    )
    # Nothing that identifies a buyer, an order or a key is ever a label or a value.
    body, _ = await metrics(shop)
    for private in (delivered.spoiler_texts()[0], str(BUYER), sale.session_id):
        assert private not in body


METRICS_TOKEN = "metrics-0f3c9a7e51d24b88a6"


async def test_metrics_with_a_token_set_answer_only_the_bearer_of_it(
    sqlite_url: str, telegram, stripe_api, key_secret: str
) -> None:
    # In webhook mode the port is public: without the token, /metrics tells anyone the shop's
    # sales rate. /healthz stays open for the load balancer.
    config = shop_settings(
        sqlite_url, telegram, stripe_api, key_secret, metrics_token=METRICS_TOKEN
    )
    async with running(config, telegram, stripe_api) as shop:
        url = f"{shop.url}/metrics"
        refused = {}
        for name, headers in {
            "none": {},
            "wrong token": {"Authorization": "Bearer metrics-0f3c9a7e51d24b88a7"},
            "a prefix of it": {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}"},
            "another scheme": {"Authorization": f"Basic {METRICS_TOKEN}"},
            "no scheme": {"Authorization": METRICS_TOKEN},
        }.items():
            async with shop.http.get(url, headers=headers) as response:
                refused[name] = (response.status, await response.text())
        async with shop.http.get(
            url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        ) as response:
            allowed, body = response.status, await response.text()
        assert (await health(shop))["status"] == "ok"

    assert all(status == 401 for status, _ in refused.values()), refused
    assert all("keyvend_" not in text and METRICS_TOKEN not in text for _, text in refused.values())
    assert allowed == 200 and "keyvend_checkouts_total" in body


def test_an_empty_metrics_token_leaves_metrics_open_and_a_placeholder_is_refused() -> None:
    # `METRICS_TOKEN=` as copied from .env.example must not demand an empty bearer token.
    assert Settings(_env_file=None, metrics_token="").metrics_token is None
    with pytest.raises(ValueError, match="placeholder"):
        Settings(_env_file=None, metrics_token="changeme")


# ---------------------------------------------------------------- logs


class _Everything(logging.Handler):
    """Keeps every record, formatted, before any filter: what keyvend's own code wrote."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, logging.Formatter().format(record)))


def _secrets(settings: Settings) -> dict[str, str]:
    return {
        "bot token": settings.bot_token.get_secret_value(),
        "bot token's secret half": settings.bot_token.get_secret_value().split(":", 1)[1],
        "Stripe key": settings.stripe_secret_key.get_secret_value(),
        "webhook secret": settings.stripe_webhook_secret.get_secret_value(),
        "key encryption key": settings.key_encryption_key.get_secret_value(),
    }


KEYS = ["LOGCHECK-KEY-0001", "LOGCHECK-KEY-0002"]


async def test_no_secret_or_key_reaches_the_logs_during_a_purchase(
    sqlite_url: str,
    telegram,
    stripe_api,
    key_secret: str,
) -> None:
    config = shop_settings(sqlite_url, telegram, stripe_api, key_secret)
    ours = _Everything()
    for name in ("bot", "handlers", "store"):
        logging.getLogger(name).addHandler(ours)
    try:
        with captured_logs(config) as captured:
            async with running(config, telegram, stripe_api) as shop:
                await stock(
                    shop, "GAME", KEYS, low_stock_threshold=0
                )  # no alert to take the failure
                stripe_api.fail_next(1)  # the SDK retries the checkout once
                sale = await checkout(shop, BUYER, "GAME")
                telegram.fail_next(
                    1
                )  # the first send of the key fails: the worker logs and retries
                since = time.monotonic()
                await pay(shop, sale)
                assert (await key_message(shop, BUYER, since=since)).spoiler_texts() == [KEYS[0]]
                await outbox_empty(shop)
    finally:
        for name in ("bot", "handlers", "store"):
            logging.getLogger(name).removeHandler(ours)

    written = captured.stream.getvalue()
    assert "keyvend is running" in written  # the capture did see the run
    assert any("retrying" in line for _, line in ours.lines)  # and the failure path
    for what, secret in {**_secrets(config), **{key: key for key in KEYS}}.items():
        assert secret not in written, f"{what} in the log output"
        leaks = [name for name, line in ours.lines if secret in line]
        assert not leaks, f"{what} logged by {leaks} (before any filter)"


# ---------------------------------------------------------------- the redaction filter itself


def _filtered(secrets: list[str], msg: str, *args: object, exc: BaseException | None = None) -> str:
    record = logging.LogRecord(
        "t",
        logging.ERROR,
        __file__,
        1,
        msg,
        args or None,
        (type(exc), exc, exc.__traceback__) if exc else None,
    )
    assert logs.RedactSecrets(secrets).filter(record) is True
    return logging.Formatter("%(message)s").format(record)


TOKEN = "123456:TEST-token-abcdefghijklmnopqrstuvwxyz0123"


def test_redaction_covers_arguments_and_the_message() -> None:
    out = _filtered([TOKEN], "calling %s/bot%s/getMe 100%% done", "http://api", TOKEN)

    assert TOKEN not in out and "***" in out
    assert out == "calling http://api/bot***/getMe 100% done"


def test_redaction_covers_tracebacks() -> None:
    try:
        raise RuntimeError(f"request to /bot{TOKEN}/sendMessage failed")
    except RuntimeError as error:
        out = _filtered([TOKEN], "send failed", exc=error)

    assert "RuntimeError" in out and TOKEN not in out


def test_redaction_prefers_the_longest_secret() -> None:
    # A key that contains another secret must not be half-redacted around it.
    out = _filtered(
        ["sk_test_abcdefgh", "sk_test_abcdefgh_longer"],
        "keys: %s and %s",
        "sk_test_abcdefgh_longer",
        "sk_test_abcdefgh",
    )

    assert out == "keys: *** and ***"


def test_redaction_leaves_clean_records_alone() -> None:
    assert _filtered([TOKEN], "order %s paid", 42) == "order 42 paid"
    assert _filtered([], "nothing %s", "configured") == "nothing configured"
