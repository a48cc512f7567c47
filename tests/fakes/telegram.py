"""Fake Telegram Bot API server for end-to-end tests, stress tests and benchmarks.

This module owns :class:`FakeTelegram`: a real HTTP server (aiohttp.web) that speaks the
subset of the Bot API keyvend uses, so the *real* python-telegram-bot client can be pointed
at it with ``base_url=f"{fake.url}/bot"`` and ``base_file_url=f"{fake.url}/file/bot"``.
It records what the bot did (``sent``, ``deleted``, ``calls`` ...), lets a test act as users
(``message``, ``press``, ``pay``, ``pre_checkout``, ``successful_payment``) over long polling or a
webhook, and injects deterministic faults (rate limits, 5xx, hangs, blocked users).

Where Telegram's behaviour is cheap to mimic and apps commonly trip over it, the fake
mimics it (HTML parse errors, "message is not modified", expired callback queries,
double refunds), because a fake that is more lenient than production hides real bugs.

Everything runs on the event loop that called :meth:`FakeTelegram.start`; the driving
methods (``message`` etc.) must be called from that loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import math
import random
import re
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self

import aiohttp
from aiohttp import web

__all__ = ["Call", "FakeTelegram", "SentMessage", "parse_html"]

_LOG = logging.getLogger(__name__)

DEFAULT_TOKEN = "123456:TEST-token-abcdefghijklmnopqrstuvwxyz0123"

# Methods that produce a SentMessage and are subject to rate caps and send faults.
SEND_METHODS = frozenset(
    {
        "sendMessage",
        "sendDocument",
        "sendPhoto",
        "sendInvoice",
        "editMessageText",
        "editMessageCaption",
    }
)
# Methods addressed to a chat, which a user who blocked the bot refuses.
_CHAT_METHODS = SEND_METHODS | {"editMessageReplyMarkup", "sendChatAction"}

# PTB sends str values raw and everything else JSON-encoded, so a form value can only be
# told apart by its key: these keys are always strings even when they look like numbers.
_STRING_PARAMS = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "callback_query_id",
        "inline_message_id",
        "url",
        "secret_token",
        "title",
        "description",
        "payload",
        "currency",
        "provider_token",
        "pre_checkout_query_id",
        "error_message",
        "telegram_payment_charge_id",
        "file_id",
        "language_code",
        "business_connection_id",
        "message_effect_id",
        "start_parameter",
        "photo_url",
        "provider_data",
        "action",
        "name",
        "short_description",
        "ip_address",
        "document",
        "thumbnail",
        "emoji",
    }
)

_MAX_TEXT = 4096
_MAX_CAPTION = 1024
_FILE_PIECE = 64 * 1024  # bytes written at a time when a file is downloaded
_BUTTON_ACTIONS = frozenset(
    {
        "url",
        "callback_data",
        "web_app",
        "login_url",
        "switch_inline_query",
        "switch_inline_query_current_chat",
        "switch_inline_query_chosen_chat",
        "copy_text",
        "callback_game",
        "pay",
    }
)
_COMMAND_RE = re.compile(r"/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,64})?")
_HTML_TAG_RE = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s[^<>]*)?)>")
_HTML_ATTR_RE = re.compile(r"""([a-zA-Z][a-zA-Z0-9-]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")
_HTML_ENTITY_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "code": "code",
    "pre": "pre",
    "a": "text_link",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_MD_SPOILER_RE = re.compile(r"\|\|(.+?)\|\|", re.DOTALL)
_MD_ESCAPE_RE = re.compile(r"\\(.)")

_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
_QUERY_TOO_OLD = "Bad Request: query is too old and response timeout expired or query ID is invalid"


class _ApiError(Exception):
    """An error answer of the Bot API: raised by method handlers, turned into JSON."""

    def __init__(self, status: int, description: str, parameters: dict[str, Any] | None = None):
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.status,
            "description": self.description,
        }
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def _bad_request(what: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {what}")


def _error_for_status(status: int, retry_after: int = 1) -> _ApiError:
    if status == 429:
        return _ApiError(
            429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
        )
    if status == 403:
        return _ApiError(403, "Forbidden: bot was blocked by the user")
    if status == 400:
        return _bad_request("injected failure")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return _ApiError(status, phrase)


def _u16len(text: str) -> int:
    # Telegram measures entity offsets and lengths in UTF-16 code units.
    return len(text.encode("utf-16-le")) // 2


def _u16slice(text: str, offset: int, length: int) -> str:
    raw = text.encode("utf-16-le")
    return raw[offset * 2 : (offset + length) * 2].decode("utf-16-le", errors="replace")


def _byte_offset(text: str, index: int) -> int:
    # Only computed for error messages: encoding the prefix is O(n).
    return len(text[:index].encode())


def _decode_value(key: str, raw: str) -> Any:
    if key in _STRING_PARAMS or not raw:
        return raw
    first = raw[0]
    if first in '{["-' or first.isdigit() or raw in ("true", "false", "null"):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def parse_html(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Parse Telegram-flavoured HTML like the Bot API does.

    Returns the plain text (tags stripped, HTML entities decoded) and the message entities
    Telegram would attach. Raises an error answer (400 "can't parse entities") for markup
    Telegram rejects: unsupported or unbalanced tags and stray ``<``.
    """
    out: list[str] = []
    entities: list[dict[str, Any]] = []
    # (tag name, entity type or None, start offset in UTF-16 units, extra entity fields)
    stack: list[tuple[str, str | None, int, dict[str, Any]]] = []
    pos = 0
    u16 = 0
    length = len(text)
    while pos <= length:
        lt = text.find("<", pos)
        chunk = text[pos : length if lt < 0 else lt]
        if chunk:
            plain = html.unescape(chunk)
            out.append(plain)
            u16 += _u16len(plain)
        if lt < 0:
            break
        match = _HTML_TAG_RE.match(text, lt)
        if match is None:
            byte_offset = _byte_offset(text, lt)
            snippet = re.split(r"[\s<>]", text[lt + 1 : lt + 33], maxsplit=1)[0]
            raise _bad_request(
                f'can\'t parse entities: Unsupported start tag "{snippet}" '
                f"at byte offset {byte_offset}"
            )
        closing, name, attr_text = match.group(1) == "/", match.group(2).lower(), match.group(3)
        if closing:
            if not stack or stack[-1][0] != name:
                byte_offset = _byte_offset(text, lt)
                expected = f'"</{stack[-1][0]}>"' if stack else "no end tag"
                raise _bad_request(
                    f"can't parse entities: Unmatched end tag at byte offset {byte_offset}, "
                    f'expected {expected}, found "</{name}>"'
                )
            _, etype, start, extra = stack.pop()
            if etype is not None and u16 > start:
                entities.append({"type": etype, "offset": start, "length": u16 - start, **extra})
        else:
            etype = _HTML_ENTITY_TYPES.get(name)
            if etype is None:
                raise _bad_request(
                    f'can\'t parse entities: Unsupported start tag "{name}" '
                    f"at byte offset {_byte_offset(text, lt)}"
                )
            attrs = {
                m.group(1).lower(): html.unescape(next(g for g in m.groups()[1:] if g is not None))
                for m in _HTML_ATTR_RE.finditer(attr_text)
            }
            extra: dict[str, Any] = {}
            if name == "span" and attrs.get("class") != "tg-spoiler":
                raise _bad_request(
                    f'can\'t parse entities: Tag "span" must have class "tg-spoiler" '
                    f"at byte offset {_byte_offset(text, lt)}"
                )
            if name == "a":
                extra["url"] = attrs.get("href", "")
            elif name == "tg-emoji":
                extra["custom_emoji_id"] = attrs.get("emoji-id", "")
            elif name == "blockquote" and "expandable" in attr_text:
                etype = "expandable_blockquote"
            elif name == "code" and stack and stack[-1][0] == "pre":
                # <pre><code class="language-x"> is one pre entity with a language.
                lang = attrs.get("class", "")
                if lang.startswith("language-"):
                    stack[-1][3]["language"] = lang[len("language-") :]
                etype = None
            stack.append((name, etype, u16, extra))
        pos = match.end()
    if stack:
        raise _bad_request(
            "can't parse entities: Can't find end tag corresponding to start tag "
            f'"{stack[-1][0]}"'
        )
    entities.sort(key=lambda e: e["offset"])
    return "".join(out), entities


@dataclass(slots=True)
class Call:
    """One HTTP request the bot made: method name, decoded params, HTTP status answered."""

    method: str
    params: dict[str, Any]
    status: int
    time: float  # time.monotonic() when the request arrived


@dataclass(eq=False)
class SentMessage:
    """A message the fake accepted from the bot (a send or an edit; ``method`` says which).

    ``text`` is the text or caption exactly as the bot sent it (HTML still in it);
    ``plain_text`` is what the user sees; ``entities`` are the entities of ``plain_text``
    (the bot's explicit entities, or those parsed from HTML).
    """

    method: str
    chat_id: int
    message_id: int
    text: str | None
    params: dict[str, Any]
    entities: list[dict[str, Any]]
    time: float  # time.monotonic() when accepted
    plain_text: str | None = None

    @property
    def kind(self) -> str:
        return self.method

    @property
    def protect_content(self) -> bool:
        return bool(self.params.get("protect_content"))

    @property
    def reply_markup(self) -> dict[str, Any] | None:
        markup = self.params.get("reply_markup")
        return markup if isinstance(markup, dict) else None

    @property
    def file_name(self) -> str | None:
        doc = self.params.get("document")
        return doc.get("file_name") if isinstance(doc, dict) else None

    @property
    def file_content(self) -> bytes | None:
        doc = self.params.get("document")
        return doc.get("content") if isinstance(doc, dict) else None

    def buttons(self) -> list[dict[str, Any]]:
        markup = self.reply_markup or {}
        return [button for row in markup.get("inline_keyboard", []) for button in row]

    def button(self, text_contains: str) -> dict[str, Any]:
        for button in self.buttons():
            if text_contains in button.get("text", ""):
                return button
        listed = [b.get("text") for b in self.buttons()]
        raise LookupError(
            f"no button containing {text_contains!r} on message {self.message_id} "
            f"in chat {self.chat_id}; buttons: {listed}"
        )

    def spoiler_texts(self) -> list[str]:
        plain = self.plain_text if self.plain_text is not None else self.text
        if plain is None:
            return []
        spoilers = [
            _u16slice(plain, e["offset"], e["length"])
            for e in self.entities
            if e.get("type") == "spoiler"
        ]
        if spoilers or self.entities:
            return spoilers
        if str(self.params.get("parse_mode", "")).lower() == "markdownv2" and self.text:
            return [_MD_ESCAPE_RE.sub(r"\1", m) for m in _MD_SPOILER_RE.findall(self.text)]
        return []

    def summary(self) -> str:
        text = (self.plain_text if self.plain_text is not None else self.text) or ""
        if len(text) > 80:
            text = text[:77] + "..."
        buttons = [b.get("text") for b in self.buttons()]
        tail = f" buttons={buttons}" if buttons else ""
        return f"[chat {self.chat_id} #{self.message_id} {self.method}] {text!r}{tail}"


@dataclass(eq=False)
class _Waiter:
    predicate: Callable[[SentMessage], bool]
    needed: int
    future: asyncio.Future[list[SentMessage]]
    matches: list[SentMessage] = field(default_factory=list)


_Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class FakeTelegram:
    """A fake Bot API server; see the module docstring.

    Typical use::

        async with FakeTelegram() as tg:
            app = (ApplicationBuilder().token(tg.token).base_url(f"{tg.url}/bot")
                   .base_file_url(f"{tg.url}/file/bot").build())
            # (start the app polling, or setWebhook)
            tg.message(1001, "/start buy_X")
            menu = await tg.wait_for(lambda m: m.chat_id == 1001)
            tg.press(1001, menu, menu.button("Buy")["callback_data"])

    Fault knobs (``rate_cap``, ``per_chat_cap``, ``fail_rate``, ``timeout_rate``,
    ``blocked``, ``latency``, ``fail_next``) apply to the methods in ``fault_methods``
    and may be changed at any moment; random draws come from ``random.Random(seed)``.
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_username: str = "keyvend_test_bot",
        seed: int = 0,
    ) -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.bot_username = bot_username
        self.url = ""
        self.bot_user: dict[str, Any] = {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "KeyVend Test",
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

        # --- what the bot did ---
        self.sent: list[SentMessage] = []
        self.deleted: list[tuple[int, int]] = []
        self.calls: list[Call] = []
        self.callback_answers: list[dict[str, Any]] = []
        self.pre_checkout_answers: list[dict[str, Any]] = []
        self.refunded_star_payments: list[dict[str, Any]] = []
        # Invoices the bot issued: (chat, message id) for sendInvoice, the link for
        # createInvoiceLink; each {"payload", "currency", "total_amount", "subscription_period"}.
        self.invoices: dict[tuple[int, int] | str, dict[str, Any]] = {}
        # The bot's Star transactions, oldest first, as getStarTransactions returns them.
        self.star_transactions: list[dict[str, Any]] = []
        self.subscription_edits: list[dict[str, Any]] = []
        self.chat_actions: list[dict[str, Any]] = []
        self.injected: list[dict[str, Any]] = []  # every update the test created
        self.webhook_deliveries: list[tuple[int, int]] = []  # (update_id, HTTP status)
        self.webhook_failures: list[tuple[dict[str, Any], str]] = []
        self.record_calls = True  # benchmarks may switch it off to save memory

        # --- fault injection; plain attributes, change them at any time ---
        self.rate_cap: float | None = None
        # Sends with allow_paid_broadcast have Telegram's paid limit, in a window of their
        # own (applied with rate_cap, like it); ``paid_broadcasts`` counts those accepted.
        self.paid_rate_cap = 1000.0
        self.paid_broadcasts = 0
        self.per_chat_cap: float | None = None
        self.retry_after_seconds = 1
        self.fail_rate = 0.0
        self.timeout_rate = 0.0
        self.timeout_seconds = 10.0  # longer than PTB's default 5 s read timeout
        self.timeout_accepts = True
        self.blocked: set[int] = set()
        self.latency = 0.0
        self.fault_methods: set[str] = set(SEND_METHODS)
        self.strict = True  # Telegram's own 400s: not modified, stale callback, double refund
        self.throttled = 0
        self.failed = 0
        self.timed_out = 0
        self.forbidden = 0

        # --- webhook delivery tuning ---
        self.webhook_retries = 4
        self.webhook_retry_delay = 0.05
        self.webhook_timeout = 10.0

        self._rng = random.Random(seed)
        self._fail_next: deque[int] = deque()
        self._by_chat: defaultdict[int, list[SentMessage]] = defaultdict(list)
        self._text_counts: defaultdict[int, Counter[str]] = defaultdict(Counter)
        self._store: dict[tuple[int, int], dict[str, Any]] = {}
        self._next_mid: defaultdict[int, int] = defaultdict(int)
        self._next_update_id = 1
        self._next_query_id = 1
        self._next_file_id = 1
        self._open_queries: set[str] = set()
        self._files: dict[str, dict[str, Any]] = {}  # file_id -> meta incl. content
        self._file_paths: dict[str, bytes] = {}
        self._charges: dict[str, dict[str, Any]] = {}
        self._commands: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._global_window: deque[float] = deque()
        self._paid_window: deque[float] = deque()
        self._chat_windows: defaultdict[int, deque[float]] = defaultdict(deque)
        self._waiters: list[_Waiter] = []

        self._updates: deque[dict[str, Any]] = deque()
        self._wakeup = asyncio.Event()
        self._poll_generation = 0
        self._webhook: dict[str, Any] | None = None
        self._delivery_tasks: set[asyncio.Task[None]] = set()
        self._chat_locks: dict[int, asyncio.Lock] = {}
        self._webhook_sem: asyncio.Semaphore | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._closed = asyncio.Event()
        self._closing = False

        self._methods: dict[str, tuple[str, _Handler]] = {}
        for name, handler in {
            "getMe": self._get_me,
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "editMessageCaption": self._edit_message_caption,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "deleteMessage": self._delete_message,
            "deleteMessages": self._delete_messages,
            "answerCallbackQuery": self._answer_callback_query,
            "sendDocument": self._send_document,
            "sendPhoto": self._send_photo,
            "sendInvoice": self._send_invoice,
            "answerPreCheckoutQuery": self._answer_pre_checkout_query,
            "refundStarPayment": self._refund_star_payment,
            "createInvoiceLink": self._create_invoice_link,
            "getStarTransactions": self._get_star_transactions,
            "editUserStarSubscription": self._edit_user_star_subscription,
            "setMyCommands": self._set_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "getMyCommands": self._get_my_commands,
            "sendChatAction": self._send_chat_action,
            "getFile": self._get_file,
            "close": self._true,
            "logOut": self._true,
            # Harmless startup calls an app may make; answering 404 would abort its start.
            "setMyDescription": self._true,
            "setMyShortDescription": self._true,
            "setMyName": self._true,
            "setChatMenuButton": self._true,
        }.items():
            # Telegram matches method names case-insensitively.
            self._methods[name.lower()] = (name, handler)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        # access_log=None: per-request logging would dominate benchmark CPU time.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]  # the real port when port=0
        self.url = f"http://{host}:{bound_port}"
        self._closing = False
        self._closed = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._webhook_sem = asyncio.Semaphore(40)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.webhook_timeout)
        )

    async def stop(self) -> None:
        self._closing = True
        self._closed.set()
        self._wake()  # long polls answer at once instead of holding shutdown
        tasks = list(self._delivery_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ inspection

    def messages_to(self, chat_id: int) -> list[SentMessage]:
        return list(self._by_chat.get(chat_id, ()))

    def current_message(self, chat_id: int, message_id: int) -> dict[str, Any] | None:
        """The message as it is now (after edits), as Telegram would return it."""
        return self._store.get((chat_id, message_id))

    def duplicates(self) -> dict[int, dict[str, int]]:
        """Per chat, texts of new messages (not edits) accepted more than once, with counts."""
        result: dict[int, dict[str, int]] = {}
        for chat_id, counts in self._text_counts.items():
            dups = {text: n for text, n in counts.items() if n > 1}
            if dups:
                result[chat_id] = dups
        return result

    def updates_pending(self) -> int:
        """Updates not yet confirmed by getUpdates, plus webhook deliveries in flight."""
        return len(self._updates) + len(self._delivery_tasks)

    def fail_next(self, n: int, status: int = 502) -> None:
        self._fail_next.extend([status] * n)

    async def wait_for(
        self, predicate: Callable[[SentMessage], bool], timeout: float = 10.0
    ) -> SentMessage:
        return (await self._wait(predicate, 1, timeout))[0]

    async def wait_for_count(
        self, predicate: Callable[[SentMessage], bool], n: int, timeout: float = 10.0
    ) -> list[SentMessage]:
        return await self._wait(predicate, n, timeout)

    async def _wait(
        self, predicate: Callable[[SentMessage], bool], n: int, timeout: float
    ) -> list[SentMessage]:
        matches = [m for m in self.sent if predicate(m)]
        if len(matches) >= n:
            return matches[:n]
        waiter = _Waiter(predicate, n, asyncio.get_running_loop().create_future(), matches)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter.future, timeout)
        except TimeoutError:
            last = "\n  ".join(m.summary() for m in self.sent[-10:]) or "(none)"
            raise TimeoutError(
                f"only {len(waiter.matches)} of {n} matching message(s) within {timeout}s; "
                f"{len(self.sent)} accepted in all, the last ones:\n  {last}"
            ) from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _notify(self, message: SentMessage) -> None:
        for waiter in list(self._waiters):
            if waiter.future.done():
                continue
            try:
                matched = waiter.predicate(message)
            except Exception as exc:  # noqa: BLE001 - surface predicate bugs in the waiting test
                waiter.future.set_exception(exc)
                continue
            if matched:
                waiter.matches.append(message)
                if len(waiter.matches) >= waiter.needed:
                    waiter.future.set_result(waiter.matches[: waiter.needed])

    # ------------------------------------------------------------------ driving users

    def _user(
        self, user_id: int, first_name: str, language_code: str, username: str | None = None
    ) -> dict[str, Any]:
        user = {
            "id": user_id,
            "is_bot": False,
            "first_name": first_name,
            "language_code": language_code,
        }
        if username:
            user["username"] = username
        return user

    @staticmethod
    def _chat(chat_id: int, first_name: str | None = None) -> dict[str, Any]:
        if chat_id > 0:
            chat: dict[str, Any] = {"id": chat_id, "type": "private"}
            if first_name:
                chat["first_name"] = first_name
            return chat
        kind = "supergroup" if str(chat_id).startswith("-100") else "group"
        return {"id": chat_id, "type": kind, "title": f"Chat {chat_id}"}

    def _new_message_id(self, chat_id: int) -> int:
        self._next_mid[chat_id] += 1
        return self._next_mid[chat_id]

    def _new_file(
        self,
        file_name: str | None,
        content: bytes,
        mime_type: str | None,
        *,
        with_file_size: bool = True,
    ) -> dict:
        n = self._next_file_id
        self._next_file_id += 1
        suffix = ""
        if file_name and "." in file_name:
            suffix = "." + re.sub(r"[^A-Za-z0-9]", "", file_name.rsplit(".", 1)[1])[:10]
        meta = {
            "file_id": f"DOC{self.bot_id}-{n}",
            "file_unique_id": f"U{n}",
            "file_name": file_name,
            "mime_type": mime_type or "application/octet-stream",
            "file_size": len(content) if with_file_size else None,
            "file_path": f"documents/file_{n}{suffix}",
        }
        self._files[meta["file_id"]] = meta
        self._file_paths[meta["file_path"]] = content
        return meta

    @staticmethod
    def _document_json(meta: dict[str, Any]) -> dict[str, Any]:
        doc = {k: meta[k] for k in ("file_id", "file_unique_id", "mime_type")}
        if meta["file_size"] is not None:  # optional in the Bot API: clients may not send it
            doc["file_size"] = meta["file_size"]
        if meta.get("file_name"):
            doc["file_name"] = meta["file_name"]
        return doc

    def message(
        self,
        user_id: int,
        text: str,
        *,
        language_code: str = "en",
        document: tuple[str, bytes] | None = None,
        with_file_size: bool = True,
        first_name: str = "Buyer",
        username: str | None = None,
    ) -> dict[str, Any]:
        """Queue an Update with a private-chat message from ``user_id``; returns the update.

        ``with_file_size=False`` leaves ``file_size`` out of the document and of ``getFile``,
        as the Bot API may.
        """
        msg: dict[str, Any] = {
            "message_id": self._new_message_id(user_id),
            "date": int(time.time()),
            "chat": self._chat(user_id, first_name),
            "from": self._user(user_id, first_name, language_code, username),
        }
        entities = []
        command = _COMMAND_RE.match(text) if text else None
        if command:
            # CommandHandler only matches a bot_command entity at offset 0.
            entities.append({"type": "bot_command", "offset": 0, "length": _u16len(command[0])})
        if document is not None:
            file_name, content = document
            msg["document"] = self._document_json(
                self._new_file(file_name, content, None, with_file_size=with_file_size)
            )
            if text:
                msg["caption"] = text
                if entities:
                    msg["caption_entities"] = entities
        else:
            msg["text"] = text
            if entities:
                msg["entities"] = entities
        self._store[(user_id, msg["message_id"])] = msg
        return self._queue({"message": msg})

    def press(
        self,
        user_id: int,
        message: SentMessage | int,
        data: str,
        *,
        language_code: str = "en",
    ) -> dict[str, Any]:
        """Queue a callback_query Update as if ``user_id`` pressed a button with ``data``.

        ``message`` is a SentMessage or a message id in the user's private chat; ``data``
        need not be one of its buttons, so tests can forge callbacks.
        """
        if isinstance(message, SentMessage):
            chat_id, message_id = message.chat_id, message.message_id
        else:
            chat_id, message_id = user_id, message
        current = self._store.get((chat_id, message_id))
        if current is None:
            # Deleted or never sent: rebuild what the client would still show.
            current = {
                "message_id": message_id,
                "date": int(time.time()),
                "chat": self._chat(chat_id),
                "from": self.bot_user,
            }
            if isinstance(message, SentMessage):
                current["text"] = message.plain_text or message.text or ""
                if message.reply_markup and "inline_keyboard" in message.reply_markup:
                    current["reply_markup"] = message.reply_markup
        query_id = self._new_query_id()
        self._open_queries.add(query_id)
        return self._queue(
            {
                "callback_query": {
                    "id": query_id,
                    "from": self._user(user_id, "Buyer", language_code),
                    "message": current,
                    "chat_instance": f"ci{chat_id}",
                    "data": data,
                }
            }
        )

    def pre_checkout(
        self, user_id: int, invoice_payload: str, total_amount: int, currency: str = "XTR"
    ) -> dict[str, Any]:
        return self._queue(
            {
                "pre_checkout_query": {
                    "id": self._new_query_id(),
                    "from": self._user(user_id, "Buyer", "en"),
                    "currency": currency,
                    "total_amount": total_amount,
                    "invoice_payload": invoice_payload,
                }
            }
        )

    async def pay(
        self,
        user_id: int,
        invoice: SentMessage | str,
        *,
        language_code: str = "en",
        lose_update: bool = False,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """The user taps Pay on an invoice (a sendInvoice message, or a link from
        createInvoiceLink): Telegram asks the bot (pre_checkout_query) and, if the bot says
        yes, charges the user and sends the bot the successful_payment message.

        Returns the bot's answer to the pre-checkout query, with the charge id under
        "charge_id" when the payment went through. With `lose_update`, the money moves and
        the transaction is listed, but the successful_payment update is never delivered:
        as if the bot acknowledged it and died before applying it.
        """
        key = invoice if isinstance(invoice, str) else (invoice.chat_id, invoice.message_id)
        issued = self.invoices.get(key)
        if issued is None:
            raise LookupError(f"no invoice {key!r} was issued by the bot")
        query = self.pre_checkout(
            user_id, issued["payload"], issued["total_amount"], issued["currency"]
        )["pre_checkout_query"]
        answer = await self._answer_to(query["id"], timeout)
        if answer.get("ok") is not True:
            return answer
        period = issued.get("subscription_period")
        charge_id = self.charge(
            user_id,
            issued["payload"],
            issued["total_amount"],
            issued["currency"],
            subscription_period=period,
            deliver=not lose_update,
            is_recurring=bool(period),
            is_first_recurring=bool(period),
            language_code=language_code,
        )
        return {**answer, "charge_id": charge_id}

    def renew(self, user_id: int, charge_id: str, *, lose_update: bool = False) -> str:
        """Telegram charges the next period of a Stars subscription; returns the new charge id."""
        first = self._charges[charge_id]
        return self.charge(
            user_id,
            first["payload"],
            first["total_amount"],
            "XTR",
            subscription_period=first["subscription_period"],
            deliver=not lose_update,
            is_recurring=True,
            is_first_recurring=False,
        )

    async def _answer_to(self, query_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for answer in self.pre_checkout_answers:
                if str(answer.get("pre_checkout_query_id")) == query_id:
                    return answer
            await asyncio.sleep(0.01)
        raise TimeoutError(f"the bot did not answer pre-checkout query {query_id}")

    def charge(
        self,
        user_id: int,
        invoice_payload: str,
        total_amount: int,
        currency: str = "XTR",
        *,
        charge_id: str | None = None,
        subscription_period: int | None = None,
        deliver: bool = True,
        is_recurring: bool = False,
        is_first_recurring: bool = False,
        language_code: str = "en",
    ) -> str:
        """Record a charge (and its Star transaction); send successful_payment if `deliver`."""
        if charge_id is None:
            charge_id = f"stxFAKE{self._rng.getrandbits(64):016x}"
        self._charges[charge_id] = {
            "user_id": user_id,
            "total_amount": total_amount,
            "payload": invoice_payload,
            "subscription_period": subscription_period,
            "refunded": False,
        }
        source: dict[str, Any] = {
            "type": "user",
            "transaction_type": "invoice_payment",
            "user": self._user(user_id, "Buyer", language_code),
            "invoice_payload": invoice_payload,
        }
        if subscription_period:
            source["subscription_period"] = subscription_period
        now = int(time.time())
        self.star_transactions.append(
            {"id": charge_id, "amount": total_amount, "date": now, "source": source}
        )
        paid: dict[str, Any] = {
            "currency": currency,
            "total_amount": total_amount,
            "invoice_payload": invoice_payload,
            "telegram_payment_charge_id": charge_id,
            "provider_payment_charge_id": "",
        }
        if subscription_period:
            paid["subscription_expiration_date"] = now + subscription_period
            paid["is_recurring"] = is_recurring
            paid["is_first_recurring"] = is_first_recurring
        if deliver:
            self._payment_message(user_id, paid, language_code)
        return charge_id

    def _payment_message(
        self, user_id: int, paid: dict[str, Any], language_code: str = "en"
    ) -> dict[str, Any]:
        msg = {
            "message_id": self._new_message_id(user_id),
            "date": int(time.time()),
            "chat": self._chat(user_id, "Buyer"),
            "from": self._user(user_id, "Buyer", language_code),
            "successful_payment": paid,
        }
        self._store[(user_id, msg["message_id"])] = msg
        return self._queue({"message": msg})

    def successful_payment(
        self,
        user_id: int,
        invoice_payload: str,
        total_amount: int,
        currency: str = "XTR",
        charge_id: str | None = None,
    ) -> dict[str, Any]:
        """Queue a successful_payment message; a charge id seen before is sent again as is
        (Telegram redelivering the same update), a new one is charged first."""
        if charge_id is None or charge_id not in self._charges:
            charge_id = self.charge(
                user_id, invoice_payload, total_amount, currency, charge_id=charge_id, deliver=False
            )
        return self._payment_message(
            user_id,
            {
                "currency": currency,
                "total_amount": total_amount,
                "invoice_payload": invoice_payload,
                "telegram_payment_charge_id": charge_id,
                "provider_payment_charge_id": "",
            },
        )

    def _new_query_id(self) -> str:
        query_id = f"{self.bot_id}{self._next_query_id:08d}"
        self._next_query_id += 1
        return query_id

    def _queue(self, body: dict[str, Any]) -> dict[str, Any]:
        update = {"update_id": self._next_update_id, **body}
        self._next_update_id += 1
        self.injected.append(update)
        if self._webhook is not None:
            self._schedule_delivery(update)
        else:
            self._updates.append(update)
            self._wake()
        return update

    def _wake(self) -> None:
        event, self._wakeup = self._wakeup, asyncio.Event()
        event.set()

    # ------------------------------------------------------------------ webhook delivery

    def _schedule_delivery(self, update: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(update))
        self._delivery_tasks.add(task)
        task.add_done_callback(self._delivery_tasks.discard)

    @staticmethod
    def _update_chat(update: dict[str, Any]) -> int:
        for key in ("message", "callback_query", "pre_checkout_query"):
            body = update.get(key)
            if body:
                sender = body.get("from") or body.get("chat") or {}
                return int(sender.get("id", 0))
        return 0

    async def _deliver(self, update: dict[str, Any]) -> None:
        # One chat's updates go out in order, like Telegram's; chats proceed in parallel.
        lock = self._chat_locks.setdefault(self._update_chat(update), asyncio.Lock())
        assert self._webhook_sem is not None
        async with lock, self._webhook_sem:
            body = json.dumps(update).encode()
            error = "webhook deleted"
            for attempt in range(self.webhook_retries + 1):
                webhook = self._webhook
                if webhook is None or self._session is None:
                    # Webhook removed meanwhile: the update waits for getUpdates instead.
                    self._updates.append(update)
                    self._updates = deque(sorted(self._updates, key=lambda u: u["update_id"]))
                    self._wake()
                    return
                headers = {"Content-Type": "application/json"}
                if webhook.get("secret_token"):
                    headers["X-Telegram-Bot-Api-Secret-Token"] = webhook["secret_token"]
                try:
                    async with self._session.post(
                        webhook["url"], data=body, headers=headers
                    ) as resp:
                        await resp.read()
                        if resp.status < 500:
                            self.webhook_deliveries.append((update["update_id"], resp.status))
                            return
                        error = f"HTTP {resp.status}"
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    error = repr(exc)
                if attempt < self.webhook_retries:
                    await asyncio.sleep(self.webhook_retry_delay * 2**attempt)
            _LOG.debug("webhook delivery of update %s failed: %s", update["update_id"], error)
            self.webhook_failures.append((update, error))

    # ------------------------------------------------------------------ HTTP layer

    @staticmethod
    def _json(status: int, payload: dict[str, Any]) -> web.Response:
        return web.Response(
            body=json.dumps(payload).encode(), status=status, content_type="application/json"
        )

    async def _read_params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = {k: _decode_value(k, v) for k, v in request.query.items()}
        if request.method != "POST" or not request.can_read_body:
            return params
        if request.content_type == "application/json":
            body = await request.json()
            if isinstance(body, dict):
                params.update(body)
            return params
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                params[key] = {
                    "file_name": value.filename,
                    "content": value.file.read(),
                    "mime_type": value.content_type,
                }
            else:
                params[key] = _decode_value(key, value)
        return params

    async def _handle_api(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            status, payload = 401, _ApiError(401, "Unauthorized").payload()
            params: dict[str, Any] = {}
        else:
            try:
                params = await self._read_params(request)
            except ValueError as exc:
                params = {}
                status, payload = 400, _bad_request(f"can't parse request: {exc}").payload()
            else:
                status, payload = await self._dispatch(method, params)
        if self.record_calls:
            self.calls.append(Call(method, params, status, arrived))
        return self._json(status, payload)

    async def _handle_file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return self._json(401, _ApiError(401, "Unauthorized").payload())
        content = self._file_paths.get(request.match_info["path"])
        if content is None:
            return self._json(404, _ApiError(404, "Not Found").payload())
        # Streamed in pieces, as a file server does: a 20 MB body written at once would sit
        # in the transport's buffer, a copy the size of the file in the test's own memory.
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = len(content)
        await response.prepare(request)
        view = memoryview(content)
        for start in range(0, len(content), _FILE_PIECE):
            await response.write(view[start : start + _FILE_PIECE])
        await response.write_eof()
        return response

    async def _dispatch(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        entry = self._methods.get(method.lower())
        if entry is None:
            return 404, _ApiError(404, "Not Found: method not found").payload()
        name, handler = entry
        hang = False
        try:
            if name in self.fault_methods:
                hang = await self._inject_faults(name, params)
            elif name in _CHAT_METHODS:
                self._check_blocked(params)
            if hang and not self.timeout_accepts:
                await self._sleep(self.timeout_seconds)
                raise _error_for_status(504)
            result = await handler(params)
        except _ApiError as exc:
            return exc.status, exc.payload()
        if hang:
            # Accepted, but the answer arrives after the client gave up: a duplicate risk.
            await self._sleep(self.timeout_seconds)
        return 200, {"ok": True, "result": result}

    async def _sleep(self, seconds: float) -> None:
        # Interruptible, so stop() never waits out a hanging request.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), seconds)

    def _check_blocked(self, params: dict[str, Any]) -> None:
        if self.blocked and params.get("chat_id") in self.blocked:
            self.forbidden += 1
            raise _error_for_status(403)

    async def _inject_faults(self, name: str, params: dict[str, Any]) -> bool:
        """Apply configured faults to a send; raises the error answer or says whether to hang."""
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        self._check_blocked(params)
        if self._fail_next:
            status = self._fail_next.popleft()
            if status == 429:
                self.throttled += 1
            elif status == 403:
                self.forbidden += 1
            elif status >= 500:
                self.failed += 1
            raise _error_for_status(status, max(1, int(self.retry_after_seconds)))
        if self.fail_rate > 0 and self._rng.random() < self.fail_rate:
            self.failed += 1
            raise _error_for_status(502)
        hang = self.timeout_rate > 0 and self._rng.random() < self.timeout_rate
        if self.rate_cap is not None or self.per_chat_cap is not None:
            self._take_rate_slot(
                params.get("chat_id"), paid=bool(params.get("allow_paid_broadcast"))
            )
        if hang:
            self.timed_out += 1
        return hang

    def _take_rate_slot(self, chat_id: Any, *, paid: bool = False) -> None:
        now = time.monotonic()
        wait = 0.0
        chat_window: deque[float] | None = None
        window, cap = (
            (self._paid_window, self.paid_rate_cap)
            if paid
            else (self._global_window, self.rate_cap)
        )
        if self.rate_cap is not None:
            wait = _window_wait(window, cap, now)
        if self.per_chat_cap is not None and isinstance(chat_id, int):
            chat_window = self._chat_windows[chat_id]
            wait = max(wait, _window_wait(chat_window, self.per_chat_cap, now))
        if wait > 0:
            self.throttled += 1
            retry_after = max(1, int(self.retry_after_seconds), math.ceil(min(wait, 3600.0)))
            raise _error_for_status(429, retry_after)
        if self.rate_cap is not None:
            window.append(now)
        if chat_window is not None:
            chat_window.append(now)

    # ------------------------------------------------------------------ recording

    def _accept(
        self,
        method: str,
        chat_id: int,
        message_id: int,
        text: str | None,
        params: dict[str, Any],
        entities: list[dict[str, Any]],
        plain: str | None,
    ) -> SentMessage:
        sent = SentMessage(
            method, chat_id, message_id, text, params, entities, time.monotonic(), plain
        )
        self.sent.append(sent)
        self._by_chat[chat_id].append(sent)
        if params.get("allow_paid_broadcast"):
            self.paid_broadcasts += 1
        if method.startswith("send"):
            key = text if text is not None else f"<{method} {sent.file_name or ''}>"
            self._text_counts[chat_id][key] += 1
        if self._waiters:
            self._notify(sent)
        return sent

    def _bot_message(self, chat_id: int, body: dict[str, Any]) -> dict[str, Any]:
        msg = {
            "message_id": self._new_message_id(chat_id),
            "date": int(time.time()),
            "chat": self._chat(chat_id),
            "from": self.bot_user,
            **body,
        }
        self._store[(chat_id, msg["message_id"])] = msg
        return msg

    # ------------------------------------------------------------------ param helpers

    @staticmethod
    def _chat_id(params: dict[str, Any]) -> int:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise _bad_request("chat_id is empty")
        if not isinstance(chat_id, int) or isinstance(chat_id, bool):
            raise _bad_request("chat not found")
        return chat_id

    @staticmethod
    def _int_param(params: dict[str, Any], key: str) -> int:
        value = params.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad_request(f"{key} is empty" if value is None else f"invalid {key}")
        return value

    @staticmethod
    def _json_param(params: dict[str, Any], key: str) -> Any:
        value = params.get(key)
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise _bad_request(f"can't parse {key} JSON object") from exc
            params[key] = value
        return value

    def _markup(self, params: dict[str, Any]) -> dict[str, Any] | None:
        markup = self._json_param(params, "reply_markup")
        if not isinstance(markup, dict):
            return None
        rows = markup.get("inline_keyboard")
        if rows is None:
            return None  # reply keyboards are not part of the returned message
        for row in rows:
            for button in row:
                if not _BUTTON_ACTIONS.intersection(button):
                    raise _bad_request("text buttons are unallowed in the inline keyboard")
                data = button.get("callback_data")
                if data is not None and not 1 <= len(str(data).encode()) <= 64:
                    raise _bad_request("BUTTON_DATA_INVALID")
        return markup

    def _render(
        self, params: dict[str, Any], text_key: str, entities_key: str, limit: int
    ) -> tuple[str, list[dict[str, Any]]]:
        text = params.get(text_key)
        if text is None:
            text = ""
        text = str(text)
        entities = self._json_param(params, entities_key)
        parse_mode = str(params.get("parse_mode") or "").lower()
        if isinstance(entities, list):
            plain, ents = text, entities
        elif parse_mode == "html":
            plain, ents = parse_html(text)
        else:
            plain, ents = text, []
        if _u16len(plain) > limit:
            raise _bad_request(
                "message is too long" if text_key == "text" else "message caption is too long"
            )
        return plain, ents

    # ------------------------------------------------------------------ method handlers

    async def _true(self, params: dict[str, Any]) -> bool:
        return True

    async def _get_me(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.bot_user

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self._webhook is not None:
            raise _ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = params.get("offset")
        if isinstance(offset, int) and offset != 0:
            self._confirm(offset)
        limit = params.get("limit")
        limit = min(100, max(1, limit)) if isinstance(limit, int) else 100
        timeout = params.get("timeout")
        timeout = float(timeout) if isinstance(timeout, int | float) else 0.0

        # A newer getUpdates ends an older one with 409, as Telegram does.
        self._poll_generation += 1
        generation = self._poll_generation
        self._wake()
        deadline = time.monotonic() + timeout
        while not self._updates and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            event = self._wakeup
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                break
            if generation != self._poll_generation:
                raise _ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only "
                    "one bot instance is running",
                )
        result = []
        for update in self._updates:
            if len(result) >= limit:
                break
            result.append(update)
        return result

    def _confirm(self, offset: int) -> None:
        if offset < 0:
            # Negative offset: keep only the last -offset updates.
            while len(self._updates) > -offset:
                self._updates.popleft()
            return
        while self._updates and self._updates[0]["update_id"] < offset:
            self._updates.popleft()

    async def _set_webhook(self, params: dict[str, Any]) -> bool:
        url = str(params.get("url") or "")
        if not url:
            return await self._delete_webhook(params)
        if not url.startswith(("http://", "https://")):
            raise _bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None:
            secret = str(secret)
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret):
                raise _bad_request("secret token contains unallowed characters")
        if params.get("drop_pending_updates"):
            self._updates.clear()
        self._webhook = {
            "url": url,
            "secret_token": secret,
            "max_connections": params.get("max_connections", 40),
            "allowed_updates": params.get("allowed_updates"),
        }
        self._poll_generation += 1
        self._wake()
        # Updates queued for polling now go to the webhook, as on Telegram.
        pending, self._updates = self._updates, deque()
        for update in pending:
            self._schedule_delivery(update)
        return True

    async def _delete_webhook(self, params: dict[str, Any]) -> bool:
        self._webhook = None
        if params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    async def _get_webhook_info(self, params: dict[str, Any]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "url": self._webhook["url"] if self._webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": self.updates_pending(),
        }
        if self._webhook:
            info["max_connections"] = self._webhook["max_connections"]
            if self._webhook["allowed_updates"]:
                info["allowed_updates"] = self._webhook["allowed_updates"]
        return info

    async def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._chat_id(params)
        plain, entities = self._render(params, "text", "entities", _MAX_TEXT)
        if not plain.strip():
            raise _bad_request("message text is empty")
        markup = self._markup(params)
        body: dict[str, Any] = {"text": plain}
        if entities:
            body["entities"] = entities
        if markup:
            body["reply_markup"] = markup
        if params.get("protect_content"):
            body["has_protected_content"] = True
        msg = self._bot_message(chat_id, body)
        self._accept(
            "sendMessage", chat_id, msg["message_id"], params.get("text"), params, entities, plain
        )
        return msg

    async def _send_photo(self, params: dict[str, Any]) -> dict[str, Any]:
        """A photo is kept like a document (its bytes under params["document"])."""
        params["document"] = params.pop("photo", None)
        return await self._send_document(params, method="sendPhoto")

    async def _send_document(
        self, params: dict[str, Any], method: str = "sendDocument"
    ) -> dict[str, Any]:
        chat_id = self._chat_id(params)
        document = params.get("document")
        if isinstance(document, dict) and "content" in document:
            meta = self._new_file(
                document.get("file_name"), document["content"], document.get("mime_type")
            )
        elif isinstance(document, str) and document in self._files:
            meta = self._files[document]
            params["document"] = {
                "file_name": meta["file_name"],
                "content": self._file_paths[meta["file_path"]],
                "mime_type": meta["mime_type"],
            }
        else:
            raise _bad_request("wrong file identifier/HTTP URL specified")
        plain, entities = self._render(params, "caption", "caption_entities", _MAX_CAPTION)
        body: dict[str, Any] = {"document": self._document_json(meta)}
        if plain:
            body["caption"] = plain
            if entities:
                body["caption_entities"] = entities
        markup = self._markup(params)
        if markup:
            body["reply_markup"] = markup
        if params.get("protect_content"):
            body["has_protected_content"] = True
        msg = self._bot_message(chat_id, body)
        self._accept(
            method,
            chat_id,
            msg["message_id"],
            params.get("caption"),
            params,
            entities,
            plain or None,
        )
        return msg

    async def _send_invoice(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._chat_id(params)
        total = self._check_invoice(params)
        body: dict[str, Any] = {
            "invoice": {
                "title": params["title"],
                "description": params["description"],
                "start_parameter": params.get("start_parameter") or "",
                "currency": params["currency"],
                "total_amount": total,
            }
        }
        markup = self._markup(params)
        if markup:
            body["reply_markup"] = markup
        msg = self._bot_message(chat_id, body)
        text = f"{params['title']}\n{params['description']}"
        self._accept("sendInvoice", chat_id, msg["message_id"], text, params, [], text)
        self.invoices[(chat_id, msg["message_id"])] = self._invoice(params, total)
        return msg

    def _check_invoice(self, params: dict[str, Any]) -> int:
        """Telegram's checks on an invoice; returns its total."""
        for key in ("title", "description", "payload", "currency"):
            if not params.get(key):
                raise _bad_request(f"{key} is empty")
        if len(str(params["payload"]).encode()) > 128:
            raise _bad_request("INVOICE_PAYLOAD_INVALID")
        prices = self._json_param(params, "prices")
        if not isinstance(prices, list) or not prices:
            raise _bad_request("prices must be non-empty")
        if params["currency"] == "XTR" and (len(prices) != 1 or params.get("provider_token")):
            raise _bad_request("STARS_INVOICE_INVALID")
        return sum(int(p.get("amount", 0)) for p in prices)

    @staticmethod
    def _invoice(params: dict[str, Any], total: int) -> dict[str, Any]:
        return {
            "payload": params["payload"],
            "currency": params["currency"],
            "total_amount": total,
            "subscription_period": params.get("subscription_period"),
        }

    async def _create_invoice_link(self, params: dict[str, Any]) -> str:
        total = self._check_invoice(params)
        period = params.get("subscription_period")
        if period is not None:
            if period != 2592000 or params["currency"] != "XTR":
                raise _bad_request("SUBSCRIPTION_PERIOD_INVALID")
            if total > 10000:
                raise _bad_request("STARS_INVOICE_INVALID")
        link = f"https://t.me/$fake{self._rng.getrandbits(48):012x}"
        self.invoices[link] = self._invoice(params, total)
        return link

    async def _get_star_transactions(self, params: dict[str, Any]) -> dict[str, Any]:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        if not 1 <= limit <= 100 or offset < 0:
            raise _bad_request("LIMIT_INVALID")
        return {"transactions": self.star_transactions[offset : offset + limit]}

    async def _edit_user_star_subscription(self, params: dict[str, Any]) -> bool:
        charge = self._charges.get(str(params.get("telegram_payment_charge_id") or ""))
        if charge is None or charge["user_id"] != self._int_param(params, "user_id"):
            raise _bad_request("CHARGE_NOT_FOUND")
        if not charge.get("subscription_period"):
            raise _bad_request("SUBSCRIPTION_ID_INVALID")
        charge["canceled"] = bool(params.get("is_canceled"))
        self.subscription_edits.append(params)
        return True

    def _editable(self, params: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
        if params.get("inline_message_id"):
            raise _bad_request("inline messages are not supported by the fake")
        chat_id = self._chat_id(params)
        message_id = self._int_param(params, "message_id")
        stored = self._store.get((chat_id, message_id))
        if stored is None:
            raise _bad_request("message to edit not found")
        if stored.get("from", {}).get("id") != self.bot_id:
            raise _bad_request("message can't be edited")
        return chat_id, message_id, stored

    async def _edit_message_text(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._edit_content(params, "editMessageText", "text", "entities", _MAX_TEXT)

    async def _edit_message_caption(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._edit_content(
            params, "editMessageCaption", "caption", "caption_entities", _MAX_CAPTION
        )

    def _edit_content(
        self, params: dict[str, Any], method: str, text_key: str, entities_key: str, limit: int
    ) -> dict[str, Any]:
        chat_id, message_id, stored = self._editable(params)
        if text_key == "text" and "text" not in stored:
            raise _bad_request("there is no text in the message to edit")
        if text_key == "caption" and "text" in stored:
            raise _bad_request("there is no caption in the message to edit")
        plain, entities = self._render(params, text_key, entities_key, limit)
        if text_key == "text" and not plain.strip():
            raise _bad_request("message text is empty")
        markup = self._markup(params)
        if self.strict and (
            stored.get(text_key, "") == plain
            and stored.get(entities_key, []) == entities
            and stored.get("reply_markup") == markup
        ):
            raise _bad_request(_NOT_MODIFIED[len("Bad Request: ") :])
        msg = dict(stored)
        msg[text_key] = plain
        msg["edit_date"] = int(time.time())
        msg.pop(entities_key, None)
        if entities:
            msg[entities_key] = entities
        # Telegram drops the inline keyboard when an edit does not repeat it.
        msg.pop("reply_markup", None)
        if markup:
            msg["reply_markup"] = markup
        self._store[(chat_id, message_id)] = msg
        self._accept(method, chat_id, message_id, params.get(text_key), params, entities, plain)
        return msg

    async def _edit_message_reply_markup(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id, message_id, stored = self._editable(params)
        markup = self._markup(params)
        if self.strict and stored.get("reply_markup") == markup:
            raise _bad_request(_NOT_MODIFIED[len("Bad Request: ") :])
        msg = dict(stored)
        msg.pop("reply_markup", None)
        if markup:
            msg["reply_markup"] = markup
        msg["edit_date"] = int(time.time())
        self._store[(chat_id, message_id)] = msg
        return msg

    async def _delete_message(self, params: dict[str, Any]) -> bool:
        chat_id = self._chat_id(params)
        message_id = self._int_param(params, "message_id")
        self._store.pop((chat_id, message_id), None)
        self.deleted.append((chat_id, message_id))
        return True

    async def _delete_messages(self, params: dict[str, Any]) -> bool:
        chat_id = self._chat_id(params)
        ids = self._json_param(params, "message_ids")
        if not isinstance(ids, list) or not ids:
            raise _bad_request("message identifiers are not specified")
        for message_id in ids:
            self._store.pop((chat_id, int(message_id)), None)
            self.deleted.append((chat_id, int(message_id)))
        return True

    async def _answer_callback_query(self, params: dict[str, Any]) -> bool:
        query_id = str(params.get("callback_query_id") or "")
        if self.strict:
            if query_id not in self._open_queries:
                raise _bad_request(_QUERY_TOO_OLD[len("Bad Request: ") :])
            self._open_queries.discard(query_id)
        self.callback_answers.append(params)
        return True

    async def _answer_pre_checkout_query(self, params: dict[str, Any]) -> bool:
        if not params.get("pre_checkout_query_id"):
            raise _bad_request("QUERY_ID_INVALID")
        if params.get("ok") is False and not params.get("error_message"):
            raise _bad_request("ERROR_MESSAGE_EMPTY")
        self.pre_checkout_answers.append(params)
        return True

    async def _refund_star_payment(self, params: dict[str, Any]) -> bool:
        user_id = self._int_param(params, "user_id")
        charge_id = str(params.get("telegram_payment_charge_id") or "")
        if self.strict:
            charge = self._charges.get(charge_id)
            if charge is None or charge["user_id"] != user_id:
                raise _bad_request("CHARGE_NOT_FOUND")
            if charge["refunded"]:
                raise _bad_request("CHARGE_ALREADY_REFUNDED")
            charge["refunded"] = True
            self.star_transactions.append(
                {
                    "id": charge_id,
                    "amount": charge["total_amount"],
                    "date": int(time.time()),
                    "receiver": {
                        "type": "user",
                        "transaction_type": "invoice_payment",
                        "user": self._user(user_id, "Buyer", "en"),
                        "invoice_payload": charge["payload"],
                    },
                }
            )
        self.refunded_star_payments.append(params)
        return True

    def _commands_key(self, params: dict[str, Any]) -> tuple[str, str]:
        scope = self._json_param(params, "scope") or {"type": "default"}
        return json.dumps(scope, sort_keys=True), str(params.get("language_code") or "")

    async def _set_my_commands(self, params: dict[str, Any]) -> bool:
        commands = self._json_param(params, "commands")
        if not isinstance(commands, list):
            raise _bad_request("commands must be an array")
        self._commands[self._commands_key(params)] = commands
        return True

    async def _delete_my_commands(self, params: dict[str, Any]) -> bool:
        self._commands.pop(self._commands_key(params), None)
        return True

    async def _get_my_commands(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self._commands.get(self._commands_key(params), [])

    async def _send_chat_action(self, params: dict[str, Any]) -> bool:
        self._chat_id(params)
        self.chat_actions.append(params)
        return True

    async def _get_file(self, params: dict[str, Any]) -> dict[str, Any]:
        meta = self._files.get(str(params.get("file_id") or ""))
        if meta is None:
            raise _bad_request("invalid file_id")
        found = {
            "file_id": meta["file_id"],
            "file_unique_id": meta["file_unique_id"],
            "file_path": meta["file_path"],
        }
        if meta["file_size"] is not None:
            found["file_size"] = meta["file_size"]
        return found


def _window_wait(window: deque[float], cap: float, now: float) -> float:
    """Seconds until the sliding window has room for one more message (0 if it has now)."""
    if cap <= 0:
        return float("inf")
    # Caps below 1/s need a longer window to allow even a single message.
    span = max(1.0, 1.0 / cap)
    allowed = max(1, int(cap * span + 1e-9))
    horizon = now - span
    while window and window[0] <= horizon:
        window.popleft()
    if len(window) < allowed:
        return 0.0
    return max(1e-6, window[0] + span - now)
