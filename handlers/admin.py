"""Admin handlers: restock from the chat, settling an order with Stripe.

Only users in ADMIN_IDS reach these; anyone else gets exactly the answer an unknown command
gets, and the attempt is logged. A message carrying keys (pasted or uploaded) is deleted
from the admin's chat whatever became of the import, so the chat history does not become a
second, unencrypted copy of the inventory. An upload is downloaded in pieces, held to
20 MB as it arrives (Telegram may not say a file's size), and kept in memory rather than
on disk so plaintext keys never touch the file system; it is then imported in batches,
with the progress shown in one edited message.
"""

from __future__ import annotations

import functools
import io
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import PurePath
from typing import TypeVar

import httpx
from telegram import File, Message, Update
from telegram.constants import ParseMode
from telegram.error import TelegramError
from telegram.ext import ConversationHandler

from handlers import render
from handlers.buyer import stale_button, unknown
from handlers.context import KeyvendContext
from handlers.i18n import language_of, t
from store import catalogue, inventory
from store.errors import InvalidInput, NotFound, OrderNotPayable, PaymentUnavailable

log = logging.getLogger(__name__)

AWAITING_KEYS = 0
MAX_UPLOAD = 20 * 1024 * 1024  # what the Bot API lets a bot download
_UPLOAD_TYPES = {".txt": False, ".csv": True}
_PROGRESS_EVERY = 1.0  # seconds between edits of the progress message (Telegram's pace)

Handler = Callable[[Update, KeyvendContext], Awaitable[object]]
T = TypeVar("T")


