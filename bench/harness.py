"""The benchmark harness: rows of the table, the machine, databases, processes and load.

Everything a benchmark needs to measure keyvend the way it runs in production lives here:
a fresh migrated database (an SQLite file, or a PostgreSQL database created and dropped
like `tests/conftest.py` does), the fake Bot API and fake Stripe from `tests/fakes/` in the
bench's own event loop, the real app as a `keyvend run` subprocess pointed at them, a
trivial aiohttp app as the baseline, and one small HTTP/1.1 client that drives both the
same way. Benchmarks (one module each) return `Row`s; `bench/__main__.py` prints them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.migrate import migrate
from store.db import Database
from store.models import Delivery, Key, Order
from tests.conftest import POSTGRES_ADMIN
from tests.e2e.conftest import ADMIN, free_port
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram

REPO = Path(__file__).resolve().parent.parent
KEYVEND = Path(sys.executable).with_name("keyvend")
SKU = "BENCH"
# Distinct buyers (and chats) per order, so Telegram's 1 message/s per chat never paces a run.
FIRST_BUYER = 50_000_000


# ---------------------------------------------------------------- results


@dataclass
class Row:
    """One line of the table. `ratio` is the figure divided by its same-run baseline."""

    benchmark: str
    figure: str
    ratio: float | None
    goal: str
    passed: bool | None  # None: informational, no goal
    p50: str = ""
    p99: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "-" if self.passed is None else "PASS" if self.passed else "FAIL"


def failed_row(benchmark: str, goal: str, error: BaseException) -> Row:
    """A benchmark that could not run still gets its line, saying why."""
    return Row(benchmark, f"did not run: {type(error).__name__}: {error}"[:160], None, goal, False)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), nearest-rank, of a non-empty sample."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


@dataclass
class Machine:
    cores: int
    memory_gb: float
    cpu: str
    load: tuple[float, float, float]
    python: str
    date: str

    @classmethod
    def now(cls) -> Machine:
        return cls(
            cores=psutil.cpu_count(logical=True) or 0,
            memory_gb=psutil.virtual_memory().total / 2**30,
            cpu=_cpu_model(),
            load=os.getloadavg(),
            python=platform.python_version(),
            date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        )

    def describe(self) -> str:
        load = ", ".join(f"{x:.2f}" for x in self.load)
        return (
            f"{self.cores} cores ({self.cpu}), {self.memory_gb:.1f} GiB memory, Python {self.python}, "
            f"load average {load} at start, {self.date}"
        )


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


@dataclass
class Context:
    """What one `python -m bench` run shares between benchmarks."""

    quick: bool
    workdir: Path
    cache: Path
    key_secret: str
    profile_dir: Path | None = None  # set: the app runs under pyinstrument, reports land here
    best_concurrency: dict[str, int] = field(default_factory=dict)

    def scratch(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


# ---------------------------------------------------------------- databases


async def migrated(url: str) -> None:
    db = Database(url)
    try:
        await migrate(db)
    finally:
        await db.dispose()


async def sqlite_database(directory: Path) -> str:
    """A fresh, migrated SQLite file in `directory`."""
    url = f"sqlite+aiosqlite:///{directory / 'keyvend.db'}"
    await migrated(url)
    return url


async def _postgres_admin(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh, migrated PostgreSQL database, dropped on the way out whatever happened."""
    name = f"keyvend_bench_{uuid.uuid4().hex[:12]}"
    await _postgres_admin(f'CREATE DATABASE "{name}"')
    try:
        base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        url = f"{base}/{name}"
        await migrated(url)
        yield url
    finally:
        await _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def database(kind: str, directory: Path) -> AsyncIterator[str]:
    """`kind` is "sqlite" or "postgresql"."""
    if kind == "sqlite":
        yield await sqlite_database(directory)
    else:
        async with postgres_database() as url:
            yield url


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Database]:
    db = Database(url)
    try:
        yield db
    finally:
        await db.dispose()


@dataclass
class Tally:
    """How many orders, keys and deliveries are in each status: what a run must have left."""

    orders: dict[str, int]
    keys: dict[str, int]
    deliveries: dict[str, int]


