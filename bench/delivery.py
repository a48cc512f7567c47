"""Delivery: how close the outbox worker runs to Telegram's message cap, and that it loses
and repeats nothing.

Fulfilled orders with their key messages queued (see `bench/seed.py`) are waiting when
`keyvend run` starts; the fake Bot API enforces a messages/second cap with 429s
(`retry_after`), and the app's TELEGRAM_RATE is set to the same cap, as an operator would.
The figure is the steady rate at which the fake accepted key messages (from the 10th to
the 90th percentile message and past the first second's worth, so neither the start-up
burst a 1-second window allows nor the last stragglers count) divided by the cap. Lost: a buyer whose chat never got a key
message; twice: a chat that got more than one. Each message must carry exactly one
spoiler (the key), no key may reach two chats, and afterwards every delivery is recorded
sent and `keyvend check` passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass

from bench import seed
from bench.harness import (
    FIRST_BUYER,
    Context,
    Row,
    database,
    failed_row,
    fakes,
    invariants_hold,
    key_messages,
    keyvend_app,
    mb,
    opened,
    tally,
)
from store.crypto import KeyVault
from tests.fakes.telegram import FakeTelegram

NAME = "delivery"
GOAL = 0.95


@dataclass(frozen=True)
class Plan:
    kind: str
    cap: float  # messages/s the fake Bot API allows, and the app's TELEGRAM_RATE
    count: int


def plans(ctx: Context) -> list[Plan]:
    if ctx.quick:
        return [Plan("sqlite", 300, 600), Plan("sqlite", 30, 150)]
    return [Plan("sqlite", 300, 3_000), Plan("postgresql", 300, 3_000), Plan("sqlite", 30, 300)]


async def run(ctx: Context) -> list[Row]:
    rows = []
    for plan in plans(ctx):
        try:
            rows.append(await deliver(ctx, plan))
        except Exception as exc:  # noqa: BLE001 - one failed figure must not hide the others
            rows.append(failed_row(_name(plan), f"≥ {GOAL:.2f}, 0 lost, 0 twice", exc))
    return rows


def _name(plan: Plan) -> str:
    return f"delivery {plan.count:,} at {plan.cap:.0f}/s ({plan.kind})"


async def deliver(ctx: Context, plan: Plan) -> Row:
    name = f"delivery-{plan.kind}-{plan.cap:.0f}"
    async with (
        fakes(telegram_cap=plan.cap) as (telegram, _),
        database(plan.kind, ctx.scratch(name)) as url,
    ):
        async with opened(url) as db:
            product = await seed.stocked_product(db, KeyVault(ctx.key_secret), keys=plan.count + 10)
            chats = await seed.queued_deliveries(db, product, plan.count, first_buyer=FIRST_BUYER)
        async with keyvend_app(
            ctx, url, telegram=telegram, stripe=None, telegram_rate=plan.cap, name=name
        ) as app:
            cpu = app.process.cpu_seconds()
            await _all_delivered(telegram, chats, timeout=plan.count / plan.cap * 4 + 60)
            await _all_recorded(url, plan.count, timeout=30)
            cpu = app.process.cpu_seconds() - cpu
            peak = app.process.peak_rss()
        await invariants_hold(ctx, url)
    return _row(plan, key_messages(telegram, chats), telegram, peak, cpu)


async def _all_delivered(telegram: FakeTelegram, chats: range, timeout: float) -> None:
    """Wait for a key message in every chat; on timeout the row reports the lost ones."""
    with contextlib.suppress(TimeoutError):
        await telegram.wait_for_count(
            lambda m: m.method == "sendMessage" and m.chat_id in chats, len(chats), timeout
        )


async def _all_recorded(url: str, count: int, timeout: float) -> None:
    """The worker records outcomes in batches: wait until the outbox says every one was sent."""
    deadline = time.monotonic() + timeout
    while (sent := (await tally(url)).deliveries.get("sent", 0)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {sent} of {count} deliveries recorded as sent")
        await asyncio.sleep(0.25)


def steady_rate(times: list[float], cap: float) -> float:
    """Messages/s between the 10th and the 90th percentile arrival, and never counting the
    first second's worth (the burst a 1-second window lets through at the start)."""
    first, last = max(len(times) // 10, int(cap)), len(times) - 1 - len(times) // 10
    if last - first < 10:
        return 0.0
    return (last - first) / max(times[last] - times[first], 1e-9)


def _row(plan: Plan, messages: list, telegram: FakeTelegram, peak: int, cpu: float) -> Row:
    per_chat = Counter(m.chat_id for m in messages)
    lost = plan.count - len(per_chat)
    twice = sum(1 for n in per_chat.values() if n > 1)
    spoilers = [m.spoiler_texts() for m in messages]
    malformed = sum(1 for s in spoilers if len(s) != 1)
    shared = len(spoilers) - malformed - len({s[0] for s in spoilers if len(s) == 1})
    times = sorted(m.time for m in messages)
    rate = steady_rate(times, plan.cap)
    ratio = rate / plan.cap
    return Row(
        benchmark=_name(plan),
        figure=f"{rate:.1f} msg/s against a cap of {plan.cap:.0f}/s; lost {lost}, twice {twice}",
        ratio=ratio,
        goal=f"≥ {GOAL:.2f}, 0 lost, 0 twice",
        passed=ratio >= GOAL and lost == 0 and twice == 0 and malformed == 0 and shared == 0,
        notes=[
            (
                f"{len(messages)} key messages accepted over {times[-1] - times[0]:.1f} s "
                f"({(len(times) - 1) / max(times[-1] - times[0], 1e-9):.1f}/s first to last, start-up burst included); "
                f"the fake answered 429 {telegram.throttled} times; "
                f"{malformed} messages without exactly one key spoiler, {shared} keys seen in two chats"
            ),
            (
                f"app = `keyvend run` subprocess with TELEGRAM_RATE={plan.cap:.0f} (peak RSS {mb(peak)}; "
                f"its CPU time during the run ÷ messages: {cpu / max(len(messages), 1) * 1000:.2f} ms); "
                "fake Bot API in the bench process; all deliveries recorded sent, `keyvend check` clean"
            ),
        ]
        if times
        else ["no key message arrived"],
    )
