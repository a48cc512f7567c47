"""Background jobs: reconciliation with the payment provider, owed refunds, key-message expiry.

Reconciliation is the safety net under the webhook: at start and every few minutes it asks
the provider about every open order whose checkout should have closed, fulfils the ones that
were paid (a lost webhook, a crash) and releases the ones that expired; it cancels orders
whose checkout never got recorded; and it makes the refunds owed for payments that found no
stock. Each step is the same idempotent store function the webhook uses, so running it
twice, or on two instances at once, does no harm. A provider that lists its payments
(Telegram Stars) is also asked for the ones the ledger lacks, and those are applied.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from telegram import Bot
from telegram.error import BadRequest, Forbidden, TelegramError

from bot.waiting import wait_any
from handlers.alerts import AlertKind, AlertText
from handlers.context import Shop
from handlers.i18n import t
from store import deliveries, orders, reconciliation, subscriptions
from store.errors import NotFound, OrderNotPayable, PaymentUnavailable
from store.orders import Outcome
from store.payments import Event

log = logging.getLogger(__name__)

_RETRY_UNREACHABLE = timedelta(minutes=2)
_RECHECK_OPEN = timedelta(minutes=5)
# A subscription whose period ran out is ended this long after, if no renewal came: a late
# renewal payment (or its update, found by reconciliation) has that long to arrive.
_RENEWAL_GRACE = timedelta(days=1)
# Admins hear this long ahead when stock will not cover the subscriptions renewing.
_RENEWAL_WARNING = timedelta(days=3)


async def reconcile(shop: Shop, *, now: datetime | None = None) -> list[orders.Result]:
    """One pass: cancel orphans, settle overdue checkouts, make owed refunds."""
    results: list[orders.Result] = []
    cancelled = await reconciliation.cancel_orphans(shop.db, now=now)
    if cancelled:
        log.info("cancelled %d orders whose checkout was never recorded", len(cancelled))
    for pending in await reconciliation.due_for_check(shop.db, now=now):
        moment = now or datetime.now(UTC)
        try:
            result = await shop.confirm(pending.order_id, close_if_open=True, now=now)
        except PaymentUnavailable:
            await reconciliation.postpone_check(
                shop.db, pending.order_id, moment + _RETRY_UNREACHABLE
            )
            continue
        except (NotFound, OrderNotPayable):
            continue  # settled by a webhook meanwhile
        if result.outcome is Outcome.AWAITING:
            await reconciliation.postpone_check(
                shop.db, pending.order_id, moment + shop.checkout_policy.ttl * 12
            )
        elif result.outcome is Outcome.UNCHANGED:
            await reconciliation.postpone_check(shop.db, pending.order_id, moment + _RECHECK_OPEN)
        else:
            log.info("reconciliation settled order %s: %s", pending.order_id, result.outcome)
        results.append(result)
    ended = await subscriptions.end_lapsed(shop.db, grace=_RENEWAL_GRACE, now=now)
    if ended:
        log.info("%d subscriptions ended unrenewed", len(ended))
        shop.wake_delivery()
    await warn_of_renewals_short(shop, now=now)
    results += await apply_missed_payments(shop)
    results += await shop.make_owed_refunds()
    return results


async def warn_of_renewals_short(shop: Shop, *, now: datetime | None = None) -> None:
    """Alert the admins when stock will not cover the subscriptions renewing in the next
    days: once per product and shortfall, not on every pass."""
    shortages = await subscriptions.renewals_short(shop.db, within=_RENEWAL_WARNING, now=now)
    current = {s.sku: s.due - s.available for s in shortages}
    for short in shortages:
        if shop.renewal_warnings.get(short.sku) != current[short.sku]:
            shop.notifier.alert(AlertKind.LOW_STOCK, _renewals_short(short))
    shop.renewal_warnings = current


def _renewals_short(short: subscriptions.RenewalShortage) -> AlertText:
    return lambda lang: t(
        lang,
        "Restock {sku}: {due} subscriptions renew within {days} days and {n} keys are available.",
        sku=short.sku,
        due=short.due,
        days=_RENEWAL_WARNING.days,
        n=short.available,
    )


async def apply_missed_payments(shop: Shop) -> list[orders.Result]:
    """Apply payments a provider lists that the ledger lacks (their update was lost)."""
    results = []
    for name, gateway in shop.gateways.items():
        try:
            listed = await gateway.missed_payments()
        except PaymentUnavailable:
            continue  # asked again on the next pass
        missing = await reconciliation.unrecorded(
            shop.db, name, [event_id for event_id, _ in listed]
        )
        for event_id, payment in listed:
            if event_id not in missing:
                continue
            result = await shop.apply_payment(
                name, payment, Event(name, event_id, "reconciled_payment")
            )
            log.info("reconciliation applied a missed payment: order %s", payment.order_id)
            results.append(result)
    return results


async def seconds_to_next_check(shop: Shop, longest: float) -> float:
    """How long reconciliation may sleep: until the next open order is due, `longest` at most.

    A reservation shorter than Stripe's 30-minute minimum ends when the shop closes the
    Stripe session, so the pass must run when it is due, not up to an interval later.
    """
    due = await reconciliation.next_check(shop.db)
    if due is None:
        return longest
    return min(longest, max(0.0, (due - datetime.now(UTC)).total_seconds()))


async def remove_expired_key_messages(shop: Shop, bot: Bot) -> int:
    """Delete key messages whose time in the chat is up; return how many were handled."""
    due = await deliveries.expiring(shop.db)
    handled = []
    for message in due:
        try:
            await bot.delete_message(message.chat_id, message.message_id)
        except TelegramError as exc:
            # Already gone, too old to delete or the chat closed: nothing more to do. Anything
            # else is a network problem: try again next time.
            if not isinstance(exc, (BadRequest, Forbidden)):
                continue
        handled.append(message.reveal_id)
    await deliveries.mark_removed(shop.db, handled)
    return len(handled)


async def every(
    interval: float,
    job,
    stop: asyncio.Event,
    *,
    wake: asyncio.Event | None = None,
    name: str,
    sooner=None,
) -> None:
    """Run `job()` now and then every `interval` seconds (sooner when woken, or when
    `await sooner(interval)` says so) until `stop`."""
    events = (stop,) if wake is None else (stop, wake)
    while not stop.is_set():
        if wake is not None:
            wake.clear()  # before the pass: a wake-up during it means "run again"
        pause = interval
        try:
            await job()
            if sooner is not None:
                # Never spin: at least a second between passes.
                pause = max(1.0, await sooner(interval))
        except Exception:  # a failing pass must not end the job
            log.exception("%s failed; will run again", name)
        await wait_any(*events, timeout=pause)