async def tally(url: str) -> Tally:
    async def work(session: AsyncSession) -> Tally:
        async def by_status(column) -> dict[str, int]:
            rows = await session.execute(select(column, func.count()).group_by(column))
            return {str(status): n for status, n in rows}

        return Tally(
            await by_status(Order.status),
            await by_status(Key.status),
            await by_status(Delivery.status),
        )

    async with opened(url) as db:
        return await db.read(work)


async def invariants_hold(ctx: Context, url: str) -> bool:
    """`keyvend check` on what the run left behind: the speed was not bought with mistakes."""
    code, out, err, _ = await run_cli(ctx, url, "check", timeout=300)
    if code != 0:
        raise RuntimeError(f"keyvend check failed after the run: {(out + err).strip()[-400:]}")
    return True


# ---------------------------------------------------------------- the fakes


@contextlib.asynccontextmanager
async def fakes(*, telegram_cap: float | None) -> AsyncIterator[tuple[FakeTelegram, FakeStripe]]:
    """The fake Bot API (capped at `telegram_cap` messages/s, with 429s) and fake Stripe."""
    # Start each benchmark with what earlier ones left frozen out of the collector's way
    # (see bench/__main__.py: a collection pass stalls the fakes hosted here).
    gc.collect()
    gc.freeze()
    async with FakeTelegram() as telegram, FakeStripe() as stripe:
        telegram.record_calls = False  # every getUpdates and send would pile up in memory
        telegram.rate_cap = telegram_cap
        yield telegram, stripe


def key_messages(telegram: FakeTelegram, chats: set[int] | range) -> list:
    """The sends the fake accepted into the given chats (one per delivered order)."""
    return [m for m in telegram.sent if m.method == "sendMessage" and m.chat_id in chats]


# ---------------------------------------------------------------- processes


class Process:
    """A child process we started: its peak memory, and a clean stop."""

    def __init__(self, popen: subprocess.Popen[bytes], name: str, log: Path) -> None:
        self.popen, self.name, self.log = popen, name, log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def peak_rss(self) -> int:
        """Bytes: the kernel's high-water mark of resident memory (VmHWM) since start."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc status")

    def rss(self) -> int:
        return psutil.Process(self.pid).memory_info().rss

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}: {self.tail()}")

    def tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        return ""

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (keyvend finishes in-flight work and exits), SIGKILL if it hangs."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.popen.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()


def _spawn(argv: list[str], *, env: dict[str, str], cwd: Path, name: str) -> Process:
    log = cwd / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    return Process(popen, name, log)


async def wait_until_serving(
    process: Process, port: int, *, path: str = "/healthz", timeout: float = 60.0
) -> None:
    """Poll until the process answers HTTP on `port` (keyvend: migrated and fully started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.check_alive()
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ConnectionError):
            conn = await HttpConnection.open(port)
            try:
                status, _ = await conn.request(b"GET", path.encode(), b"")
            finally:
                conn.close()
            if status == 200:
                return
        await asyncio.sleep(0.1)
    raise TimeoutError(
        f"{process.name} did not serve on port {port} within {timeout:.0f}s: {process.tail()}"
    )


