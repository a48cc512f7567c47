"""The composition root: builds every part of keyvend from Settings and runs them in one loop.

`serve()` migrates the database, checks what it depends on (Redis when configured, the HTTP
port, then the Bot API, local things first) and turns each failure into a one-line
`ConfigError`, then runs together, until told to stop: the Telegram
application (polling, or webhook updates fed by the aiohttp server), the aiohttp server
(Stripe webhook, Telegram webhook, /healthz, /metrics), the delivery worker, the admin
notifier, reconciliation with Stripe, and the removal of expired key messages. Nothing is
created at import time; everything hangs off the objects built here.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import socket
import uuid
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web
from telegram import Update
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    ConversationHandler,
    MessageHandler,
    PreCheckoutQueryHandler,
    TypeHandler,
    filters,
)

from bot import jobs
from bot import web as web_routes
from bot.broadcasts import PAID_RATE, PaidBroadcasts
from bot.client_outbox import ClientOutboxWorker, Smtp
from bot.delivery import DeliveryWorker
from bot.keyfile import ConfigError, encryption_key, open_vault
from bot.metrics import Metrics
from bot.migrate import migrate
from bot.notifier import AdminNotifier
from bot.ratelimit import RateLimiter
from bot.settings import OutOfStockPolicy, Settings, TelegramMode
from bot.stars_gateway import StarsGateway
from bot.stripe_gateway import StripeGateway
from bot.telegram_api import AiohttpRequest, SendPace
from handlers import (
    admin,
    admin_buyers,
    admin_clients,
    admin_coupons,
    admin_orders,
    admin_products,
    admin_reports,
    admin_review,
    buyer,
    commands,
    key_reports,
    language,
    stars,
)
from handlers.api import ApiConfig
from handlers.context import KeyvendContext, Shop
from handlers.i18n import language_of, t
from handlers.paylinks import PayLinks
from store import buyers
from store.coupons import CODE
from store.crypto import KeyVault
from store.db import Database
from store.orders import CheckoutPolicy
from store.orders import OutOfStockPolicy as StockPolicy

log = logging.getLogger(__name__)

_EXPIRY_INTERVAL = 10.0
_TELEGRAM = Settings.model_fields["telegram_api_url"].default


def telegram_secret(settings: Settings) -> str:
    """The secret Telegram echoes on webhook calls: configured, or derived from the token so
    every instance agrees without another setting."""
    if settings.telegram_webhook_secret is not None:
        return settings.telegram_webhook_secret.get_secret_value()
    digest = hashlib.sha256(b"keyvend webhook " + settings.bot_token.get_secret_value().encode())
    return digest.hexdigest()


def build_telegram(settings: Settings, broadcasts: PaidBroadcasts | None = None) -> Application:
    base = settings.telegram_api_url.rstrip("/")
    pace = SendPace(
        settings.telegram_rate,
        paid_rate=PAID_RATE if settings.paid_broadcast else None,
        on_sent=(lambda paid: broadcasts.sent(paid=paid)) if broadcasts is not None else None,
    )
    builder = (
        ApplicationBuilder()
        .token(settings.bot_token.get_secret_value())
        .base_url(f"{base}/bot")
        .base_file_url(f"{base}/file/bot")
        .context_types(ContextTypes(context=KeyvendContext))
        .request(AiohttpRequest(connections=64))
        .get_updates_request(AiohttpRequest(connections=1))
        .rate_limiter(pace)
        .concurrent_updates(64)
    )
    if settings.telegram_mode is TelegramMode.WEBHOOK:
        builder = builder.updater(None)
    return builder.build()


def add_handlers(application: Application) -> None:
    """All routing of updates, in one place."""
    application.add_handler(TypeHandler(Update, buyer.throttle), group=-2)
    application.add_handler(TypeHandler(Update, language.load_language), group=-1)
    application.add_handler(
        ConversationHandler(
            entry_points=[CommandHandler("restock", admin.restock)],
            states={
                admin.AWAITING_KEYS: [
                    MessageHandler(filters.TEXT & ~filters.COMMAND, admin.receive_pasted_keys),
                    MessageHandler(filters.Document.ALL, admin.receive_key_file),
                ],
            },
            fallbacks=[CommandHandler("cancel", admin.cancel)],
            conversation_timeout=600,
        )
    )
    typed = filters.TEXT & ~filters.COMMAND
    with warnings.catch_warnings():
        # PTB warns that a button starting a conversation is tracked per chat, not per
        # message: per chat is what is meant (the admin types the value into the chat).
        warnings.filterwarnings("ignore", message=".*per_message.*")
        edit_product = ConversationHandler(
            entry_points=[
                CallbackQueryHandler(
                    admin_products.edit_field, pattern=r"^ae:\d{1,9}:\w{1,8}:\w{0,8}$"
                )
            ],
            states={
                admin_products.AWAITING_VALUE: [MessageHandler(typed, admin_products.receive_value)]
            },
            fallbacks=[CommandHandler("cancel", admin_products.cancel)],
            conversation_timeout=600,
        )
        draft_button = CallbackQueryHandler(admin_products.draft_button, pattern=r"^nd:\w{1,8}$")
        new_product = ConversationHandler(
            entry_points=[CommandHandler("newproduct", admin_products.new_product)],
            states={
                admin_products.NEW_SKU: [MessageHandler(typed, admin_products.new_sku)],
                admin_products.NEW_NAME: [MessageHandler(typed, admin_products.new_name)],
                admin_products.NEW_PRICE: [MessageHandler(typed, admin_products.new_price)],
                admin_products.NEW_OPTIONS: [draft_button],
                admin_products.NEW_OPTION_VALUE: [
                    MessageHandler(typed, admin_products.draft_value),
                    draft_button,
                ],
            },
            fallbacks=[CommandHandler("cancel", admin_products.cancel)],
            conversation_timeout=600,
        )
        enter_code = ConversationHandler(
            entry_points=[
                CallbackQueryHandler(buyer.ask_for_code, pattern=r"^cc:\d{1,9}:\d{1,3}$")
            ],
            states={buyer.AWAITING_CODE: [MessageHandler(typed, buyer.receive_code)]},
            fallbacks=[CommandHandler("cancel", buyer.cancel_code)],
            conversation_timeout=600,
        )
    application.add_handlers(
        [
            CommandHandler("start", buyer.start),
            CommandHandler("buy", buyer.buy),
            CommandHandler("orders", buyer.my_orders),
            CommandHandler("help", buyer.help_command),
            CommandHandler("subscriptions", buyer.my_subscriptions),
            CommandHandler("paysupport", buyer.paysupport),
            CommandHandler("terms", buyer.terms),
            CommandHandler("stats", admin_reports.stats),
            CommandHandler("export", admin_reports.export),
            CommandHandler("confirm", admin.confirm),
            CommandHandler("products", admin_products.products),
            CommandHandler("ban", admin_buyers.ban),
            CommandHandler("unban", admin_buyers.unban),
            CommandHandler("banned", admin_buyers.banned),
            CommandHandler("audit", admin_buyers.show_audit),
            CommandHandler("order", admin_orders.order),
            CommandHandler("find", admin_orders.find),
            CommandHandler("clients", admin_clients.show_clients),
            CommandHandler("client", admin_clients.client),
            CommandHandler("coupon", admin_coupons.coupon),
            CommandHandler("review", admin_review.show_queue),
            CommandHandler("language", language.language),
            CommandHandler("refund", admin.refund),
            PreCheckoutQueryHandler(stars.pre_checkout),
            MessageHandler(filters.SUCCESSFUL_PAYMENT, stars.successful_payment),
            CallbackQueryHandler(buyer.show_catalogue, pattern=r"^cat$"),
            # After the catalogue button, which a button without data has always reached.
            edit_product,
            new_product,
            enter_code,
            CallbackQueryHandler(language.choose, pattern=r"^lang:\w{1,8}$"),
            CallbackQueryHandler(admin_products.show_products, pattern=r"^apl$"),
            CallbackQueryHandler(admin_products.show_product, pattern=r"^ap:\d{1,9}$"),
            CallbackQueryHandler(admin_orders.open_order, pattern=r"^ao:\d{1,9}$"),
            CallbackQueryHandler(admin_orders.resend_keys, pattern=r"^ar:\d{1,9}$"),
            CallbackQueryHandler(admin_orders.ban_buyer, pattern=r"^ab:\d{1,9}$"),
            CallbackQueryHandler(admin_orders.ask_refund, pattern=r"^af:\d{1,9}$"),
            CallbackQueryHandler(admin_orders.refund, pattern=r"^afy:\d{1,9}$"),
            CallbackQueryHandler(admin_review.decide, pattern=r"^rv:[ar]:\d{1,9}$"),
            CallbackQueryHandler(key_reports.decide, pattern=r"^kd:[rfj]:\d{1,9}$"),
            CallbackQueryHandler(key_reports.ask_reason, pattern=r"^kr:\d{1,9}:\d{1,12}$"),
            CallbackQueryHandler(
                key_reports.file_report,
                pattern=r"^kr:\d{1,9}:\d{1,12}:(used|invalid|region|other)$",
            ),
            CallbackQueryHandler(buyer.show_category, pattern=r"^cg:\d{1,3}:\d{1,4}$"),
            CallbackQueryHandler(buyer.show_product, pattern=rf"^p:\d{{1,9}}:\d{{1,3}}(:{CODE})?$"),
            CallbackQueryHandler(
                buyer.pay, pattern=rf"^pay:\d{{1,9}}:\d{{1,3}}(:[a-z]{{0,16}}(:{CODE})?)?$"
            ),
            CallbackQueryHandler(buyer.notify_me, pattern=r"^w:\d{1,9}$"),
            CallbackQueryHandler(buyer.my_orders, pattern=r"^ords$"),
            CallbackQueryHandler(buyer.show_order, pattern=r"^o:\d{1,9}$"),
            CallbackQueryHandler(buyer.show_keys, pattern=r"^k:\d{1,9}$"),
            CallbackQueryHandler(buyer.cancel_subscription, pattern=r"^subx:\d{1,9}$"),
            CallbackQueryHandler(buyer.stale_button),
            MessageHandler(filters.COMMAND, buyer.unknown),
            MessageHandler(filters.TEXT, buyer.chatter),
        ]
    )
    application.add_error_handler(_on_error)


async def _on_error(update: object, context: KeyvendContext) -> None:
    """Log a failed update without its content (it may hold pasted keys) and apologise."""
    update_id = update.update_id if isinstance(update, Update) else None
    log.error("update %s failed", update_id, exc_info=context.error)
    if isinstance(update, Update) and update.effective_chat is not None:
        user = update.effective_user
        language = language_of(user.language_code if user else None)
        try:
            await update.effective_chat.send_message(
                t(language, "Sorry, something went wrong on our side. Please try again.")
            )
        except Exception:  # noqa: BLE001 - the apology is best-effort
            log.warning("could not tell the user about the failure")


@dataclass
class Parts:
    """Everything `serve` builds, exposed for tests that drive a running shop."""

    settings: Settings
    db: Database
    shop: Shop
    telegram: Application
    worker: DeliveryWorker
    notifier: AdminNotifier
    limiter: RateLimiter
    metrics: Metrics
    web: web.Application
    client_outbox: ClientOutboxWorker
    stripe: StripeGateway | None = None
    broadcasts: PaidBroadcasts | None = None


def assemble(settings: Settings, db: Database, vault: KeyVault) -> Parts:
    """Build the parts of a shop (nothing is started)."""
    if settings.bot_token is None:
        raise ConfigError("BOT_TOKEN is not set")
    metrics = Metrics()
    limiter = RateLimiter(
        {
            "updates": settings.rate_limit_updates,
            "checkouts": settings.rate_limit_checkouts,
            "notices": "1/minute",
            "api_token": settings.rate_limit_api,
            "api_ip": settings.rate_limit_api_ip,
        },
        redis_url=settings.redis_url,
        metrics=metrics,
    )
    broadcasts = PaidBroadcasts(db) if settings.paid_broadcast else None
    application = build_telegram(settings, broadcasts)
    webhook = settings.alert_webhook_url
    notifier = AdminNotifier(
        lambda chat, text, buttons: application.bot.send_message(chat, text, reply_markup=buttons),
        settings.admin_ids,
        metrics,
        languages=lambda: buyers.languages(db, settings.admin_ids),
        webhook_url=webhook.get_secret_value() if webhook else None,
    )
    stripe = None
    if settings.stripe_enabled:
        stripe = StripeGateway(
            settings.stripe_secret_key.get_secret_value(),
            api_base=settings.stripe_api_base,
            success_url=lambda order: f"https://t.me/{application.bot.username}?start=paid_{order}",
        )
    shop = Shop(
        db=db,
        vault=vault,
        admin_ids=settings.admin_ids,
        checkout_policy=CheckoutPolicy(
            max_unpaid=settings.max_unpaid_orders,
            ttl=settings.checkout_ttl,
            hold_max_units=settings.hold_max_units,
            hold_max_share=settings.hold_max_share,
        ),
        stock_policy=StockPolicy(
            backorder=settings.out_of_stock_policy is OutOfStockPolicy.BACKORDER
        ),
        limiter=limiter,
        notifier=notifier,
        counters=metrics,
        key_message_ttl=settings.key_message_ttl,
        card=stripe,
        blacklist_on_dispute=settings.blacklist_on_dispute,
        gateways={StarsGateway.name: StarsGateway(application.bot)}
        if settings.stars_enabled
        else {},
        paysupport_text=settings.paysupport_text,
        terms_text=settings.terms_text,
        pay_links=PayLinks.from_bot_token(
            settings.public_url, settings.bot_token.get_secret_value()
        )
        if settings.public_url
        else None,
        paid_broadcast=settings.paid_broadcast,
    )
    application.bot_data["shop"] = shop
    add_handlers(application)
    worker = DeliveryWorker(
        shop,
        application.bot,
        metrics,
        owner=f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:6]}",
        max_attempts=settings.delivery_max_attempts,
        lease=settings.delivery_lease,
    )
    shop.wake_delivery = worker.wake
    smtp = None
    if settings.smtp_url is not None:
        try:
            smtp = Smtp.from_url(settings.smtp_url.get_secret_value(), settings.smtp_from)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    client_worker = ClientOutboxWorker(shop, metrics, owner=worker.owner, smtp=smtp)
    shop.wake_client_outbox = client_worker.wake
    secret = telegram_secret(settings) if settings.telegram_mode is TelegramMode.WEBHOOK else None
    api_config = ApiConfig(
        download_ttl=settings.download_ttl,
        email=settings.smtp_url is not None,
        public_url=settings.public_url,
    )
    server = web_routes.build(
        shop,
        metrics,
        limiter,
        telegram=application,
        telegram_secret=secret,
        stripe_webhook_secret=settings.stripe_webhook_secret.get_secret_value() if stripe else None,
        metrics_token=(
            settings.metrics_token.get_secret_value() if settings.metrics_token else None
        ),
        api_config=api_config,
    )
    return Parts(
        settings,
        db,
        shop,
        application,
        worker,
        notifier,
        limiter,
        metrics,
        server,
        client_worker,
        stripe,
        broadcasts,
    )


async def serve(
    settings: Settings, stop: asyncio.Event, *, started: asyncio.Future[Parts] | None = None
) -> None:
    """Run the shop until `stop` is set; `started` gets the running parts once it is up."""
    db = Database(settings.database_url)
    try:
        # The database first: its key file is written beside it only once it opens.
        await migrate(db)
        parts = assemble(settings, db, await open_vault(db, encryption_key(settings)))
        await _run(parts, stop, started)
    finally:
        await db.dispose()


async def _check_redis(settings: Settings, limiter: RateLimiter) -> None:
    # Down while running, limits fail open; down at start, it is a wrong address or a Redis
    # never started, and running on without the limits the operator asked for hides that.
    if limiter.shared and not await limiter.ping():
        address = urlsplit(settings.redis_url)  # host and port only: the URL may hold a password
        raise ConfigError(
            f"Redis does not answer at {address.hostname}:{address.port or 6379} (REDIS_URL): "
            "start it, or leave REDIS_URL empty to keep rate limits in this process"
        )


async def _listen(runner: web.AppRunner, settings: Settings) -> None:
    where = f"{settings.http_host}:{settings.http_port}"
    try:
        await web.TCPSite(runner, settings.http_host, settings.http_port).start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"cannot listen on {where}: the port is in use by another program; "
                "stop it or set HTTP_PORT to a free port"
            ) from None
        raise ConfigError(
            f"cannot listen on {where} ({exc.strerror or exc}): check HTTP_HOST and HTTP_PORT"
        ) from None


async def _start_telegram(application: Application, settings: Settings) -> None:
    where = settings.telegram_api_url
    try:
        await application.initialize()
    except InvalidToken:
        # PTB's own message quotes the token. A server that is not a Bot API answers 404,
        # which PTB reports the same way.
        elsewhere = "" if where == _TELEGRAM else f", or {where} is not a Bot API server"
        raise ConfigError(
            f"Telegram rejected BOT_TOKEN: copy it again from @BotFather{elsewhere}"
        ) from None
    except NetworkError as exc:
        raise ConfigError(
            f"cannot reach the Telegram Bot API at {where} ({exc.message}): "
            "check TELEGRAM_API_URL and the network"
        ) from None
    except TelegramError as exc:
        raise ConfigError(
            f"the Telegram Bot API at {where} refused getMe ({exc.message}): "
            "check TELEGRAM_API_URL and BOT_TOKEN"
        ) from None
    await application.start()


async def _run(parts: Parts, stop: asyncio.Event, started: asyncio.Future[Parts] | None) -> None:
    settings, application, shop = parts.settings, parts.telegram, parts.shop
    runner = web.AppRunner(parts.web, access_log=None)
    tasks: list[asyncio.Task[None]] = []
    try:
        await _check_redis(settings, parts.limiter)
        await runner.setup()
        await _listen(runner, settings)
        await _start_telegram(application, settings)
        await commands.register(application.bot, settings.admin_ids)
        if settings.telegram_mode is TelegramMode.WEBHOOK:
            await application.bot.set_webhook(
                f"{settings.public_url.rstrip('/')}/telegram/webhook",
                secret_token=telegram_secret(settings),
                allowed_updates=Update.ALL_TYPES,
            )
        else:
            await application.updater.start_polling(allowed_updates=Update.ALL_TYPES)
        # A refund owed (a payment that found no stock) wakes reconciliation, which makes it.
        refunds_due = asyncio.Event()
        shop.wake_refunds = refunds_due.set
        tasks = [
            asyncio.create_task(parts.worker.run(stop), name="delivery"),
            asyncio.create_task(parts.notifier.run(stop), name="notifier"),
            asyncio.create_task(parts.client_outbox.run(stop), name="client-outbox"),
            asyncio.create_task(
                jobs.every(
                    settings.reconcile_interval.total_seconds(),
                    lambda: jobs.reconcile(shop),
                    stop,
                    wake=refunds_due,
                    name="reconciliation",
                    sooner=lambda longest: jobs.seconds_to_next_check(shop, longest),
                ),
                name="reconciliation",
            ),
            asyncio.create_task(
                jobs.every(
                    _EXPIRY_INTERVAL,
                    lambda: jobs.remove_expired_key_messages(shop, application.bot),
                    stop,
                    name="key expiry",
                ),
                name="key-expiry",
            ),
        ]
        if parts.broadcasts is not None:
            tasks.append(asyncio.create_task(parts.broadcasts.run(stop), name="paid-broadcasts"))
        log.info(
            "keyvend is running as @%s: HTTP on %s:%s, Telegram %s, card payments %s",
            application.bot.username,
            settings.http_host,
            settings.http_port,
            settings.telegram_mode.value,
            "on" if shop.card else "off (set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET)",
        )
        if started is not None:
            started.set_result(parts)
        await stop.wait()
    finally:
        stop.set()
        if tasks:  # it ran: say so; a failed start says why in one line, from its ConfigError
            log.info("keyvend is stopping")
        if application.updater is not None and application.updater.running:
            await application.updater.stop()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if application.running:
            await application.stop()
        await application.shutdown()
        # A failed initialize leaves the bot's HTTP sessions open and the application
        # "not initialized", so its shutdown skips them; the bot's own closes them.
        await application.bot.shutdown()
        if parts.stripe is not None:
            await parts.stripe.close()
        await runner.cleanup()
