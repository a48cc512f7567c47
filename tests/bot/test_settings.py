"""Settings: durations read as people write them, and every bad value refused in one line.

`load_settings()` reads the environment as `keyvend` does (run here in an empty directory,
so no `.env` is read); its `ConfigError` must name the variable, say what to write, and
never quote a secret. tests/bot/test_startup_errors.py runs the same through the command.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from bot.settings import ConfigError, Settings, load_settings, parse_duration

TOKEN = "123456:" + "a1B2c3D4e5" * 4
STRIPE_KEY = "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
WEBHOOK_SECRET = "whsec_5f1d0e9c8b7a6f5e4d3c2b1a"
SECRETS = (TOKEN, STRIPE_KEY, WEBHOOK_SECRET)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> pytest.MonkeyPatch:
    """An environment with valid secrets and nothing else keyvend reads."""
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("BOT_TOKEN", TOKEN)
    monkeypatch.setenv("STRIPE_SECRET_KEY", STRIPE_KEY)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    return monkeypatch


def refusal(env: pytest.MonkeyPatch, **values: str) -> str:
    for name, value in values.items():
        env.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    reason = str(refused.value)
    assert "\n" not in reason
    for secret in SECRETS:
        assert secret not in reason
    return reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("15 min", timedelta(minutes=15)),
        ("15 minutes", timedelta(minutes=15)),
        ("1h", timedelta(hours=1)),
        ("90s", timedelta(seconds=90)),
        ("2 days", timedelta(days=2)),
        ("1 week", timedelta(weeks=1)),
        ("1h 30m", timedelta(minutes=90)),
        ("1h30m", timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
        (" 45 Secs ", timedelta(seconds=45)),
        ("PT30M", timedelta(minutes=30)),
        ("pt30m", timedelta(minutes=30)),
        ("P1DT2H", timedelta(days=1, hours=2)),
        ("PT60S", timedelta(seconds=60)),
        ("90", timedelta(seconds=90)),
    ],
)
def test_durations_read_as_people_and_iso_8601_write_them(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "", "30 parsecs", "m30", "5 ms", "PT", "1h and a bit"])
def test_what_is_not_a_duration_is_refused_with_the_forms_that_are(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration|not a unit of time"):
        parse_duration(text)


def test_durations_given_in_code_pass_through() -> None:
    assert parse_duration(timedelta(seconds=5)) == timedelta(seconds=5)
    settings = Settings(_env_file=None, delivery_lease=timedelta(seconds=3), reconcile_interval=2)
    assert settings.delivery_lease == timedelta(seconds=3)
    assert settings.reconcile_interval == timedelta(seconds=2)


def test_every_duration_setting_reads_the_short_forms(env: pytest.MonkeyPatch) -> None:
    env.setenv("CHECKOUT_TTL", "45 min")
    env.setenv("KEY_MESSAGE_TTL", "10m")
    env.setenv("RECONCILE_INTERVAL", "90s")
    env.setenv("DELIVERY_LEASE", "PT2M")
    settings = load_settings()
    assert settings.checkout_ttl == timedelta(minutes=45)
    assert settings.key_message_ttl == timedelta(minutes=10)
    assert settings.reconcile_interval == timedelta(seconds=90)
    assert settings.delivery_lease == timedelta(minutes=2)


@pytest.mark.parametrize("name", ["KEY_MESSAGE_TTL", "RECONCILE_INTERVAL", "DELIVERY_LEASE"])
@pytest.mark.parametrize("value", ["0s", "0", "PT0S", "-PT5M", "-30"])
def test_zero_or_negative_durations_are_refused(
    env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    assert refusal(env, **{name: value}) == f"{name}: must be longer than zero"


def test_a_checkout_lasts_between_a_minute_and_a_day(env: pytest.MonkeyPatch) -> None:
    assert "between 1 minute and 24 hours" in refusal(env, CHECKOUT_TTL="30s")
    assert "between 1 minute and 24 hours" in refusal(env, CHECKOUT_TTL="2 days")


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("DATABASE_URL", "not a url", "DATABASE_URL is not a database address"),
        ("DATABASE_URL", "postgresql://u@h/db", "must start with postgresql+asyncpg://"),
        ("DATABASE_URL", "postgres://u@h/db", "must start with postgresql+asyncpg://"),
        ("DATABASE_URL", "postgresql+psycopg://u@h/db", "must start with postgresql+asyncpg://"),
        ("DATABASE_URL", "sqlite:///keyvend.db", "must start with sqlite+aiosqlite://"),
        ("DATABASE_URL", "mysql://u@h/db", "keyvend does not run on mysql"),
        ("DATABASE_URL", "postgresql+asyncpg://u@h:port/db", "DATABASE_URL is not a database"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL is not a Redis address"),
        ("REDIS_URL", "http://localhost:6379", "REDIS_URL is not a Redis address"),
        ("REDIS_URL", "redis://localhost:port/0", "REDIS_URL is not a Redis address"),
        ("TELEGRAM_API_URL", "api.telegram.org", "TELEGRAM_API_URL must be an address"),
        ("TELEGRAM_API_URL", "ftp://api.telegram.org", "TELEGRAM_API_URL must be an address"),
        ("TELEGRAM_API_URL", "https://", "TELEGRAM_API_URL must be an address"),
        ("STRIPE_API_BASE", "localhost:12111", "STRIPE_API_BASE must be an address"),
        ("PUBLIC_URL", "shop.example.com", "PUBLIC_URL must be an address"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR"),
        ("RATE_LIMIT_UPDATES", "lots", "RATE_LIMIT_UPDATES='lots' is not a rate limit"),
        ("RATE_LIMIT_CHECKOUTS", "5 per fortnight", "is not a rate limit: write it like"),
        ("RATE_LIMIT_CHECKOUTS", "0/minute", "RATE_LIMIT_CHECKOUTS='0/minute' is not a rate"),
        ("HTTP_PORT", "eighty", "HTTP_PORT: "),
        ("HTTP_PORT", "70000", "HTTP_PORT: "),
        ("TELEGRAM_MODE", "push", "TELEGRAM_MODE: "),
        ("ADMIN_IDS", "alice", "ADMIN_IDS must be Telegram user ids"),
    ],
)
def test_a_bad_setting_is_named_with_what_to_write(
    env: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    reason = refusal(env, **{name: value})
    assert says in reason
    assert not reason.startswith("Value error")


def test_addresses_are_never_quoted_back_as_they_may_hold_passwords(
    env: pytest.MonkeyPatch,
) -> None:
    password = "hunter2-database-password"
    assert password not in refusal(env, DATABASE_URL=f"mysql://shop:{password}@db/shop")
    assert password not in refusal(env, DATABASE_URL=f"postgresql://shop:{password}@db/shop")
    assert password not in refusal(env, REDIS_URL=f"redis://:{password}@localhost:port/0")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BOT_TOKEN", "bot:" + STRIPE_KEY),  # no digits before the colon
        ("BOT_TOKEN", "your-token-here-" + WEBHOOK_SECRET),
        ("STRIPE_SECRET_KEY", "pk_test_" + WEBHOOK_SECRET),
        ("STRIPE_WEBHOOK_SECRET", "wh_" + STRIPE_KEY),
    ],
)
def test_a_bad_secret_is_refused_without_quoting_it(
    env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    reason = refusal(env, **{name: value})
    assert reason.startswith(name)
    assert value not in reason


def test_several_bad_settings_are_counted_on_the_one_line(env: pytest.MonkeyPatch) -> None:
    reason = refusal(env, LOG_LEVEL="LOUD", HTTP_PORT="eighty", KEY_MESSAGE_TTL="0s")
    assert reason.endswith("(and 2 more setting(s) to fix)")


def test_the_defaults_and_the_documented_forms_load(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "postgresql+asyncpg://shop:secret@db.internal:5432/keyvend")
    env.setenv("REDIS_URL", "rediss://:secret@cache.internal:6380/1")
    env.setenv("LOG_LEVEL", "debug")
    env.setenv("RATE_LIMIT_CHECKOUTS", "5 per 10 minutes")
    settings = load_settings()
    assert settings.log_level == "DEBUG"
    assert settings.telegram_api_url == "https://api.telegram.org"