def _admins_only(refuse: Handler, tried: str) -> Callable[[Handler], Handler]:
    """A guard that lets admins through and gives anyone else `refuse`'s answer."""

    def guard(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(update: Update, context: KeyvendContext) -> object:
            user = update.effective_user
            if not context.shop.is_admin(user.id if user else None):
                log.warning(
                    "non-admin %s %s %s", user.id if user else None, tried, handler.__name__
                )
                await refuse(update, context)
                return ConversationHandler.END
            return await handler(update, context)

        return guarded

    return guard


# Commands answer a non-admin as if they did not exist; buttons, as if they had expired.
admin_only = _admins_only(unknown, "tried")
admin_button = _admins_only(stale_button, "pressed")


def flag_options(
    words: list[str], flags: dict[str, str], language: str, *, whole: tuple[str, ...] = ()
) -> dict[str, str | int]:
    """`--flag value` or `--flag=value` pairs, as the command line takes them: each known flag
    becomes its option name; the options in `whole` must be whole numbers."""
    options: dict[str, str | int] = {}
    pending = list(words)
    while pending:
        flag, _, value = pending.pop(0).partition("=")
        if flag not in flags:
            raise InvalidInput(t(language, "unknown option {option}", option=flag))
        if not value:
            if not pending:
                raise InvalidInput(t(language, "{option} needs a value", option=flag))
            value = pending.pop(0)
        options[flags[flag]] = value
    for flag, name in flags.items():
        if name in whole and name in options:
            raw = str(options[name])
            if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
                raise InvalidInput(t(language, "{option} must be a whole number", option=flag))
            options[name] = int(raw)
    return options


def _language(update: Update) -> str:
    return language_of(update.effective_user.language_code)


async def _reply(update: Update, text: str) -> None:
    await update.effective_chat.send_message(text, parse_mode=ParseMode.HTML)


@admin_only
async def restock(update: Update, context: KeyvendContext) -> int:
    """Start a restock: `/restock SKU`, with keys on the following lines or in the next message."""
    language = _language(update)
    if not context.args:
        await _reply(update, t(language, "Usage: /restock SKU — then send the keys, one per line."))
        return ConversationHandler.END
    sku = context.args[0]
    try:
        await catalogue.get_product(context.shop.db, sku=sku)
    except NotFound:
        await _reply(
            update,
            t(
                language,
                "There is no product {sku}. Add it with: keyvend product add",
                sku=render.html.escape(sku),
            ),
        )
        return ConversationHandler.END
    _, _, pasted = update.effective_message.text.partition("\n")
    if pasted.strip():
        await _reply(update, await _consume(update, _import(update, context, sku, pasted)))
        return ConversationHandler.END
    context.user_data["restock_sku"] = sku
    await _reply(
        update,
        t(
            language,
            "Send the keys for {sku}: paste them one per line, or upload a .txt or .csv file. /cancel to stop.",
            sku=render.html.escape(sku),
        ),
    )
    return AWAITING_KEYS


@admin_only
async def receive_pasted_keys(update: Update, context: KeyvendContext) -> int:
    """Import keys pasted as a message."""
    sku = context.user_data.pop("restock_sku")
    text = update.effective_message.text
    await _reply(update, await _consume(update, _import(update, context, sku, text)))
    return ConversationHandler.END


@admin_only
async def receive_key_file(update: Update, context: KeyvendContext) -> int:
    """Import keys from an uploaded .txt or .csv file."""
    state, answer = await _consume(update, _receive_key_file(update, context))
    await _reply(update, answer)
    return state


async def _consume(update: Update, work: Awaitable[T]) -> T:
    """Run `work` on the admin's message that carries keys, then delete it, however it went."""
    try:
        return await work
    finally:
        await _forget_message(update)


async def _receive_key_file(update: Update, context: KeyvendContext) -> tuple[int, str]:
    language = _language(update)
    document = update.effective_message.document
    suffix = PurePath(document.file_name or "").suffix.lower()
    if suffix not in _UPLOAD_TYPES:
        return AWAITING_KEYS, t(language, "Please upload a .txt or .csv file (one key per line).")
    too_big = t(language, "That file is over 20 MB; split it and upload the parts.")
    if (document.file_size or 0) > MAX_UPLOAD:
        return AWAITING_KEYS, too_big
    try:
        upload = await _download(await document.get_file())
    except _TooBig:
        return AWAITING_KEYS, too_big
    except (TelegramError, httpx.HTTPError) as exc:
        # The exception's text may hold the file URL, and with it the bot token.
        log.warning("could not download an admin's key file: %s", type(exc).__name__)
        return AWAITING_KEYS, t(
            language, "Telegram did not hand over the file; please send it again."
        )
    sku = context.user_data.pop("restock_sku")
    with upload:
        keys = inventory.KeyFile(
            upload, size=upload.getbuffer().nbytes, is_csv=_UPLOAD_TYPES[suffix]
        )
        progress = _Progress(update, language, keys)
        try:
            return ConversationHandler.END, await _import(update, context, sku, keys, progress)
        finally:
            await progress.end()


class _TooBig(Exception):
    """The file turned out larger than MAX_UPLOAD while downloading."""


async def _download(file: File) -> io.BytesIO:
    """The file's bytes, read in pieces and refused past MAX_UPLOAD."""
    if (file.file_size or 0) > MAX_UPLOAD:
        raise _TooBig
    buffer = io.BytesIO()
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client,
        client.stream("GET", file.file_path) as response,
    ):
        response.raise_for_status()
        async for piece in response.aiter_bytes():
            if buffer.tell() + len(piece) > MAX_UPLOAD:
                buffer.close()
                raise _TooBig
            buffer.write(piece)
    buffer.seek(0)
    return buffer


