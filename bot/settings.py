"""Settings: every knob keyvend reads from the environment or a `.env` file.

One `Settings` object is built at start-up by the composition root and passed down; nothing
else reads the environment. Secrets are `SecretStr` so they never show up in a repr or a log
line, and obvious placeholders copied from `.env.example` are refused with a one-line reason.
Every value is checked here, at start-up, not when it is first used: `load_settings()` turns
the first bad one into a `ConfigError` naming the variable and what to write instead, and
never echoes a value that could be secret (database and Redis addresses may hold passwords).
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from typing import Annotated
from urllib.parse import urlsplit

import limits
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.connection import parse_url as parse_redis_url
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_PLACEHOLDER = re.compile(r"change.?me|your[-_ ]|placeholder|x{6,}|<.*>|\.\.\.", re.IGNORECASE)
_BOT_TOKEN = re.compile(r"^\d{3,}:[A-Za-z0-9_-]{30,}$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The async drivers keyvend runs on, by database.
_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_DATABASE_EXAMPLES = (
    "sqlite+aiosqlite:///keyvend.db or postgresql+asyncpg://user:password@host:5432/keyvend"
)


class ConfigError(Exception):
    """The settings cannot run a shop; the message says what to set."""


# ---------------------------------------------------------------- durations

_SECONDS_PER_UNIT = {
    **dict.fromkeys(["s", "sec", "secs", "second", "seconds"], 1),
    **dict.fromkeys(["m", "min", "mins", "minute", "minutes"], 60),
    **dict.fromkeys(["h", "hr", "hrs", "hour", "hours"], 3600),
    **dict.fromkeys(["d", "day", "days"], 86400),
    **dict.fromkeys(["w", "week", "weeks"], 7 * 86400),
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)")
_HUMAN_DURATION = re.compile(r"(?:\d+(?:\.\d+)?\s*[a-z]+\s*)+")
_SECONDS = re.compile(r"-?\d+(?:\.\d+)?")
_ISO_DURATION = TypeAdapter(timedelta)


def parse_duration(value: object) -> object:
    """`30m`, `15 min`, `1h 30m`, `90s`, `2 days`, ISO 8601 (`PT30M`) or a number of seconds."""
    if not isinstance(value, str):
        return value  # a timedelta or a number from code: pydantic takes it as it is
    text = value.strip().lower()
    if _SECONDS.fullmatch(text):
        return timedelta(seconds=float(text))
    if _HUMAN_DURATION.fullmatch(text):
        seconds = 0.0
        for amount, unit in _DURATION_PART.findall(text):
            if unit not in _SECONDS_PER_UNIT:
                raise ValueError(f"{unit!r} is not a unit of time: use s, m, h, d or w")
            seconds += float(amount) * _SECONDS_PER_UNIT[unit]
        return timedelta(seconds=seconds)
    try:
        return _ISO_DURATION.validate_python(text.upper())
    except ValidationError:
        raise ValueError(
            f"{value.strip()!r} is not a duration: write it like 30m, 15 min, 1h, 90s, 2 days "
            "or PT30M"
        ) from None


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than zero")
    return value


# A length of time that must be positive, in any form `parse_duration` reads.
Duration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_positive)]


PROVIDERS = frozenset({"stripe", "stars"})


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
    # Key deliveries and a sale's product cards go out as Telegram's paid broadcast: up to
    # 1,000 messages/s, Stars charged for each one past the free rate (the cost is in /stats).
    paid_broadcast: bool = False

    # Storage
    database_url: str = "sqlite+aiosqlite:///keyvend.db"
    redis_url: str | None = None
    key_encryption_key: SecretStr | None = None

    # Stripe
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str | None = None

    # Payments: which providers the shop offers (Stripe also needs its keys above), and the
    # seller's texts for /paysupport and /terms (unset: a default in the buyer's language).
    payment_providers: Annotated[frozenset[str], NoDecode] = frozenset({"stripe", "stars"})
    paysupport_text: str | None = None
    terms_text: str | None = None

    # HTTP server
    public_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    # Set: /metrics answers only `Authorization: Bearer <token>` (for a public port).
    metrics_token: SecretStr | None = None

    # Shop behaviour
    checkout_ttl: Duration = timedelta(minutes=30)
    key_message_ttl: Duration = timedelta(minutes=15)
    out_of_stock_policy: OutOfStockPolicy = OutOfStockPolicy.REFUND
    blacklist_on_dispute: bool = False
    rate_limit_updates: str = "30/minute"
    rate_limit_checkouts: str = "5/10 minutes"
    max_unpaid_orders: int = Field(3, ge=1)
    # What one buyer's unpaid checkouts may hold of one product: the larger of the two.
    hold_max_units: int = Field(10, ge=1)
    hold_max_share: float = Field(0.25, ge=0, le=1)
    reconcile_interval: Duration = timedelta(minutes=3)
    delivery_max_attempts: int = Field(12, ge=1)
    # How long a worker's claim on a delivery holds; a dead instance's claims lapse after it.
    delivery_lease: Duration = timedelta(seconds=60)
    log_level: str = "INFO"
    # Slack-compatible incoming webhook that gets every admin alert too; its address is a
    # credential (whoever has it can post), hence a secret.
    alert_webhook_url: SecretStr | None = None

    # Business API (/api/v1)
    # How long a one-time download link works once issued.
    download_ttl: Duration = timedelta(hours=1)
    # smtp://user:password@host:port (smtps:// for TLS): unset, clients get no e-mail.
    smtp_url: SecretStr | None = None
    smtp_from: str = "keyvend@localhost"
    rate_limit_api: str = "600/minute"  # per client token
    rate_limit_api_ip: str = "1200/minute"  # per caller address, authenticated or not

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

    @field_validator("payment_providers", mode="before")
    @classmethod
    def _parse_providers(cls, value: object) -> object:
        if isinstance(value, str):
            names = frozenset(p.lower() for p in re.split(r"[,\s]+", value.strip()) if p)
            unknown = names - PROVIDERS
            if unknown:
                raise ValueError(
                    f"PAYMENT_PROVIDERS may list {', '.join(sorted(PROVIDERS))}; "
                    f"not {', '.join(sorted(unknown))}"
                )
            return names
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        # Only the scheme is ever quoted back: the rest of the address may hold a password.
        try:
            url = make_url(value)
        except (ArgumentError, ValueError):
            raise ValueError(
                f"DATABASE_URL is not a database address: write it like {_DATABASE_EXAMPLES}"
            ) from None
        database = url.drivername.partition("+")[0]
        database = "postgresql" if database == "postgres" else database
        if database not in _DRIVERS:
            raise ValueError(
                f"DATABASE_URL: keyvend does not run on {database}; use {_DATABASE_EXAMPLES}"
            )
        if url.drivername != _DRIVERS[database]:
            raise ValueError(
                f"DATABASE_URL must start with {_DRIVERS[database]}:// "
                f"(keyvend's async driver), not {url.drivername}://"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            scheme_ok = urlsplit(value).scheme in ("redis", "rediss")
            parse_redis_url(value)
        except ValueError:
            scheme_ok = False
        if not scheme_ok:
            raise ValueError(
                "REDIS_URL is not a Redis address: write it like redis://127.0.0.1:6379/0 "
                "(rediss:// for TLS), or leave it empty for in-process limits"
            )
        return value

    @field_validator("telegram_api_url", "stripe_api_base", "public_url")
    @classmethod
    def _check_http_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:  # a port that is not a number
            valid = False
        if not valid:
            raise ValueError(
                f"{info.field_name.upper()} must be an address starting with https:// "
                "(or http://), like https://api.telegram.org"
            )
        return value

    @field_validator(
        "rate_limit_updates", "rate_limit_checkouts", "rate_limit_api", "rate_limit_api_ip"
    )
    @classmethod
    def _check_rate_limit(cls, value: str, info: ValidationInfo) -> str:
        try:
            limit = limits.parse(value)
        except ValueError:
            limit = None
        if limit is None or limit.amount < 1:
            raise ValueError(
                f"{info.field_name.upper()}={value.strip()!r} is not a rate limit: write it like "
                "30/minute or 5/10 minutes"
            )
        return value

    @field_validator("alert_webhook_url")
    @classmethod
    def _check_alert_webhook(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value.get_secret_value())
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            valid = False
        if not valid:  # never quoted back: the address is the credential
            raise ValueError("ALERT_WEBHOOK_URL must be an https:// address (or http://)")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}")
        return level

    @field_validator("checkout_ttl")
    @classmethod
    def _stripe_session_window(cls, value: timedelta) -> timedelta:
        # Stripe only accepts expires_at between 30 minutes and 24 hours ahead; a shorter
        # reservation is ended by the shop, which then expires the Stripe session itself.
        if not timedelta(minutes=1) <= value <= timedelta(hours=24):
            raise ValueError("CHECKOUT_TTL must be between 1 minute and 24 hours")
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
        "paysupport_text",
        "terms_text",
        "smtp_url",
        "alert_webhook_url",
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
        return self.stripe_secret_key is not None and "stripe" in self.payment_providers

    @property
    def stars_enabled(self) -> bool:
        return "stars" in self.payment_providers

    def secrets(self) -> list[str]:
        """Every secret value, for the log filter that scrubs them."""
        values = [
            self.bot_token,
            self.stripe_secret_key,
            self.stripe_webhook_secret,
            self.key_encryption_key,
            self.telegram_webhook_secret,
            self.metrics_token,
            self.smtp_url,
            self.alert_webhook_url,
        ]
        found = [v.get_secret_value() for v in values if v is not None]
        if self.key_encryption_key is not None:
            # During a rotation it lists several keys: each one is a secret on its own.
            found += [k.strip() for k in self.key_encryption_key.get_secret_value().split(",")]
        return found


def load_settings() -> Settings:
    """The settings from the environment and `.env`, or a `ConfigError` in one line.

    The line names the first variable at fault and what to write instead; it never quotes
    the value (pydantic's messages do not, and ours quote only values that cannot be secret).
    """
    try:
        return Settings()
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        reason = first["msg"].removeprefix("Value error, ")
        name = str(first["loc"][0]).upper() if first["loc"] else ""
        if name and not reason.startswith(name):
            reason = f"{name}: {reason}"
        more = f" (and {len(errors) - 1} more setting(s) to fix)" if len(errors) > 1 else ""
        raise ConfigError(reason + more) from None
