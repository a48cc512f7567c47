"""Admin alerts in the running app: a storm is a handful of messages, in the admin's language.

The shop runs as `keyvend run` runs it, with `ALERT_WEBHOOK_URL` pointing at a local aiohttp
receiver; the admins' chats are the fake Bot API's. A thousand alerts reach the fake and the
receiver as the first few plus one summary that counts the rest; the admin who chose
Chinese reads them in Chinese, the webhook gets English; a webhook that fails at first
is retried, and its address (a credential) is never logged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from handlers.alerts import AlertKind
from handlers.i18n import t
from store import buyers
from tests.e2e.conftest import ADMIN, Launch, free_port
from tests.e2e.helpers import metric, new_keys, stock, text

STORM = 1000
BURST = 5  # AdminNotifier's default: alerts of a kind sent as they are before a summary
TOKEN = "T000SECRET/B000SECRET/xoxbSECRETSECRET"  # the part of a Slack URL that is the secret


@dataclass
class Receiver:
    """A Slack-style incoming webhook: records each JSON body; fails the first `failing`."""

    url: str = ""
    failing: int = 0
    texts: list[str] = field(default_factory=list)
    calls: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.calls <= self.failing:
            return web.Response(status=500)
        self.texts.append((await request.json())["text"])
        return web.Response(text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver(failing=2)
    app = web.Application()
    app.router.add_post(f"/services/{TOKEN}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)  # the test's own log line would quote it
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    receiver.url = f"http://127.0.0.1:{port}/services/{TOKEN}"
    yield receiver
    await runner.cleanup()


def _undeliverable(order: int):
    return lambda lang: t(
        lang,
        "Order #{order}: a {kind} notice could not be delivered ({error}).",
        order=order,
        kind="refunded",
        error="Forbidden",
    )


async def test_a_storm_of_a_thousand_alerts_is_a_handful_of_messages_and_one_summary(
    launch: Launch, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with launch(alert_webhook_url=receiver.url) as shop:
        await stock(
            shop, "GAME", new_keys(2, "GAME")
        )  # the audit after the test greps alerts for its keys
        await buyers.choose_language(shop.db, ADMIN, "zh")
        for order in range(1, STORM + 1):
            shop.parts.notifier.alert(AlertKind.UNDELIVERABLE, _undeliverable(order))
        first = await shop.telegram.wait_for_count(lambda m: m.chat_id == ADMIN, BURST)
        raised = await metric(shop, "keyvend_alerts_total", kind="undeliverable")
    # Stopping sends what the window still holds: the summary.

    to_admin = [text(m) for m in shop.telegram.messages_to(ADMIN)]
    assert raised == STORM
    assert [text(m) for m in first] == [
        f"订单 #{n}：一条 refunded 通知无法发送（Forbidden）。" for n in range(1, BURST + 1)
    ]
    assert to_admin[BURST:] == [
        f"⚠️ 过去一分钟内还有 {STORM - BURST} 条提醒：发送失败。请查看 /stats。"
    ]
    assert receiver.texts == [
        *(
            f"Order #{n}: a refunded notice could not be delivered (Forbidden)."
            for n in range(1, BURST + 1)
        ),
        f"⚠️ {STORM - BURST} more alerts in the last minute: failed deliveries. See /stats.",
    ]
    assert receiver.calls == BURST + 1 + receiver.failing  # the first failures were retried
    assert not [r for r in caplog.records if "SECRET" in r.getMessage()]
