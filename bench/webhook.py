"""Webhook fulfilment: how many paid Checkout Sessions keyvend turns into sales per second.

Signed `checkout.session.completed` events for pre-created pending orders (see
`bench/seed.py`) are posted to `keyvend run` (its own process) at a few concurrency levels;
each must come back 200 with outcome "fulfilled", and afterwards every one of those orders
must be fulfilled with its key sold and a delivery queued, and `keyvend check` must pass.
The figure is events/s at the best level divided by the req/s a bare aiohttp handler
reaches on the same machine, in the same run, driven by the same client (`bench/bare.py`).

While events arrive the delivery worker runs as in production and sends the queued keys
to the fake Bot API at Telegram's own pace (30 messages/s, TELEGRAM_RATE=30): that is the
load a sale day puts beside the webhook, no more.
"""

from __future__ import annotations

from aiohttp import web

from bench import bare, seed
from bench.harness import (
    FIRST_BUYER,
    BareBaseline,
    Context,
    LoadResult,
    Process,
    Row,
    Signed,
    closed_loop,
    database,
    failed_row,
    fakes,
    free_port,
    invariants_hold,
    keyvend_app,
    mb,
    measure_bare,
    ms,
    opened,
    percentile,
    tally,
)
from store.crypto import KeyVault
from tests.e2e.conftest import running, shop_settings
from tests.fakes.stripe import FakeStripe

NAME = "webhook"
GOAL = 0.30
LEVELS = (4, 16, 64)
QUICK_LEVELS = (16,)
TELEGRAM_RATE = 30.0
# Each level stops after its events or this many seconds, whichever comes first.
LEVEL_SECONDS = 10.0


def events_per_level(ctx: Context) -> int:
    return 300 if ctx.quick else 1_000


async def run(ctx: Context) -> list[Row]:
    rows = []
    for kind in ("sqlite", "postgresql"):
        try:
            rows.append(await fulfilment(ctx, kind))
        except Exception as exc:  # noqa: BLE001 - one failed figure must not hide the others
            rows.append(failed_row(f"webhook fulfilment ({kind})", f"≥ {GOAL:.2f}", exc))
    try:
        rows.append(await in_process(ctx))
    except Exception as exc:  # noqa: BLE001 - as above
        rows.append(failed_row("webhook fulfilment, in-process (sqlite)", f"≥ {GOAL:.2f}", exc))
    return rows


async def fulfilment(ctx: Context, kind: str) -> Row:
    levels = QUICK_LEVELS if ctx.quick else LEVELS
    per_level = events_per_level(ctx)
    async with (
        fakes(telegram_cap=TELEGRAM_RATE) as (telegram, stripe),
        database(kind, ctx.scratch(f"webhook-{kind}")) as url,
    ):
        async with opened(url) as db:
            product = await seed.stocked_product(
                db, KeyVault(ctx.key_secret), keys=per_level * len(levels) + 200
            )
            # One order more than is sent: its event is the body the bare baseline receives.
            orders = await seed.pending_orders(
                db, stripe, product, per_level * len(levels) + 1, first_buyer=FIRST_BUYER
            )
        bare = await measure_bare(ctx, seed.paid_events(stripe, [orders.pop()[1]])[0], levels)
        async with keyvend_app(
            ctx,
            url,
            telegram=telegram,
            stripe=stripe,
            telegram_rate=TELEGRAM_RATE,
            name=f"webhook-{kind}",
        ) as app:
            results = {}
            for index, level in enumerate(levels):
                batch = orders[index * per_level : (index + 1) * per_level]
                results[level] = await post_paid(
                    app.port,
                    stripe,
                    [session for _, session in batch],
                    level,
                    time_limit=LEVEL_SECONDS,
                    server=app.process,
                )
            peak = app.process.peak_rss()
        total = sum(result.sent for result in results.values())
        after = await tally(url)
        if after.orders.get("fulfilled", 0) != total or after.keys.get("sold", 0) != total:
            raise RuntimeError(f"after {total} events: orders {after.orders}, keys {after.keys}")
        if sum(after.deliveries.values()) != total:
            raise RuntimeError(f"after {total} events: deliveries {after.deliveries}")
        await invariants_hold(ctx, url)
    best = max(results, key=lambda level: results[level].rate)
    ctx.best_concurrency[kind] = best
    return _row(kind, results, best, bare, total, peak)


