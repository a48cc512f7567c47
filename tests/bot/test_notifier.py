"""The notifier's windows: per kind, a few alerts as they are, then one summary per window.

A fake `send` records what would reach the admins; the window is shortened so a "minute"
passes in a fraction of a second. The running app's storm, webhook and languages are in
tests/e2e/test_alerts.py.
"""

from __future__ import annotations

import asyncio

from bot.metrics import Metrics
from bot.notifier import AdminNotifier
from handlers.alerts import AlertKind

WINDOW = 0.3
ADMINS = (1, 2)


def _alert(n: int):
    return lambda language: f"alert {n} ({language})"


async def test_each_kind_gets_its_burst_then_one_summary_per_window_while_the_storm_lasts() -> None:
    sent: list[tuple[int, str]] = []

    async def send(chat: int, text: str, buttons: object = None) -> None:
        sent.append((chat, text))

    notifier = AdminNotifier(
        send, ADMINS, Metrics(), languages=lambda: _languages(), window=WINDOW, burst=2
    )
    stop = asyncio.Event()
    runner = asyncio.create_task(notifier.run(stop))
    for n in range(100):
        notifier.alert(AlertKind.LOW_STOCK, _alert(n))
    for n in range(100, 130):
        notifier.alert(AlertKind.REFUND, _alert(n))
    await asyncio.sleep(WINDOW * 1.5)  # the first window ends: its summaries go out
    first = list(sent)
    for n in range(130, 170):  # the storm goes on: nothing but the next summary
        notifier.alert(AlertKind.LOW_STOCK, _alert(n))
    await asyncio.sleep(WINDOW * 1.5)
    second = sent[len(first) :]
    await asyncio.sleep(WINDOW * 1.5)  # a quiet window ends the storm
    notifier.alert(AlertKind.LOW_STOCK, _alert(999))
    stop.set()
    await runner

    to_admin_2 = [text for chat, text in first if chat == 2]
    assert to_admin_2 == [
        "alert 0 (zh)",
        "alert 1 (zh)",
        "alert 100 (zh)",
        "alert 101 (zh)",
        "⚠️ 过去一分钟内还有 98 条提醒：库存不足。请查看 /stats。",
        "⚠️ 过去一分钟内还有 28 条提醒：退款。请查看 /stats。",
    ]
    assert {text for chat, text in first if chat == 1} == {
        t.replace("(zh)", "(en)") for t in to_admin_2[:4]
    } | {
        "⚠️ 98 more alerts in the last minute: low stock. See /stats.",
        "⚠️ 28 more alerts in the last minute: refunds. See /stats.",
    }
    assert [text for chat, text in second if chat == 1] == [
        "⚠️ 40 more alerts in the last minute: low stock. See /stats."
    ]
    assert sent[-2:] == [(1, "alert 999 (en)"), (2, "alert 999 (zh)")]


async def _languages() -> dict[int, str]:
    return {2: "zh"}  # admin 1 never talked to the shop: English


async def test_a_failing_send_does_not_stop_the_other_admins_alerts() -> None:
    sent: list[int] = []

    async def send(chat: int, text: str, buttons: object = None) -> None:
        if chat == 1:
            raise ConnectionError("chat 1 is unreachable")
        sent.append(chat)

    notifier = AdminNotifier(send, ADMINS, Metrics(), window=WINDOW)
    notifier.alert(AlertKind.DISPUTE, _alert(1))
    await notifier.flush()

    assert sent == [2]
