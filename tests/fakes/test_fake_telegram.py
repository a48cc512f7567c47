"""Tests of the fake Telegram Bot API server, driven by the real python-telegram-bot client.

These pin down that PTB can talk to the fake exactly as it talks to Telegram: the encodings
it uses, the objects it builds from the answers and the exceptions it raises on faults.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LabeledPrice,
    MessageEntity,
    Update,
)
from telegram.error import (
    BadRequest,
    Conflict,
    EndPointNotFound,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TimedOut,
)
from telegram.ext import (
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
)
from telegram.request import HTTPXRequest

from .telegram import FakeTelegram, SentMessage, parse_html

pytestmark = pytest.mark.asyncio


def _bot(fake: FakeTelegram, token: str | None = None, **kwargs: Any) -> Bot:
    return Bot(
        token or fake.token,
        base_url=f"{fake.url}/bot",
        base_file_url=f"{fake.url}/file/bot",
        **kwargs,
    )


def _retry_after_seconds(exc: RetryAfter) -> float:
    # PTB 22 returns int or timedelta depending on PTB_TIMEDELTA (warning when unset).
    value = exc.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(seed=7) as server:
        yield server


@pytest_asyncio.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    async with _bot(fake) as client:
        yield client


async def test_get_me_and_bad_token(fake: FakeTelegram, bot: Bot) -> None:
    me = await bot.get_me()
    assert me.id == fake.bot_id == 123456
    assert me.username == "keyvend_test_bot"
    assert me.is_bot
    assert [c.method for c in fake.calls] == ["getMe", "getMe"]  # initialize() + ours
    assert all(c.status == 200 for c in fake.calls)

    with pytest.raises(InvalidToken):
        await _bot(fake, token="999:wrong-token").initialize()  # initialize() calls getMe
    assert fake.calls[-1].status == 401

    with pytest.raises(EndPointNotFound):
        await bot.do_api_request("noSuchMethod")
    assert fake.calls[-1].status == 404


async def test_send_message_with_keyboard_html_spoiler(fake: FakeTelegram, bot: Bot) -> None:
    markup = InlineKeyboardMarkup(
        [
            [InlineKeyboardButton("Buy Steam key", callback_data="buy:1")],
            [
                InlineKeyboardButton("Back", callback_data="menu"),
                InlineKeyboardButton("Site", url="https://example.com"),
            ],
        ]
    )
    msg = await bot.send_message(
        chat_id=42,
        text="Your key: <tg-spoiler>AAAA-&lt;BB&gt;</tg-spoiler> and "
        '<span class="tg-spoiler">ÿ 🎮 2</span> <b>thanks</b>',
        parse_mode="HTML",
        reply_markup=markup,
        protect_content=True,
    )
    # PTB built a real Message from the answer, with what Telegram would return.
    assert msg.message_id == 1
    assert msg.chat.id == 42
    assert msg.from_user is not None and msg.from_user.id == fake.bot_id
    assert msg.text == "Your key: AAAA-<BB> and ÿ 🎮 2 thanks"
    assert msg.reply_markup == markup
    assert msg.has_protected_content
    assert [e.type for e in msg.entities] == [
        MessageEntity.SPOILER,
        MessageEntity.SPOILER,
        MessageEntity.BOLD,
    ]

    sent = fake.sent[0]
    assert (sent.method, sent.chat_id, sent.message_id) == ("sendMessage", 42, 1)
    assert sent.text is not None and sent.text.startswith("Your key: <tg-spoiler>")
    assert sent.spoiler_texts() == ["AAAA-<BB>", "ÿ 🎮 2"]
    assert sent.protect_content
    assert [b["text"] for b in sent.buttons()] == ["Buy Steam key", "Back", "Site"]
    assert sent.button("Steam")["callback_data"] == "buy:1"
    with pytest.raises(LookupError, match="Buy Steam key"):
        sent.button("Refund")

    # Explicit entities instead of HTML; ids keep counting per chat.
    second = await bot.send_message(
        42, "code XYZ", entities=[MessageEntity(MessageEntity.SPOILER, 5, 3)]
    )
    other = await bot.send_message(43, "elsewhere")
    assert (second.message_id, other.message_id) == (2, 1)
    assert fake.sent[1].spoiler_texts() == ["XYZ"]
    assert not fake.sent[1].protect_content
    assert [m.message_id for m in fake.messages_to(42)] == [1, 2]
    assert [m.text for m in fake.messages_to(43)] == ["elsewhere"]


async def test_telegram_side_bad_requests(fake: FakeTelegram, bot: Bot) -> None:
    with pytest.raises(BadRequest, match="(?i)can't parse entities"):
        await bot.send_message(1, "price < 5 <b>", parse_mode="HTML")
    with pytest.raises(BadRequest, match='(?i)unsupported start tag "br"'):
        await bot.send_message(1, "a<br>b", parse_mode="HTML")
    with pytest.raises(BadRequest, match="(?i)text is empty"):
        await bot.send_message(1, "<b> </b>", parse_mode="HTML")
    with pytest.raises(BadRequest, match="(?i)too long"):
        await bot.send_message(1, "x" * 4097)
    with pytest.raises(BadRequest, match="(?i)button_data_invalid"):
        await bot.send_message(
            1,
            "x",
            reply_markup=InlineKeyboardMarkup(
                [[InlineKeyboardButton("b", callback_data="d" * 65)]]
            ),
        )
    assert fake.sent == []

    msg = await bot.send_message(1, "hello")
    edited = await bot.edit_message_text("hello <i>again</i>", 1, msg.message_id, parse_mode="HTML")
    assert isinstance(edited, type(msg)) and edited.text == "hello again"
    assert fake.sent[-1].method == "editMessageText"
    assert fake.sent[-1].message_id == msg.message_id
    with pytest.raises(BadRequest, match="(?i)message is not modified"):
        await bot.edit_message_text("hello <i>again</i>", 1, msg.message_id, parse_mode="HTML")
    with pytest.raises(BadRequest, match="(?i)message to edit not found"):
        await bot.edit_message_text("x", 1, 999)

    assert await bot.delete_message(1, msg.message_id)
    assert await bot.delete_message(1, 12345)  # unknown ids are fine, like Telegram
    assert fake.deleted == [(1, msg.message_id), (1, 12345)]
    with pytest.raises(BadRequest, match="(?i)message to edit not found"):
        await bot.edit_message_text("gone", 1, msg.message_id)


async def test_parse_html_entities_and_offsets() -> None:
    plain, entities = parse_html(
        '🎮 <a href="https://x.y/?a=1&amp;b=2">go</a> &amp; '
        '<pre><code class="language-py">x</code></pre>'
    )
    assert plain == "🎮 go & x"
    assert entities == [
        {"type": "text_link", "offset": 3, "length": 2, "url": "https://x.y/?a=1&b=2"},
        {"type": "pre", "offset": 8, "length": 1, "language": "py"},
    ]


async def test_application_polling_command_and_callback(fake: FakeTelegram) -> None:
    got_args: list[list[str]] = []
    got_data: list[str] = []

    async def on_start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        got_args.append(list(context.args or []))
        await update.message.reply_text(
            f"buying {' '.join(context.args or [])}",
            reply_markup=InlineKeyboardMarkup(
                [[InlineKeyboardButton("Pay 50 ⭐", callback_data="pay:buy_X")]]
            ),
        )

    async def on_press(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None and query.data is not None
        got_data.append(query.data)
        await query.answer("working")
        await query.edit_message_text(f"pressed {query.data}")

    app = (
        ApplicationBuilder()
        .token(fake.token)
        .base_url(f"{fake.url}/bot")
        .base_file_url(f"{fake.url}/file/bot")
        .build()
    )
    app.add_handler(CommandHandler("start", on_start))
    app.add_handler(CallbackQueryHandler(on_press))
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0, timeout=1)
        try:
            user_update = fake.message(1001, "/start buy_X", language_code="de")
            reply = await fake.wait_for(lambda m: m.chat_id == 1001, timeout=5)
            assert got_args == [["buy_X"]]
            assert reply.text == "buying buy_X"
            # The user's message took id 1 in that chat, so the reply is 2.
            assert user_update["message"]["message_id"] == 1
            assert reply.message_id == 2

            fake.press(1001, reply, reply.button("Pay")["callback_data"])
            edited = await fake.wait_for(lambda m: m.method == "editMessageText", timeout=5)
            assert got_data == ["pay:buy_X"]
            assert edited.text == "pressed pay:buy_X"
            assert edited.message_id == reply.message_id
            assert fake.callback_answers[0]["text"] == "working"
            # The edit did not repeat the keyboard, so Telegram drops it.
            current = fake.current_message(1001, reply.message_id)
            assert current is not None and "reply_markup" not in current
        finally:
            await app.updater.stop()
            await app.stop()
    assert fake.updates_pending() == 0
    assert [c.status for c in fake.calls if c.method == "deleteWebhook"] == [200]


async def test_long_polling_offset_limit_timeout(fake: FakeTelegram) -> None:
    poller = _bot(fake, get_updates_request=HTTPXRequest(read_timeout=1))
    other = _bot(fake, get_updates_request=HTTPXRequest(read_timeout=1))
    async with poller, other:
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, fake.message, 5, "hello")
        started = time.monotonic()
        updates = await poller.get_updates(timeout=3)
        assert time.monotonic() - started < 2  # answered when the update came
        assert [u.message.text for u in updates if u.message] == ["hello"]

        started = time.monotonic()
        nothing = await poller.get_updates(
            offset=updates[-1].update_id + 1, timeout=dtm.timedelta(milliseconds=300)
        )
        assert nothing == ()
        assert 0.25 < time.monotonic() - started < 2
        assert fake.updates_pending() == 0

        for i in range(3):
            fake.message(5, f"m{i}")
        first = await poller.get_updates(limit=2)
        assert [u.message.text for u in first if u.message] == ["m0", "m1"]
        assert fake.updates_pending() == 3  # not confirmed until the next offset
        rest = await poller.get_updates(offset=first[-1].update_id + 1)
        assert [u.message.text for u in rest if u.message] == ["m2"]
        assert fake.updates_pending() == 1

        # A second poller ends the first one's long poll with 409, like Telegram.
        await poller.get_updates(offset=rest[-1].update_id + 1)
        first_poll = asyncio.create_task(poller.get_updates(timeout=3))
        await asyncio.sleep(0.2)
        second_poll = asyncio.create_task(other.get_updates(timeout=dtm.timedelta(0)))
        with pytest.raises(Conflict, match="terminated by other getUpdates"):
            await first_poll
        assert await second_poll == ()


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_rate_caps_answer_retry_after(fake: FakeTelegram, bot: Bot) -> None:
    fake.rate_cap = 2
    fake.retry_after_seconds = 3
    await bot.send_message(1, "a")
    await bot.send_message(2, "b")
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(3, "c")
    assert _retry_after_seconds(caught.value) == 3
    assert fake.throttled == 1
    assert [m.text for m in fake.sent] == ["a", "b"]
    assert fake.calls[-1].status == 429

    fake.rate_cap = None
    fake.per_chat_cap = 1
    fake.retry_after_seconds = 1
    await bot.send_message(10, "first")
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(10, "second")
    assert _retry_after_seconds(caught.value) == 1
    await bot.send_message(11, "other chat")
    assert fake.throttled == 2
    assert [m.text for m in fake.messages_to(10)] == ["first"]


async def test_blocked_failures_and_seeded_fail_rate(fake: FakeTelegram, bot: Bot) -> None:
    fake.blocked.add(9)
    with pytest.raises(Forbidden, match="bot was blocked by the user"):
        await bot.send_message(9, "hi")
    with pytest.raises(Forbidden):
        await bot.send_chat_action(9, "typing")
    assert fake.forbidden == 2

    fake.fail_next(2)
    for _ in range(2):
        with pytest.raises(NetworkError, match="Bad Gateway"):
            await bot.send_message(1, "retry me")
    fake.fail_next(1, status=500)
    with pytest.raises(NetworkError):
        await bot.send_message(1, "retry me")
    await bot.send_message(1, "retry me")
    assert fake.failed == 3
    assert [m.text for m in fake.sent] == ["retry me"]
    assert fake.calls[-2].status == 500

    async def outcomes(seed: int) -> list[bool]:
        async with FakeTelegram(seed=seed) as other, _bot(other) as client:
            other.fail_rate = 0.5
            result = []
            for i in range(12):
                try:
                    await client.send_message(1, f"n{i}")
                    result.append(True)
                except NetworkError:
                    result.append(False)
            assert other.failed == result.count(False)
            return result

    first, again = await outcomes(3), await outcomes(3)
    assert first == again and True in first and False in first


async def test_timeouts_accepted_make_duplicates(fake: FakeTelegram) -> None:
    async with _bot(fake, request=HTTPXRequest(read_timeout=0.3)) as bot:
        fake.timeout_rate = 1.0
        fake.timeout_seconds = 2.0
        with pytest.raises(TimedOut):
            await bot.send_message(1, "your key: K-1")
        # Delivered although the client saw a timeout; its retry duplicates it.
        assert [m.text for m in fake.sent] == ["your key: K-1"]
        fake.timeout_rate = 0.0
        await bot.send_message(1, "your key: K-1")
        assert fake.duplicates() == {1: {"your key: K-1": 2}}

        fake.timeout_rate = 1.0
        fake.timeout_accepts = False
        with pytest.raises(TimedOut):
            await bot.send_message(2, "dropped")
        assert fake.messages_to(2) == []
        assert fake.timed_out == 2


async def test_document_download_and_upload(fake: FakeTelegram, bot: Bot) -> None:
    content = b"key1,key2\nAAAA,BBBB\n" + bytes(range(256))
    fake.message(7, "keys to import", document=("keys.csv", content))
    (update,) = await bot.get_updates()
    assert update.message is not None and update.message.document is not None
    assert update.message.caption == "keys to import"
    assert update.message.document.file_name == "keys.csv"
    tg_file = await update.message.document.get_file()
    assert tg_file.file_path is not None and tg_file.file_path.startswith(fake.url)
    assert bytes(await tg_file.download_as_bytearray()) == content

    msg = await bot.send_document(
        7,
        document=b"SECRET-KEY",
        filename="key.txt",
        caption="<b>your key</b>",
        parse_mode="HTML",
        protect_content=True,
    )
    assert msg.document is not None and msg.document.file_name == "key.txt"
    assert msg.caption == "your key"
    sent = fake.sent[-1]
    assert sent.method == "sendDocument" and sent.protect_content
    assert (sent.file_name, sent.file_content) == ("key.txt", b"SECRET-KEY")
    assert sent.params["document"]["content"] == b"SECRET-KEY"
    assert sent.text == "<b>your key</b>"

    # Re-sending by file_id works and the bytes stay reachable.
    await bot.send_document(8, document=msg.document.file_id)
    assert fake.sent[-1].file_content == b"SECRET-KEY"


async def test_invoice_pre_checkout_payment_refund(fake: FakeTelegram, bot: Bot) -> None:
    invoice = await bot.send_invoice(
        5,
        title="Steam key",
        description="Game X",
        payload="order:17",
        currency="XTR",
        prices=[LabeledPrice("Key", 50)],
    )
    assert invoice.invoice is not None and invoice.invoice.total_amount == 50
    sent = await fake.wait_for(lambda m: m.method == "sendInvoice")
    assert sent.params["payload"] == "order:17"
    assert sent.params["prices"] == [{"label": "Key", "amount": 50}]

    fake.pre_checkout(5, "order:17", 50)
    (update,) = await bot.get_updates()
    query = update.pre_checkout_query
    assert query is not None and query.invoice_payload == "order:17"
    assert await query.answer(ok=True)
    assert fake.pre_checkout_answers[0]["ok"] is True
    assert fake.pre_checkout_answers[0]["pre_checkout_query_id"] == query.id

    fake.successful_payment(5, "order:17", 50)
    (update,) = await bot.get_updates(offset=update.update_id + 1)
    assert update.message is not None and update.message.successful_payment is not None
    charge = update.message.successful_payment.telegram_payment_charge_id
    assert await bot.refund_star_payment(5, charge)
    with pytest.raises(BadRequest, match="(?i)charge_already_refunded"):
        await bot.refund_star_payment(5, charge)
    with pytest.raises(BadRequest, match="(?i)charge_not_found"):
        await bot.refund_star_payment(5, "no-such-charge")
    assert [r["telegram_payment_charge_id"] for r in fake.refunded_star_payments] == [charge]


async def test_commands_and_callback_answers(fake: FakeTelegram, bot: Bot) -> None:
    assert await bot.set_my_commands([("start", "Start"), ("help", "Help")])
    assert await bot.set_my_commands([("start", "Starten")], language_code="de")
    assert [c.command for c in await bot.get_my_commands()] == ["start", "help"]
    assert [c.description for c in await bot.get_my_commands(language_code="de")] == ["Starten"]
    assert await bot.delete_my_commands()
    assert await bot.get_my_commands() == ()

    msg = await bot.send_message(3, "menu")
    fake.press(3, fake.sent[-1], "forged:data")
    (update,) = await bot.get_updates()
    assert update.callback_query is not None
    assert update.callback_query.data == "forged:data"
    assert update.callback_query.message is not None
    assert update.callback_query.message.message_id == msg.message_id
    assert await update.callback_query.answer()
    with pytest.raises(BadRequest, match="(?i)query is too old"):
        await update.callback_query.answer()
    assert len(fake.callback_answers) == 1


async def test_wait_for_past_future_and_timeout(fake: FakeTelegram, bot: Bot) -> None:
    await bot.send_message(1, "early")
    assert (await fake.wait_for(lambda m: m.text == "early", timeout=0.1)).message_id == 1

    async def later() -> None:
        await asyncio.sleep(0.05)
        for i in range(3):
            await bot.send_message(2, f"late {i}")

    task = asyncio.create_task(later())
    found = await fake.wait_for_count(lambda m: m.chat_id == 2, 2, timeout=5)
    await task
    assert [m.text for m in found] == ["late 0", "late 1"]
    assert all(isinstance(m, SentMessage) for m in found)

    with pytest.raises(TimeoutError, match=r"(?s)0 of 1 .*'late 2'"):
        await fake.wait_for(lambda m: m.text == "never", timeout=0.1)


async def test_webhook_delivery_with_secret_and_retries(fake: FakeTelegram, bot: Bot) -> None:
    received: asyncio.Queue[tuple[str | None, dict[str, Any]]] = asyncio.Queue()
    answers = [500]  # the first delivery fails, so the fake must retry

    async def receive(request: web.Request) -> web.Response:
        received.put_nowait(
            (request.headers.get("X-Telegram-Bot-Api-Secret-Token"), await request.json())
        )
        return web.Response(status=answers.pop(0) if answers else 200)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook_url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        fake.message(11, "queued before the webhook")
        assert await bot.set_webhook(hook_url, secret_token="s3cret_Token-1")
        info = await bot.get_webhook_info()
        assert info.url == hook_url

        fake.message(11, "/start buy_W")
        bodies = [await asyncio.wait_for(received.get(), 5) for _ in range(3)]
        assert {secret for secret, _ in bodies} == {"s3cret_Token-1"}
        texts = [body["message"]["text"] for _, body in bodies]
        # The first attempt got 500 and was retried; per-chat order is kept.
        assert texts == ["queued before the webhook"] * 2 + ["/start buy_W"]
        assert Update.de_json(bodies[-1][1], bot).message.text == "/start buy_W"
        with pytest.raises(Conflict, match="webhook is active"):
            await bot.get_updates()

        assert await bot.delete_webhook()
        fake.message(11, "polling again")
        (update,) = await bot.get_updates()
        assert update.message is not None and update.message.text == "polling again"
        assert [status for _, status in fake.webhook_deliveries] == [200, 200]
    finally:
        await runner.cleanup()

    # Nobody listens any more: a few retries, then the failure is recorded.
    fake.webhook_retries = 1
    fake.webhook_retry_delay = 0.01
    assert await bot.set_webhook(hook_url)
    update = fake.press(11, 1, "x")
    for _ in range(200):
        if len(fake.webhook_failures) == 2:
            break
        await asyncio.sleep(0.01)
    # "polling again" was fetched but never confirmed, so it was re-sent to the webhook too.
    failed = [body["update_id"] for body, _ in fake.webhook_failures]
    assert failed == [update["update_id"] - 1, update["update_id"]]
    assert "ConnectionRefused" in fake.webhook_failures[-1][1]
    assert json.dumps(update)  # updates stay JSON-serialisable


async def test_get_and_json_requests_are_understood(fake: FakeTelegram) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{fake.url}/bot{fake.token}/getMe") as resp:
            assert resp.status == 200
            assert (await resp.json())["result"]["username"] == fake.bot_username
        markup = {"inline_keyboard": [[{"text": "Ok", "callback_data": "ok"}]]}
        async with session.post(
            f"{fake.url}/bot{fake.token}/sendmessage",  # method names are case-insensitive
            json={"chat_id": 77, "text": "123", "reply_markup": markup},
        ) as resp:
            body = await resp.json()
    assert body["ok"] and body["result"]["text"] == "123"
    assert fake.sent[-1].text == "123"  # a numeric-looking text stays a string
    assert fake.sent[-1].button("Ok")["callback_data"] == "ok"


async def test_polling_application_under_load(fake: FakeTelegram) -> None:
    async def on_start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        await update.message.reply_text(f"hi {context.args[0] if context.args else ''}")

    app = (
        ApplicationBuilder()
        .token(fake.token)
        .base_url(f"{fake.url}/bot")
        .base_file_url(f"{fake.url}/file/bot")
        .concurrent_updates(True)
        .connection_pool_size(16)
        .build()
    )
    app.add_handler(CommandHandler("start", on_start))
    users = range(5000, 5150)
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0, timeout=1)
        try:
            for user in users:
                fake.message(user, f"/start u{user}")
            replies = await fake.wait_for_count(
                lambda m: m.text is not None and m.text.startswith("hi "), len(users), timeout=15
            )
        finally:
            await app.updater.stop()
            await app.stop()
    assert sorted(m.chat_id for m in replies) == list(users)
    assert all(m.text == f"hi u{m.chat_id}" for m in replies)
    assert fake.duplicates() == {}
