"""Prometheus metrics: what `/metrics` exposes, in a registry owned by one process.

Labels are bounded vocabularies (outcomes, event types, reasons); nothing that identifies a
buyer, an order or a key ever becomes a label or a value.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_COUNTERS = {
    "keyvend_transitions_total": ("Order transitions applied, by outcome", ("outcome",)),
    "keyvend_checkouts_total": ("Checkout attempts, by outcome", ("outcome",)),
    "keyvend_webhook_events_total": (
        "Stripe events handled, by type and outcome",
        ("type", "outcome"),
    ),
    "keyvend_webhook_rejected_total": ("Stripe webhook requests rejected, by reason", ("reason",)),
    "keyvend_webhook_ignored_total": (
        "Signed Stripe events ignored: no such order, or not its own checkout or payment",
        ("reason",),
    ),
    "keyvend_deliveries_total": ("Delivery attempts, by outcome", ("outcome",)),
    "keyvend_telegram_retry_after_total": ("Telegram 429 answers seen by the delivery worker", ()),
    "keyvend_ratelimit_fallback_total": (
        "Rate-limit checks counted in this process because Redis was unreachable",
        (),
    ),
    "keyvend_alerts_total": ("Admin alerts raised, by kind", ("kind",)),
    "keyvend_alert_webhook_total": ("Alerts POSTed to ALERT_WEBHOOK_URL, by outcome", ("outcome",)),
    "keyvend_api_orders_total": ("Business API orders placed, by status", ("status",)),
    "keyvend_client_deliveries_total": (
        "Client webhook calls and e-mails, by channel and outcome",
        ("channel", "outcome"),
    ),
}


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._counters = {
            name: Counter(name, doc, labels, registry=self.registry)
            for name, (doc, labels) in _COUNTERS.items()
        }
        self.webhook_seconds = Histogram(
            "keyvend_webhook_seconds",
            "Time to verify and apply a Stripe event",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.delivery_lag_seconds = Histogram(
            "keyvend_delivery_lag_seconds",
            "From delivery queued to Telegram accepting the message",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.ratelimit_fallback = Gauge(
            "keyvend_ratelimit_fallback_active",
            "1 while Redis is unreachable and rate limits are counted per instance",
            registry=self.registry,
        )

    def count(self, name: str, **labels: str) -> None:
        counter = self._counters[name]
        (counter.labels(**labels) if labels else counter).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
