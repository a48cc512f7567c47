"""`make demo`: one whole sale with no accounts, printed as the buyer sees it.

Everything outside keyvend is played by the servers the tests use: FakeTelegram (the Bot
API) and FakeStripe, real HTTP servers running in this process. The seller stocks a product
with the real `keyvend` command line in a temporary directory (its own SQLite database, no
`.env`); `keyvend run` starts as a child process pointed at the fakes; then the buyer sends
/start, picks the product, taps "Pay by card" (a link to the shop, which opens the checkout
and sends the browser on to it) and pays on the fake checkout, and Stripe's signed
`checkout.session.completed` event is POSTed to the shop as Stripe would send it; the key
arrives. The admin's /stats and `keyvend check` end the show. Exit status 0 means all of it
happened; otherwise one line on stderr says what did not, and the status is 1.

`--interactive` stocks and starts the same way, then hands the chat to a person: type a
message, or a button's number to press it (a payment button pays on the fake checkout);
`admin <text>` writes as the admin; `quit` or Ctrl-D ends it.

    python -m tests.support.demo [--interactive]
"""

from __future__ import annotations

import argparse
import asyncio
import html
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import ValidationError

from bot.settings import Settings
from store.crypto import KeyVault
from store.money import to_major
from tests.e2e.conftest import ADMIN, KEYVEND, shop_settings
from tests.e2e.processes import App, app_env
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram, SentMessage

BUYER = 1001
SKU = "SPACE"
NAME = "Space Game (Steam)"
KEYS = ["SPACE-7KQ2-XW4D-0001", "SPACE-7KQ2-XW4D-0002", "SPACE-7KQ2-XW4D-0003"]
WAIT = 20.0  # seconds the bot may take over any one answer: generous, the machine may be busy
MARGIN = " " * 10  # lines up under the text after `  buyer < `
_BARS = "||".encode("utf-16-le")

LEGEND = "(> written by the buyer or the admin, < what the bot shows them, ! a pop-up notice)"
HELP = (
    "Type a message (/start, /orders, /help...), a button's number to press it, "
    "`admin <text>` to write as the admin, or quit (Ctrl-D)."
)


class DemoFailed(Exception):
    """What went wrong, in one line."""


def shown(message: SentMessage) -> str:
    """A message's text as the user sees it, each spoiler (a hidden key) between ||bars||."""
    text = message.plain_text if message.plain_text is not None else (message.text or "")
    units = text.encode("utf-16-le")  # entity offsets count UTF-16 code units
    spoilers = [e for e in message.entities if e.get("type") == "spoiler"]
    for entity in sorted(spoilers, key=lambda e: e["offset"], reverse=True):
        start, end = 2 * entity["offset"], 2 * (entity["offset"] + entity["length"])
        units = units[:start] + _BARS + units[start:end] + _BARS + units[end:]
    return units.decode("utf-16-le")


def heading(text: str) -> None:
    print(f"\n== {text}", flush=True)