async def post_paid(
    port: int,
    stripe: FakeStripe,
    session_ids: list[str],
    concurrency: int,
    *,
    time_limit: float | None = None,
    server: Process | None = None,
) -> LoadResult:
    """Pay the sessions, post their signed events, and insist every one sent was fulfilled."""
    events = seed.paid_events(stripe, session_ids)
    result = await closed_loop(
        port, "/stripe/webhook", events, concurrency, time_limit=time_limit, server=server
    )
    fulfilled = sum(b'"fulfilled"' in body for body in result.bodies)
    if fulfilled != result.sent:
        raise RuntimeError(
            f"{fulfilled} of {result.sent} events fulfilled; statuses {result.statuses}"
        )
    return result


async def in_process(ctx: Context) -> Row:
    """The same measurement with the app in the bench's own event loop (as the e2e tests run
    it): app, load generator and fakes share one thread, and the bare handler is measured
    the same way. Only at the best SQLite concurrency found above."""
    level = ctx.best_concurrency.get("sqlite", 16)
    count = events_per_level(ctx)
    async with (
        fakes(telegram_cap=TELEGRAM_RATE) as (telegram, stripe),
        database("sqlite", ctx.scratch("webhook-in-process")) as url,
    ):
        async with opened(url) as db:
            product = await seed.stocked_product(db, KeyVault(ctx.key_secret), keys=count + 200)
            orders = await seed.pending_orders(
                db, stripe, product, count + 1, first_buyer=FIRST_BUYER
            )
        sample = seed.paid_events(stripe, [orders.pop()[1]])[0]
        bare = await _bare_in_process(sample, level, count * 4)
        settings = shop_settings(url, telegram, stripe, ctx.key_secret, telegram_rate=TELEGRAM_RATE)
        async with running(settings, telegram, stripe):
            result = await post_paid(
                settings.http_port,
                stripe,
                [session for _, session in orders],
                level,
                time_limit=LEVEL_SECONDS,
            )
        await invariants_hold(ctx, url)
    ratio = result.rate / bare
    return Row(
        benchmark="webhook fulfilment, in-process (sqlite)",
        figure=f"{result.rate:.0f} events/s at concurrency {level}; bare aiohttp in-process {bare:.0f} req/s",
        ratio=ratio,
        goal=f"≥ {GOAL:.2f}",
        passed=ratio >= GOAL,
        p50=ms(percentile(result.latencies, 50)),
        p99=ms(percentile(result.latencies, 99)),
        notes=[
            (
                f"`bot.app.serve` in the bench's event loop, sharing one thread with the load generator and "
                f"the fakes, as is the bare handler it is divided by; {result.sent} events, all fulfilled, "
                "`keyvend check` clean"
            )
        ],
    )


async def _bare_in_process(sample: Signed, concurrency: int, count: int) -> float:
    runner = web.AppRunner(bare.build(), access_log=None)
    await runner.setup()
    try:
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        result = await closed_loop(port, "/stripe/webhook", [sample] * count, concurrency)
    finally:
        await runner.cleanup()
    return result.rate


def _row(
    kind: str, results: dict[int, LoadResult], best: int, bare: BareBaseline, total: int, peak: int
) -> Row:
    top = results[best]
    ratio = top.rate / bare.best
    per_level = ", ".join(f"c={c}: {r.rate:.0f}/s" for c, r in results.items())
    bare_levels = ", ".join(f"c={c}: {r:.0f}/s" for c, r in bare.by_concurrency.items())
    cpu = top.cpu_per_request or 0.0
    bare_cpu = bare.cpu_per_request[bare.best_concurrency]
    return Row(
        benchmark=f"webhook fulfilment ({kind})",
        figure=f"{top.rate:.0f} events/s at concurrency {best}; bare aiohttp {bare.best:.0f} req/s",
        ratio=ratio,
        goal=f"≥ {GOAL:.2f}",
        passed=ratio >= GOAL,
        p50=ms(percentile(top.latencies, 50)),
        p99=ms(percentile(top.latencies, 99)),
        notes=[
            f"keyvend per level: {per_level}; bare per level: {bare_levels} ({bare.body_bytes}-byte body)",
            f"server CPU per request: keyvend {cpu * 1000:.2f} ms, bare {bare_cpu * 1000:.3f} ms "
            f"(CPU ratio {bare_cpu / cpu:.3f}, which a busy machine hardly moves)"
            if cpu
            else "no CPU figure",
            (
                f"{total} events, every one answered 200 'fulfilled'; afterwards {total} orders fulfilled, "
                f"{total} keys sold, {total} deliveries queued or sent, `keyvend check` clean"
            ),
            (
                f"app = `keyvend run` subprocess (peak RSS {mb(peak)}); load generator, fake Stripe "
                f"and fake Bot API in the bench process; delivery worker sending at {TELEGRAM_RATE:.0f}/s meanwhile"
            ),
        ],
    )
