"""Every common mistake in the settings stops `keyvend` with one line, and no secret leaks.

Each case runs the real `keyvend` command as a child process, in an empty directory (no
`.env`) with a made-up bot token, Stripe keys and key encryption key, and one bad setting.
It must exit with code 2 and exactly one line on its output: `keyvend: <what is wrong and
what to do>`, so no traceback, no "Unclosed client session", and none of the secret values,
nor the password inside DATABASE_URL or REDIS_URL. Each case is its own test, so parallel
workers share them out.

Where nothing is wrong but Telegram, `TELEGRAM_API_URL` points at a port that refuses
connections, so a start that gets past every local check fails there, in one line too.
Two more tests run in this process: the printer of that line blanks out secrets whatever
raised it, and a token the (fake) Bot API rejects stops `serve` with its HTTP sessions closed.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import socket
import string
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bot import cli
from bot.app import serve
from bot.cli import Failure
from bot.settings import ConfigError
from store.crypto import KeyVault
from tests.conftest import POSTGRES_ADMIN
from tests.e2e.conftest import shop_settings
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram

KEYVEND = Path(sys.executable).with_name("keyvend")
DB_PASSWORD = "pg-" + secrets.token_hex(8)
SECRETS = {
    "BOT_TOKEN": "123456:" + "".join(secrets.choice(string.ascii_letters) for _ in range(35)),
    "STRIPE_SECRET_KEY": "sk_test_" + secrets.token_hex(12),
    "STRIPE_WEBHOOK_SECRET": "whsec_" + secrets.token_hex(12),
    "KEY_ENCRYPTION_KEY": KeyVault.generate(),
}


@dataclass(frozen=True)
class Case:
    id: str
    env: dict[str, str]
    says: str  # a fragment of the one line
    command: tuple[str, ...] = ("run",)
    files: tuple[str, ...] = field(default=())  # plain files to create in the directory


def _postgres(*, port: int | None = None, host: str | None = None, database: str = "test") -> str:
    """The test PostgreSQL's address, changed where asked, with a password that must not leak."""
    url = make_url(POSTGRES_ADMIN).set(drivername="postgresql+asyncpg", password=DB_PASSWORD)
    url = url.set(host=host or url.host, port=port or url.port, database=database)
    return url.render_as_string(hide_password=False)