class Chat:
    """The buyer's and the admin's chats with the bot, printed as they see them.

    Each bot message is printed once, in the order the fake Telegram accepted it; each inline
    button gets a number, counted across the whole conversation, to press it by.
    """

    def __init__(
        self, telegram: FakeTelegram, stripe_api: FakeStripe, http: aiohttp.ClientSession, url: str
    ) -> None:
        self.telegram, self.stripe, self.http, self.url = telegram, stripe_api, http, url
        self.buttons: list[tuple[SentMessage, dict[str, Any]]] = []
        self._printed = 0  # how many of telegram.sent have been looked at
        self._notices = 0  # how many of telegram.callback_answers
        self._since = 0.0  # when the last action was taken (time.monotonic())

    # ------------------------------------------------------------ acting

    def say(self, user: int, text: str) -> None:
        self._act(user, text)
        self.telegram.message(user, text)

    async def press(self, number: int) -> None:
        """Press button [number]; a link button is opened instead."""
        # A button typed ahead of its message (pasted input, a slow bot) is waited for a while.
        deadline = time.monotonic() + 5
        while number > len(self.buttons) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            self.show()
        if not 1 <= number <= len(self.buttons):
            raise DemoFailed(f"there is no button [{number}]")
        message, button = self.buttons[number - 1]
        self._act(message.chat_id, f"[{number}] {button['text']}")
        if "url" in button:
            await self.open(button["url"])
        else:
            self.telegram.press(message.chat_id, message, button["callback_data"])

    async def open(self, url: str) -> None:
        """Open a link: the shop's pay link leads on to its checkout page, a checkout page of
        the fake Stripe is paid, and Stripe tells the shop."""
        if url.startswith(f"{self.url}/pay/"):
            async with self.http.get(url, allow_redirects=False) as page:
                body = await page.text()
            if page.status != 303:
                reason = html.unescape(body.split("<p>", 1)[-1].split("</p>", 1)[0])
                print(f"{MARGIN}(the pay link answers {page.status}: {reason})")
                return
            print(f"{MARGIN}(the pay link opens the checkout: {page.status} to the fake Stripe)")
            url = page.headers["Location"]
        session_id = url.rsplit("/", 1)[-1]
        if not url.startswith(f"{self.stripe.url}/pay/") or session_id not in self.stripe.sessions:
            print(f"{MARGIN}(a link to {url}: nothing to open here)")
            return
        async with self.http.get(url) as page:
            if page.status != 200:
                raise DemoFailed(f"the checkout page answered HTTP {page.status}")
        try:
            self.stripe.pay(session_id)
        except ValueError as exc:
            raise DemoFailed(str(exc)) from None
        session = self.stripe.sessions[session_id]
        amount = f"{to_major(session['amount_total'], session['currency'])} {session['currency']}"
        print(f"{MARGIN}(pays {amount.upper()} on the checkout page of the fake Stripe)")
        event = self.stripe.completed_event(session_id)
        body, headers = self.stripe.signed(event)
        async with self.http.post(f"{self.url}/stripe/webhook", data=body, headers=headers) as got:
            outcome = (await got.json())["outcome"] if got.status == 200 else "refused"
        print(
            f"{'stripe':>7} > POST /stripe/webhook {event['type']} (signed): {got.status} {outcome}"
        )
        if got.status != 200:
            raise DemoFailed(f"the shop answered Stripe's webhook with HTTP {got.status}")

    def _act(self, user: int, what: str) -> None:
        self.show()
        self._since = time.monotonic()
        print(f"{'buyer' if user == BUYER else 'admin':>7} > {what}", flush=True)

    # ------------------------------------------------------------ watching

    async def expect(
        self, user: int, wanted: str | Callable[[SentMessage], bool], what: str = ""
    ) -> SentMessage:
        """Wait for the bot's next message to `user` holding `wanted`; print everything new."""
        since = self._since
        holds = wanted if callable(wanted) else (lambda m: wanted in shown(m))
        try:
            message = await self.telegram.wait_for(
                lambda m: m.chat_id == user and m.time >= since and holds(m), timeout=WAIT
            )
        except TimeoutError:
            raise DemoFailed(
                f"the bot did not send {what or repr(wanted)} within {WAIT:.0f} s"
            ) from None
        self.show()
        return message

    def number(self, message: SentMessage, label: str) -> int:
        """The number of the button on `message` whose text holds `label`."""
        for number, (shown_on, button) in enumerate(self.buttons, 1):
            if shown_on is message and label in button["text"]:
                return number
        raise DemoFailed(f"the bot's message has no button {label!r}")

    def show(self) -> None:
        """Print the pop-up notices and the messages not printed yet."""
        answers = self.telegram.callback_answers
        for answer in answers[self._notices :]:
            if answer.get("text"):
                print(f"{'bot':>7} ! {answer['text']}")
        self._notices = len(answers)
        sent = self.telegram.sent
        for message in sent[self._printed :]:
            if message.chat_id in (BUYER, ADMIN):
                self._print(message)
        self._printed = len(sent)
        sys.stdout.flush()

    def _print(self, message: SentMessage) -> None:
        edited = "(edited) " if message.method.startswith("edit") else ""
        lines = f"{edited}{shown(message)}".splitlines() or [""]
        for row in (message.reply_markup or {}).get("inline_keyboard", []):
            cells = []
            for button in row:
                self.buttons.append((message, button))
                link = f" -> {button['url']}" if "url" in button else ""
                cells.append(f"[{len(self.buttons)}] {button['text']}{link}")
            lines.append("  ".join(cells))
        who = "buyer" if message.chat_id == BUYER else "admin"
        print(f"{who:>7} < {lines[0]}")
        for line in lines[1:]:
            print(f"{MARGIN}{line}".rstrip())

    async def quiet(self, *, after: float = 1.0) -> None:
        """Print what comes until the bot has sent nothing for `after` seconds."""
        seen, last = -1, time.monotonic()
        while time.monotonic() - last < after and time.monotonic() - self._since < WAIT:
            self.show()
            if seen != (seen := len(self.telegram.sent) + len(self.telegram.callback_answers)):
                last = time.monotonic()
            await asyncio.sleep(0.05)

    async def follow(self, app: App) -> None:
        """Print what the bot sends as it comes, for as long as the shop runs."""
        while app.running:
            self.show()
            await asyncio.sleep(0.1)
        raise DemoFailed("keyvend run stopped by itself")


# ---------------------------------------------------------------- the seller


