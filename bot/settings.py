"""Settings: every knob keyvend reads from the environment or a `.env` file.

One `Settings` object is built at start-up by the composition root and passed down; nothing
else reads the environment. Secrets are `SecretStr` so they never show up in a repr or a log
line, and obvious placeholders copied from `.env.example` are refused with a one-line reason.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_PLACEHOLDER = re.compile(r"change.?me|your[-_ ]|placeholder|x{6,}|<.*>|\.\.\.", re.IGNORECASE)
_BOT_TOKEN = re.compile(r"^\d{3,}:[A-Za-z0-9_-]{30,}$")


class TelegramMode(StrEnum):
    POLLING = "polling"
    WEBHOOK = "webhook"


class OutOfStockPolicy(StrEnum):
    REFUND = "refund"
    BACKORDER = "backorder"


def _refuse_placeholder(name: str, value: SecretStr | str | None) -> None:
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if raw and _PLACEHOLDER.search(raw):
        raise ValueError(
            f"{name} still holds the placeholder from .env.example; set the real value"
        )


class Settings(BaseSettings):
    """The whole configuration of one keyvend process."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Telegram
    bot_token: SecretStr | None = None
    admin_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    telegram_api_url: str = "https://api.telegram.org"
    telegram_mode: TelegramMode = TelegramMode.POLLING
    telegram_webhook_secret: SecretStr | None = None
    telegram_rate: float = Field(30.0, ge=2, description="messages/second this instance may send")

    # Storage
    database_url: str = "sqlite+aiosqlite:///keyvend.db"
    redis_url: str | None = None
    key_encryption_key: SecretStr | None = None

    # Stripe
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str | None = None

    # HTTP server
    public_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    # Set: /metrics answers only `Authorization: Bearer <token>` (for a public port).
    metrics_token: SecretStr | None = None

    # Shop behaviour
    checkout_ttl: timedelta = timedelta(minutes=30)
    key_message_ttl: timedelta = timedelta(minutes=15)
    out_of_stock_policy: OutOfStockPolicy = OutOfStockPolicy.REFUND
    blacklist_on_dispute: bool = False
    rate_limit_updates: str = "30/minute"
    rate_limit_checkouts: str = "5/10 minutes"
    max_unpaid_orders: int = Field(3, ge=1)
    reconcile_interval: timedelta = timedelta(minutes=3)
    delivery_max_attempts: int = Field(12, ge=1)
    # How long a worker's claim on a delivery holds; a dead instance's claims lapse after it.
    delivery_lease: timedelta = timedelta(seconds=60)
    log_level: str = "INFO"

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _parse_admin_ids(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
            try:
                return frozenset(int(p) for p in parts)
            except ValueError:
                raise ValueError(
                    "ADMIN_IDS must be Telegram user ids separated by commas"
                ) from None
        return value

    @field_validator("checkout_ttl")
    @classmethod
    def _stripe_session_window(cls, value: timedelta) -> timedelta:
        # Stripe only accepts expires_at between 30 minutes and 24 hours ahead.
        if not timedelta(minutes=30) <= value <= timedelta(hours=24):
            raise ValueError("CHECKOUT_TTL must be between 30 minutes and 24 hours")
        return value

    @field_validator("bot_token")
    @classmethod
    def _check_bot_token(cls, value: SecretStr | None) -> SecretStr | None:
        _refuse_placeholder("BOT_TOKEN", value)
        if value is not None and not _BOT_TOKEN.match(value.get_secret_value()):
            raise ValueError(
                "BOT_TOKEN does not look like a token from @BotFather (digits:letters)"
            )
        return value

    @field_validator("stripe_secret_key")
    @classmethod
    def _check_stripe_key(cls, value: SecretStr | None) -> SecretStr | None:
        _refuse_placeholder("STRIPE_SECRET_KEY", value)
        if value is not None and not value.get_secret_value().startswith(("sk_", "rk_")):
            raise ValueError("STRIPE_SECRET_KEY must be a secret key (sk_test_... or sk_live_...)")
        return value

    @field_validator("stripe_webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        _refuse_placeholder("STRIPE_WEBHOOK_SECRET", value)
        if value is not None and not value.get_secret_value().startswith("whsec_"):
            raise ValueError("STRIPE_WEBHOOK_SECRET must be a signing secret (whsec_...)")
        return value

    @field_validator("key_encryption_key", "telegram_webhook_secret", "metrics_token")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        _refuse_placeholder("a secret setting", value)
        return value

    @field_validator(
        "bot_token",
        "stripe_secret_key",
        "stripe_webhook_secret",
        "key_encryption_key",
        "telegram_webhook_secret",
        "metrics_token",
        "redis_url",
        "stripe_api_base",
        "public_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if (self.stripe_secret_key is None) != (self.stripe_webhook_secret is None):
            raise ValueError("set both STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET, or neither")
        if self.telegram_mode is TelegramMode.WEBHOOK and not self.public_url:
            raise ValueError(
                "TELEGRAM_MODE=webhook needs PUBLIC_URL (the https address of this server)"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def stripe_enabled(self) -> bool:
        return self.stripe_secret_key is not None

    def secrets(self) -> list[str]:
        """Every secret value, for the log filter that scrubs them."""
        values = [
            self.bot_token,
            self.stripe_secret_key,
            self.stripe_webhook_secret,
            self.key_encryption_key,
            self.telegram_webhook_secret,
            self.metrics_token,
        ]
        return [v.get_secret_value() for v in values if v is not None]