class _Progress:
    """Progress of an upload's import, for imports that take a while: one chat message,
    sent after the first second and then edited, "Imported 40,000 of ~250,000…"."""

    def __init__(self, update: Update, language: str, keys: inventory.KeyFile) -> None:
        self._update, self._language, self._keys = update, language, keys
        self._message: Message | None = None
        self._last = time.monotonic()

    async def __call__(self, done: int) -> None:
        if time.monotonic() - self._last < _PROGRESS_EVERY:
            return
        self._last = time.monotonic()
        text = t(
            self._language,
            "Imported {done} of ~{total}…",
            done=f"{done:,}",
            total=f"{max(done, self._keys.estimate()):,}",
        )
        try:
            if self._message is None:
                self._message = await self._update.effective_chat.send_message(text)
            else:
                await self._message.edit_text(text)
        except TelegramError:
            log.info("could not show the import's progress")

    async def end(self) -> None:
        """Remove the progress message: the report (or the reason it failed) follows."""
        if self._message is not None:
            try:
                await self._message.delete()
            except TelegramError:
                log.info("could not remove the import's progress message")


async def _import(
    update: Update,
    context: KeyvendContext,
    sku: str,
    keys: str | inventory.KeyFile,
    progress: inventory.Progress | None = None,
) -> str:
    """Store the keys; the report for the admin, or the one-line reason nothing was stored."""
    shop = context.shop
    try:
        report = await shop.restock(
            sku,
            inventory.parse_keys(keys) if isinstance(keys, str) else keys,
            source="chat" if isinstance(keys, str) else "file",
            admin_id=update.effective_user.id,
            progress=progress,
        )
    except (NotFound, inventory.InvalidInput) as exc:
        return render.html.escape(str(exc))
    return render.restock_report(report, _language(update))


async def _forget_message(update: Update) -> None:
    """Remove the admin's message that carried keys from the chat."""
    try:
        await update.effective_message.delete()
    except TelegramError:
        log.info("could not delete the admin's key message; it stays in their chat")


@admin_only
async def cancel(update: Update, context: KeyvendContext) -> int:
    """Abandon a restock."""
    context.user_data.pop("restock_sku", None)
    await _reply(update, t(_language(update), "Restock cancelled."))
    return ConversationHandler.END


@admin_only
async def confirm(update: Update, context: KeyvendContext) -> None:
    """Ask the payment provider about one order and settle it: `/confirm ORDER_ID`."""
    shop = context.shop
    language = _language(update)
    if len(context.args or []) != 1 or not context.args[0].lstrip("#").isdigit():
        await _reply(update, t(language, "Usage: /confirm ORDER_ID"))
        return
    order_id = int(context.args[0].lstrip("#"))
    try:
        result = await shop.confirm(order_id)
    except (NotFound, OrderNotPayable, PaymentUnavailable) as exc:
        await _reply(
            update,
            t(
                language,
                "Order #{order}: {reason}",
                order=order_id,
                reason=render.html.escape(str(exc)),
            ),
        )
        return
    log.info("admin %s confirmed order %s: %s", update.effective_user.id, order_id, result.outcome)
    await _reply(
        update,
        t(language, "Order #{order}: {outcome}", order=order_id, outcome=result.outcome.value),
    )


@admin_only
async def refund(update: Update, context: KeyvendContext) -> None:
    """Return an order's money through its own provider and revoke its keys: `/refund ORDER_ID`."""
    shop = context.shop
    language = _language(update)
    admin_id = update.effective_user.id
    if len(context.args or []) != 1 or not context.args[0].lstrip("#").isdigit():
        await _reply(update, t(language, "Usage: /refund ORDER_ID"))
        return
    order_id = int(context.args[0].lstrip("#"))
    try:
        result = await shop.refund(order_id, admin_id=admin_id)
    except (NotFound, OrderNotPayable, PaymentUnavailable) as exc:
        await _reply(
            update,
            t(
                language,
                "Order #{order}: {reason}",
                order=order_id,
                reason=render.html.escape(str(exc)),
            ),
        )
        return
    log.info("admin %s refunded order %s: %s", admin_id, order_id, result.outcome)
    await _reply(
        update,
        t(
            language,
            "Order #{order} is refunded; its keys are revoked and the buyer is told.",
            order=order_id,
        ),
    )