async def keyvend(settings: Settings, workdir: Path, *args: str) -> str:
    """Run the real `keyvend` command in `workdir` on the demo's database, printing it."""
    print(f"$ keyvend {shlex.join(args)}", flush=True)
    process = await asyncio.create_subprocess_exec(
        str(KEYVEND),
        *args,
        cwd=workdir,
        env={**app_env(settings), "LOG_LEVEL": "WARNING"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    lines = out.decode(errors="replace").rstrip().splitlines()
    for line in lines:
        print(f"  {line}")
    if process.returncode != 0:
        last = lines[-1] if lines else "no output"
        raise DemoFailed(f"keyvend {args[0]} exited with {process.returncode}: {last}")
    return "\n".join(lines)


async def stock(settings: Settings, workdir: Path) -> None:
    template = "Redeem at https://store.steampowered.com/account/registerkey"
    await keyvend(
        settings, workdir, "product", "add", SKU, "--name", NAME, "--price", "9.99",
        "--currency", "usd", "--template", template,
    )  # fmt: skip
    (workdir / "keys.txt").write_text("\n".join(KEYS) + "\n")
    await keyvend(settings, workdir, "keys", "import", SKU, "keys.txt")


# ---------------------------------------------------------------- the two modes


async def sale(chat: Chat) -> None:
    """The scripted buyer: /start, pick, pay, key; then the admin's /stats."""
    heading(f"The buyer's chat {LEGEND}")
    chat.say(BUYER, "/start")
    catalogue = await chat.expect(BUYER, "Pick a product")
    await chat.press(chat.number(catalogue, NAME))
    card = await chat.expect(BUYER, "Price:")
    await chat.press(chat.number(card, "by card"))  # a link: the checkout opens in the browser
    delivered = await chat.expect(BUYER, lambda m: bool(m.spoiler_texts()), "the key")
    keys = delivered.spoiler_texts()
    if len(keys) != 1 or keys[0] not in KEYS:
        raise DemoFailed(f"the buyer got {len(keys)} keys instead of one of the imported ones")

    heading("The admin's chat")
    chat.say(ADMIN, "/stats")
    await chat.expect(ADMIN, "Sales")


async def play(chat: Chat, app: App) -> None:
    """A person is the buyer, until quit, Ctrl-D, or the shop stopping."""
    heading(f"Your chat with the shop {LEGEND}")
    print(HELP, flush=True)
    commands = asyncio.create_task(_commands(chat, _stdin_lines()))
    follower = asyncio.create_task(chat.follow(app))
    done, _ = await asyncio.wait({commands, follower}, return_when=asyncio.FIRST_COMPLETED)
    for task in (commands, follower):
        task.cancel()
    await asyncio.gather(commands, follower, return_exceptions=True)
    for task in done:
        task.result()


async def _commands(chat: Chat, lines: asyncio.Queue[str | None]) -> None:
    while (line := await lines.get()) is not None:
        line = line.strip()
        if line in ("quit", "exit"):
            break
        try:
            if line.isdigit():
                await chat.press(int(line))
            elif line.startswith("admin "):
                chat.say(ADMIN, line.removeprefix("admin ").strip())
            elif line:
                chat.say(BUYER, line)
        except DemoFailed as exc:
            print(f"{MARGIN}({exc})", flush=True)
    await chat.quiet()  # input may end before the answers to it (a pasted or piped script)


def _stdin_lines() -> asyncio.Queue[str | None]:
    """Lines typed on stdin, then None at its end; read in a thread so the loop runs on."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return lines


async def demo(workdir: Path, *, interactive: bool) -> None:
    # Stopped like Ctrl-C, so that `keyvend run` is stopped too, not left polling a dead fake.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    async with (
        FakeTelegram() as telegram,
        FakeStripe() as stripe_api,
        aiohttp.ClientSession() as http,
    ):
        database = f"sqlite+aiosqlite:///{workdir / 'keyvend.db'}"
        settings = shop_settings(database, telegram, stripe_api, KeyVault.generate())
        heading(f"The seller stocks a product (in {workdir}: a new SQLite database, no .env)")
        await stock(settings, workdir)

        heading(f"keyvend run, with Telegram at {telegram.url} and Stripe at {stripe_api.url}")
        app = App(settings, workdir)
        try:
            try:
                await app.start()
            except AssertionError:  # it exited, or never answered; its log says why
                last = [line for line in app.logs().splitlines() if line.strip()][-1:]
                raise DemoFailed(f"keyvend run did not start: {''.join(last)}") from None
            print("  started; its log: keyvend/keyvend-1.log", flush=True)
            begun = time.monotonic()
            chat = Chat(telegram, stripe_api, http, app.url)
            if interactive:
                await play(chat, app)
                return
            await sale(chat)
            heading("The invariants, checked on the shop's database")
            report = await keyvend(settings, workdir, "check")
            if "all invariants hold" not in report:
                raise DemoFailed("keyvend check did not report that all invariants hold")
        finally:
            await app.stop()
    print(
        f"\nA whole sale, from /start to a checked database, in {time.monotonic() - begun:.1f} s."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make demo", description=__doc__.split("\n\n")[0].removeprefix("`make demo`: ")
    )
    parser.add_argument(
        "--interactive", action="store_true", help="play the buyer yourself (make demo-play)"
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="keyvend-demo-"))
    try:
        asyncio.run(demo(workdir, interactive=args.interactive))
    except (KeyboardInterrupt, asyncio.CancelledError):
        shutil.rmtree(workdir, ignore_errors=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes the promised one line
        kept = f" (its files and the shop's log are in {workdir})" if any(workdir.iterdir()) else ""
        if not kept:
            workdir.rmdir()
        print(f"demo failed: {_reason(exc)}{kept}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):  # a setting exported in this shell that keyvend refuses
        error = exc.errors()[0]
        return f"{'.'.join(map(str, error['loc'])).upper()}: {error['msg']}"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