def app_env(
    database_url: str,
    *,
    port: int,
    key_secret: str,
    telegram: FakeTelegram,
    stripe: FakeStripe | None,
    telegram_rate: float,
) -> dict[str, str]:
    """The environment `keyvend run` reads: every contract variable set, nothing inherited
    that could point it elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KEYVEND_", "STRIPE_", "TELEGRAM_"))
    }
    env.update(
        BOT_TOKEN=telegram.token,
        ADMIN_IDS=str(ADMIN),
        TELEGRAM_API_URL=telegram.url,
        TELEGRAM_MODE="polling",
        TELEGRAM_RATE=str(telegram_rate),
        DATABASE_URL=database_url,
        REDIS_URL="",
        KEY_ENCRYPTION_KEY=key_secret,
        STRIPE_SECRET_KEY=stripe.api_key if stripe else "",
        STRIPE_WEBHOOK_SECRET=stripe.webhook_secret if stripe else "",
        STRIPE_API_BASE=stripe.url if stripe else "",
        HTTP_HOST="127.0.0.1",
        HTTP_PORT=str(port),
        PUBLIC_URL=f"http://127.0.0.1:{port}",  # where the pay links on product cards point
        LOG_LEVEL="INFO",
    )
    return env


@dataclass
class App:
    process: Process
    port: int


@contextlib.asynccontextmanager
async def keyvend_app(
    ctx: Context,
    database_url: str,
    *,
    telegram: FakeTelegram,
    stripe: FakeStripe | None,
    telegram_rate: float,
    name: str,
    key_secret: str | None = None,
) -> AsyncIterator[App]:
    """`keyvend run` as its own process (cwd a scratch directory, so no .env is read),
    started and answering /healthz; stopped with SIGTERM on the way out."""
    port = free_port()
    env = app_env(
        database_url,
        port=port,
        key_secret=key_secret or ctx.key_secret,
        telegram=telegram,
        stripe=stripe,
        telegram_rate=telegram_rate,
    )
    cwd = ctx.scratch(name)
    argv = [str(KEYVEND), "run"]
    if ctx.profile_dir is not None:
        ctx.profile_dir.mkdir(parents=True, exist_ok=True)
        report = ctx.profile_dir / f"{name}.txt"
        argv = [str(KEYVEND.with_name("pyinstrument")), "-r", "text", "-o", str(report), *argv]
    process = _spawn(argv, env=env, cwd=cwd, name=f"keyvend-{name}")
    try:
        await wait_until_serving(process, port)
        yield App(process, port)
    finally:
        await process.stop()


@contextlib.asynccontextmanager
async def bare_server(cwd: Path) -> AsyncIterator[tuple[Process, int]]:
    """The baseline: `python -m bench.bare`, a trivial aiohttp app on uvloop like keyvend's."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = _spawn(
        [sys.executable, "-m", "bench.bare", str(port)], env=env, cwd=cwd, name="bare-aiohttp"
    )
    try:
        await wait_until_serving(process, port, path="/")
        yield process, port
    finally:
        await process.stop()


async def run_cli(
    ctx: Context, database_url: str, *args: str, timeout: float = 600.0
) -> tuple[int, str, str, float]:
    """The real `keyvend` command as a subprocess: (exit code, stdout, stderr, wall seconds)."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KEY_ENCRYPTION_KEY": ctx.key_secret,
        "LOG_LEVEL": "WARNING",
    }
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        str(KEYVEND),
        *args,
        env=env,
        cwd=ctx.workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, out.decode(), err.decode(), time.perf_counter() - started


# ---------------------------------------------------------------- load


class HttpConnection:
    """A minimal HTTP/1.1 keep-alive client connection.

    The load generator shares the machine with the server it measures, so it must cost as
    little as possible: writing prepared bytes and reading a Content-Length body is several
    times cheaper per request than a general-purpose client. Both the app and the bare
    baseline are driven by this same code.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        self.reader, self.writer, self.port = reader, writer, port

    @classmethod
    async def open(cls, port: int) -> HttpConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, port)

    async def request(
        self, method: bytes, path: bytes, body: bytes, headers: bytes = b""
    ) -> tuple[int, bytes]:
        self.writer.write(
            b"%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %d\r\n%s\r\n%s"
            % (method, path, self.port, len(body), headers, body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"transfer-encoding":
                raise RuntimeError("chunked responses are not expected from these servers")
        return status, await self.reader.readexactly(length) if length else b""

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True)
class Signed:
    """One request ready to send: the exact body and its Stripe-Signature header."""

    body: bytes
    headers: bytes

    @classmethod
    def of(cls, body: bytes, headers: dict[str, str]) -> Signed:
        return cls(body, b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()))


@dataclass
class LoadResult:
    sent: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]
    bodies: list[bytes]
    server_cpu: float | None = None  # CPU seconds the server process used meanwhile, if known

    @property
    def rate(self) -> float:
        return self.sent / self.seconds

    @property
    def cpu_per_request(self) -> float | None:
        """Server CPU seconds per request: unlike req/s, barely moved by a busy machine."""
        return None if self.server_cpu is None or not self.sent else self.server_cpu / self.sent

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)