# {closed} is a port that refuses connections, {busy} one another program listens on; see
# `outcomes` for the rest.
CASES = [
    Case("database-url-unparseable", {"DATABASE_URL": "not a url"}, "DATABASE_URL is not"),
    Case(
        "database-url-postgresql-driver",
        {"DATABASE_URL": f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1/test"},
        "must start with postgresql+asyncpg://",
    ),
    Case(
        "database-url-sqlite-driver",
        {"DATABASE_URL": "sqlite:///keyvend.db"},
        "must start with sqlite+aiosqlite://",
    ),
    Case(
        "database-url-mysql",
        {"DATABASE_URL": f"mysql://root:{DB_PASSWORD}@127.0.0.1/shop"},
        "does not run on mysql",
    ),
    Case(
        "database-down",
        {"DATABASE_URL": "{postgres_closed}"},
        "no database answers at 127.0.0.1:",
    ),
    Case(
        "database-unknown-host",
        {"DATABASE_URL": "{postgres_unknown_host}"},
        "'no-such-host.invalid' in DATABASE_URL cannot be found",
    ),
    Case(
        "database-missing",
        {"DATABASE_URL": "{postgres_missing_db}"},
        "database 'keyvend_no_such_database' does not exist",
    ),
    Case(
        "sqlite-folder-missing",
        {"DATABASE_URL": "sqlite+aiosqlite:///missing/folder/keyvend.db"},
        "missing/folder does not exist",
    ),
    Case(
        "sqlite-folder-is-a-file",
        {"DATABASE_URL": "sqlite+aiosqlite:///a-file/keyvend.db"},
        "a-file is not a folder",
        files=("a-file",),
    ),
    Case("http-port-in-use", {"HTTP_PORT": "{busy}"}, "the port is in use"),
    Case("log-level-unknown", {"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be one of DEBUG"),
    Case(
        "rate-limit-updates-malformed",
        {"RATE_LIMIT_UPDATES": "lots"},
        "RATE_LIMIT_UPDATES='lots' is not a rate limit",
    ),
    Case(
        "redis-url-malformed",
        {"REDIS_URL": f"127.0.0.1:6379?password={DB_PASSWORD}"},
        "REDIS_URL is not a Redis address",
    ),
    Case(
        "redis-down",
        {"REDIS_URL": f"redis://:{DB_PASSWORD}@127.0.0.1:{{closed}}/0"},
        "Redis does not answer at 127.0.0.1:",
    ),
    Case(
        "telegram-api-url-without-scheme",
        {"TELEGRAM_API_URL": "api.telegram.org"},
        "TELEGRAM_API_URL must be an address starting with https://",
    ),
    Case("bot-token-unset", {"BOT_TOKEN": ""}, "BOT_TOKEN is not set. Create a bot with"),
    Case(
        "telegram-unreachable",
        {},
        "cannot reach the Telegram Bot API at http://127.0.0.1:",
    ),
] + [
    # The other commands that open the database say the same one line.
    Case(
        f"database-down-{'-'.join(command)}",
        {"DATABASE_URL": "{postgres_closed}"},
        "no database answers at 127.0.0.1:",
        command=command,
    )
    for command in [
        ("migrate",),
        ("stats",),
        ("check",),
        ("product", "list"),
        ("product", "add", "GAME", "--name", "Game", "--price", "9.99", "--currency", "usd"),
        ("keys", "import", "GAME", "-"),
    ]
]


@dataclass(frozen=True)
class Outcome:
    code: int | None
    output: str


def _run(case: Case, workdir: Path, places: dict[str, str]) -> Outcome:
    workdir.mkdir()
    for name in case.files:
        (workdir / name).write_text("not a folder\n")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        **SECRETS,
        "TELEGRAM_API_URL": f"http://127.0.0.1:{places['closed']}",
        "HTTP_PORT": places["free"],
        **{name: value.format(**places) for name, value in case.env.items()},
    }
    try:
        done = subprocess.run(
            [str(KEYVEND), *case.command],
            check=False,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired as exc:
        return Outcome(None, f"still running after 60 s: {exc.stdout!r} {exc.stderr!r}")
    return Outcome(done.returncode, done.stdout + done.stderr)


def _port(sock: socket.socket) -> str:
    return str(sock.getsockname()[1])


@pytest.fixture(scope="module")
def places() -> Iterator[dict[str, str]]:
    """Ports and addresses the cases point at, held for the module."""
    # Bound and never listening: connections to it are refused while the test holds it.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    free_port = _port(free)
    free.close()  # a port nobody listens on, for the cases that get as far as listening
    try:
        yield {
            "closed": _port(closed),
            "busy": _port(busy),
            "free": free_port,
            "postgres_closed": _postgres(port=int(_port(closed))),
            "postgres_unknown_host": _postgres(host="no-such-host.invalid"),
            "postgres_missing_db": _postgres(database="keyvend_no_such_database"),
        }
    finally:
        closed.close()
        busy.close()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_bad_setting_stops_keyvend_with_one_line_and_no_secret(
    case: Case, places: dict[str, str], tmp_path: Path
) -> None:
    outcome = _run(case, tmp_path / case.id, places)
    lines = outcome.output.strip().splitlines()
    assert outcome.code == 2, outcome.output
    assert len(lines) == 1, outcome.output
    assert lines[0].startswith("keyvend: "), outcome.output
    assert case.says in lines[0], outcome.output
    for name, value in {**SECRETS, "the DATABASE_URL password": DB_PASSWORD}.items():
        assert value not in outcome.output, f"{name} leaked: {outcome.output}"


def test_the_one_line_blanks_out_secrets_whatever_raised_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = SECRETS["BOT_TOKEN"]
    cli._explain(Failure(f"the API at https://x/bot{token}/getMe\nsaid no"), [token])
    assert capsys.readouterr().err == "keyvend: the API at https://x/bot***/getMe said no\n"


async def test_a_token_telegram_rejects_stops_the_start_with_its_sessions_closed(
    sqlite_url: str,
    telegram: FakeTelegram,
    stripe_api: FakeStripe,
    key_secret: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "654321:" + "".join(secrets.choice(string.ascii_letters) for _ in range(35))
    settings = shop_settings(sqlite_url, telegram, stripe_api, key_secret, bot_token=wrong)
    with pytest.raises(ConfigError, match="Telegram rejected BOT_TOKEN") as refused:
        await serve(settings, asyncio.Event())
    assert wrong not in str(refused.value)
    del refused  # its traceback holds the application and so its sessions
    gc.collect()  # an HTTP session left open complains when it is collected
    assert "Unclosed" not in caplog.text