async def closed_loop(
    port: int,
    path: str,
    requests: Sequence[Signed],
    concurrency: int,
    *,
    time_limit: float | None = None,
    server: Process | None = None,
) -> LoadResult:
    """Send the requests, `concurrency` at a time over as many keep-alive connections, each
    connection sending its next request as soon as the previous answer arrived; after
    `time_limit` seconds no new request is started (the rest are left unsent)."""
    connections = [await HttpConnection.open(port) for _ in range(concurrency)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    bodies: list[bytes] = []
    pending = iter(requests)
    target = path.encode()
    stop_at = float("inf") if time_limit is None else time.perf_counter() + time_limit

    async def worker(conn: HttpConnection) -> None:
        for item in pending:
            started = time.perf_counter()
            if started > stop_at:
                return
            status, body = await conn.request(b"POST", target, item.body, item.headers)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
            bodies.append(body)

    cpu_before = server.cpu_seconds() if server else 0.0
    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in connections))
    finally:
        for conn in connections:
            conn.close()
    seconds = time.perf_counter() - started
    cpu = server.cpu_seconds() - cpu_before if server else None
    return LoadResult(len(latencies), seconds, latencies, statuses, bodies, cpu)


@dataclass
class Offered:
    """An open-loop run: when each request was accepted (time.monotonic(), None if not 200)."""

    accepted: list[float | None]
    offered_seconds: float  # first request sent to last request sent
    load: LoadResult  # seconds: first request sent to last answer received


async def open_loop(port: int, path: str, requests: Sequence[Signed], rate: float) -> Offered:
    """Offer requests at a fixed `rate`, whatever the answers: a request is due at its time
    even if earlier ones are still waiting (a connection is opened when none is free)."""
    idle: list[HttpConnection] = []
    accepted: list[float | None] = [None] * len(requests)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    target = path.encode()

    async def send(index: int, item: Signed) -> None:
        conn = idle.pop() if idle else await HttpConnection.open(port)
        started = time.perf_counter()
        status, _ = await conn.request(b"POST", target, item.body, item.headers)
        latencies.append(time.perf_counter() - started)
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            accepted[index] = time.monotonic()
        idle.append(conn)

    tasks = []
    begin = time.perf_counter()
    for index, item in enumerate(requests):
        delay = begin + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(index, item)))
    offered = time.perf_counter() - begin
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - begin
    for conn in idle:
        conn.close()
    return Offered(accepted, offered, LoadResult(len(latencies), seconds, latencies, statuses, []))


# ---------------------------------------------------------------- the baseline


@dataclass
class BareBaseline:
    """Requests/s of a trivial aiohttp handler, per concurrency, and its memory."""

    by_concurrency: dict[int, float]
    cpu_per_request: dict[int, float]
    body_bytes: int
    peak_rss: int

    @property
    def best(self) -> float:
        return max(self.by_concurrency.values())

    @property
    def best_concurrency(self) -> int:
        return max(self.by_concurrency, key=self.by_concurrency.__getitem__)


async def measure_bare(ctx: Context, sample: Signed, levels: Iterable[int]) -> BareBaseline:
    """Drive the bare handler with the webhook's own body, at each concurrency level.

    Measured again right before each keyvend figure it divides, not once per run: on a
    shared machine the load changes from one minute to the next, and a ratio is only
    honest if both sides saw the same machine.
    """
    count = 3_000 if ctx.quick else 8_000
    by_level: dict[int, float] = {}
    cpu: dict[int, float] = {}
    async with bare_server(ctx.scratch("bare")) as (process, port):
        await closed_loop(port, "/stripe/webhook", [sample] * 500, 8)  # warm up
        for level in levels:
            result = await closed_loop(
                port, "/stripe/webhook", [sample] * count, level, server=process
            )
            if result.ok != count:
                raise RuntimeError(f"bare handler answered {result.statuses}")
            by_level[level] = result.rate
            cpu[level] = result.cpu_per_request or 0.0
        peak = process.peak_rss()
    return BareBaseline(by_level, cpu, len(sample.body), peak)
