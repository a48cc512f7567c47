"""The `keyvend` command line: run the shop, migrate, manage products and keys, check.

Every command reads the same Settings as the bot. On bad input a command prints one line
saying what is wrong to stderr and exits non-zero; it never prints a key. The one place that
turns errors into that line is `main()`: 2 when keyvend cannot start with these settings (a
`ConfigError`, or a database it cannot open), 1 when the command itself failed; a secret
setting's value is blanked out of the line whatever raised it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from bot import logs
from bot.keyfile import encryption_key, open_vault
from bot.migrate import migrate
from bot.settings import ConfigError, Settings, load_settings
from handlers.i18n import LANGUAGES
from handlers.stars_invoice import PROVIDER as STARS_PROVIDER
from handlers.stars_invoice import stars_price
from store import catalogue, client_orders, clients, coupons, inventory, reports
from store.catalogue import ProductChanges
from store.check import KEY_SAMPLE, check
from store.crypto import KeyVault, KeyVaultError
from store.db import Database
from store.errors import DatabaseUnavailable, StoreError
from store.models import Allocation, Period, ProductKind
from store.money import STARS, to_major
from store.vault import reencrypt

_SETUP_HINT = (
    "BOT_TOKEN is not set. Create a bot with @BotFather in Telegram and put its token in .env "
    "as BOT_TOKEN=... ({env}); README.md, 'From zero to a first test sale', walks through it."
)


class Failure(Exception):
    """A one-line reason to print before exiting non-zero."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "command"):
        parser.print_help()
        return 2
    secrets: list[str] = []
    try:
        settings = load_settings()
        secrets = settings.secrets()
        logs.configure(settings.log_level, secrets)
        return _run(args.command(settings, args))
    except (ConfigError, DatabaseUnavailable) as exc:
        _explain(exc, secrets)
        return 2
    except (Failure, StoreError, KeyVaultError) as exc:
        _explain(exc, secrets)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:
        # A bug, not a mistake in the settings: the traceback goes through the log handler,
        # which scrubs the secrets a raw traceback could carry (URLs holding the bot token).
        logging.getLogger(__name__).critical(
            "keyvend stopped on an unexpected error", exc_info=True
        )
        return 1


def _explain(exc: Exception, secrets: Sequence[str]) -> None:
    """Print why the command failed, as one line without any secret's value."""
    reason = " ".join(str(exc).split())
    for secret in secrets:
        reason = reason.replace(secret, "***")
    print(f"keyvend: {reason}", file=sys.stderr)


def _run(work: Awaitable[int | None]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency off Windows
        return asyncio.run(work) or 0
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(work) or 0


async def _with_db(
    settings: Settings, work: Callable[[Database, KeyVault], Awaitable[int | None]]
) -> int | None:
    """Run `work` on the migrated database and its vault: a KEY_ENCRYPTION_KEY that does not
    match the database is refused before any work starts."""
    secrets = encryption_key(settings)
    db = Database(settings.database_url)
    try:
        await migrate(db)
        return await work(db, await open_vault(db, secrets))
    finally:
        await db.dispose()


# ---------------------------------------------------------------- commands


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    if settings.bot_token is None:
        env = ".env found" if Path(".env").exists() else "no .env here yet: cp .env.example .env"
        raise ConfigError(_SETUP_HINT.format(env=env))
    from bot.app import serve  # the bot's libraries load only for `run`: other commands start fast

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)
    return 0


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    # The one command that needs no key: it changes the schema, never a key.
    db = Database(settings.database_url)
    try:
        await migrate(db)
    finally:
        await db.dispose()
    print("database is up to date")
    return 0


async def cmd_product_add(settings: Settings, args: argparse.Namespace) -> int:
    async def work(db: Database, _: KeyVault) -> int:
        product = await catalogue.add_product(
            db,
            args.sku,
            args.name,
            args.price,
            args.currency,
            description=args.description or "",
            kind=ProductKind(args.kind),
            max_per_order=args.max_per_order,
            max_per_buyer=args.max_per_buyer,
            low_stock_threshold=args.low_stock,
            delivery_template=args.template or "",
            prices=_provider_prices(args),
            every=args.every,
            category=args.category or "",
            allocation=Allocation(args.allocation),
        )
        print(f"added {product.sku}: {product.name}, {_price(product)}")
        return 0

    return await _with_db(settings, work)


async def cmd_product_edit(settings: Settings, args: argparse.Namespace) -> int:
    changes = ProductChanges(
        name=args.name,
        description=args.description,
        price=args.price,
        currency=args.currency,
        max_per_order=args.max_per_order,
        max_per_buyer=args.max_per_buyer,
        low_stock_threshold=args.low_stock,
        delivery_template=args.template,
        active=args.active,
        language=args.lang,
        prices=_provider_prices(args),
        category=args.category,
        allocation=Allocation(args.allocation) if args.allocation else None,
        review_quantity=args.review_quantity,
        review_amount=args.review_amount,
        auto_replace=args.auto_replace,
    )
    if changes == ProductChanges(language=args.lang):
        raise Failure(
            "nothing to change: give at least one option, see `keyvend product edit --help`"
        )

    async def work(db: Database, _: KeyVault) -> int:
        product = await catalogue.edit_product(db, args.sku, changes)
        print(
            f"updated {product.sku}: {product.name}, {_price(product)}, {'on sale' if product.active else 'off sale'}"
        )
        return 0

    return await _with_db(settings, work)


async def cmd_product_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(db: Database, _: KeyVault) -> int:
        products = {p.sku: p for p in await catalogue.list_products(db, active_only=False)}
        levels = await inventory.stock_levels(db)
        if not levels:
            print(
                "no products yet: keyvend product add SKU --name NAME --price 9.99 --currency usd"
            )
        for level in levels:
            p = products[level.sku]
            state = "" if p.active else "  (off sale)"
            print(
                f"{p.sku:<20} {_price(p):>12}  available {level.available:>7}  reserved {level.reserved:>5}  "
                f"sold {level.sold:>7}  {p.name}{state}"
            )
        return 0

    return await _with_db(settings, work)


async def cmd_keys_import(settings: Settings, args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else path.read_bytes()
    except OSError as exc:
        raise Failure(f"cannot read {args.file}: {exc.strerror}") from None

    async def work(db: Database, vault: KeyVault) -> int:
        parsed = inventory.parse_keys(data, is_csv=path.suffix.lower() == ".csv")
        report = await inventory.restock(db, vault, args.sku, parsed, source="cli")
        print(
            f"{report.sku}: added {report.added}, skipped {report.duplicates} duplicates, "
            f"rejected {report.rejected} lines ({report.empty} empty, {report.too_long} too long, "
            f"{report.binary} binary, {report.not_utf8} not UTF-8); "
            f"available now {report.available}"
        )
        if report.backorders_fulfilled:
            print(
                f"filled {len(report.backorders_fulfilled)} backordered orders: the running bot delivers them"
            )
        resave = " (save the file as UTF-8 and import it again)" if report.not_utf8 else ""
        if report.rejected and not report.added:
            raise Failure(
                f"nothing imported from {args.file}: {report.rejected} lines rejected{resave}"
            )
        if resave:
            print(f"{args.file}: {report.not_utf8} lines are not UTF-8{resave}", file=sys.stderr)
        return 0

    return await _with_db(settings, work)


async def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    async def work(db: Database, _: KeyVault) -> int:
        stats = await reports.sales(db)
        for period in stats.periods:
            label = "today" if period.days == 1 else f"last {period.days} days"
            revenue = (
                ", ".join(
                    f"{to_major(m, c)} {c.upper()}" for c, m in sorted(period.revenue.items())
                )
                or "-"
            )
            print(f"{label:<13} {period.orders:>6} orders  {revenue}")
        for level in await inventory.stock_levels(db):
            low = "  LOW" if level.low and level.active else ""
            print(
                f"{level.sku:<20} available {level.available:>7}  reserved {level.reserved:>5}  "
                f"sold {level.sold:>7}  revoked {level.revoked:>5}{low}"
            )
        if stats.attention:
            print(
                f"needs attention: {stats.attention} (orders in review or owed a refund, undelivered messages)"
            )
        return 0

    return await _with_db(settings, work)


async def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    async def work(db: Database, vault: KeyVault) -> int:
        findings = await check(
            db,
            max_attempts=settings.delivery_max_attempts,
            vault=vault,
            sample=None if args.full else KEY_SAMPLE,
        )
        for finding in findings:
            print(f"{'ok  ' if finding.ok else 'FAIL'} {finding.invariant}: {finding.description}")
            for violation in finding.violations:
                print(f"       {violation}")
        failed = [f for f in findings if not f.ok]
        print("all invariants hold" if not failed else f"{len(failed)} invariant checks failed")
        return 1 if failed else 0

    return await _with_db(settings, work)


async def cmd_keys_reencrypt(settings: Settings, args: argparse.Namespace) -> int:
    async def work(db: Database, vault: KeyVault) -> int:
        shown = 0

        def progress(total: int) -> None:
            nonlocal shown
            if total - shown >= 10_000:
                shown = total
                print(f"rewrote {total} keys so far", file=sys.stderr, flush=True)

        report = await reencrypt(db, vault, progress=progress)
        if report.remaining:
            raise Failure(
                f"rewrote {report.rewritten} keys; {report.remaining} were in use by a sale "
                "every time and are still under an older key: run `keyvend keys reencrypt` again"
            )
        print(
            f"rewrote {report.rewritten} keys: every key is under key id {vault.key_ids[0]}; "
            "run `keyvend check --full`, then remove the other keys from KEY_ENCRYPTION_KEY"
        )
        return 0

    return await _with_db(settings, work)


async def cmd_keygen(settings: Settings, args: argparse.Namespace) -> int:
    print(KeyVault.generate())
    return 0


async def cmd_client_add(settings: Settings, args: argparse.Namespace) -> int:
    async def work(db: Database, _: KeyVault) -> int:
        new = await clients.add_client(
            db,
            args.name,
            currency=args.currency,
            balance=args.balance,
            credit=args.credit,
            webhook_url=args.webhook,
            email=args.email,
            review_over=args.review_over,
        )
        c = new.client
        print(
            f"added client {c.name}: balance {c.money(c.balance_minor)}, "
            f"credit {c.money(c.credit_minor)}. Its API token (shown only now):"
        )
        print(new.token)
        if new.webhook_secret:
            print(f"webhook signing secret: {new.webhook_secret}")
        return 0

    return await _with_db(settings, work)


async def cmd_client_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(db: Database, _: KeyVault) -> int:
        found = await clients.list_clients(db)
        if not found:
            print("no clients yet: keyvend client add NAME --balance 100.00 --currency usd")
        for c in found:
            state = "  (disabled)" if c.disabled else ""
            review = f"  review over {c.review_over}" if c.review_over else ""
            print(
                f"{c.name:<24} balance {c.money(c.balance_minor):>16}  "
                f"credit {c.money(c.credit_minor):>14}  {c.email or '-'}  "
                f"{c.webhook_url or '-'}{review}{state}"
            )
        return 0

    return await _with_db(settings, work)


async def cmd_client_topup(settings: Settings, args: argparse.Namespace) -> int:
    async def work(db: Database, _: KeyVault) -> int:
        c = await clients.topup(db, args.name, args.amount)
        print(f"{c.name}: balance now {c.money(c.balance_minor)}")
        return 0

    return await _with_db(settings, work)


async def cmd_client_token(settings: Settings, args: argparse.Namespace) -> int:
    async def work(db: Database, _: KeyVault) -> int:
        token = await clients.new_token(db, args.name)
        print(f"new API token for {args.name} (the old one no longer works; shown only now):")
        print(token)
        return 0

    return await _with_db(settings, work)


async def cmd_client_disable(settings: Settings, args: argparse.Namespace) -> int:
    async def work(db: Database, _: KeyVault) -> int:
        c = await clients.disable(db, args.name)
        print(f"{c.name} is disabled: its token is refused from now on")
        return 0

    return await _with_db(settings, work)


async def cmd_client_review(settings: Settings, args: argparse.Namespace) -> int:
    async def work(db: Database, _: KeyVault) -> int:
        status = await client_orders.decide_review(
            db, args.order, approve=args.approve, email=settings.smtp_url is not None
        )
        print(f"order {args.order} is {status}")
        return 0

    return await _with_db(settings, work)


async def cmd_coupon_add(settings: Settings, args: argparse.Namespace) -> int:
    async def work(db: Database, _: KeyVault) -> int:
        made = await coupons.add_coupon(
            db,
            args.code,
            percent=args.percent,
            off=args.off,
            currency=args.currency,
            sku=args.sku,
            max_uses=args.uses,
            until=args.until,
        )
        print(f"added code {_coupon(made)}")
        return 0

    return await _with_db(settings, work)


async def cmd_coupon_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(db: Database, _: KeyVault) -> int:
        found = await coupons.list_coupons(db)
        if not found:
            print("no codes yet: keyvend coupon add CODE --percent 10")
        for c in found:
            print(_coupon(c))
        return 0

    return await _with_db(settings, work)


async def cmd_coupon_disable(settings: Settings, args: argparse.Namespace) -> int:
    async def work(db: Database, _: KeyVault) -> int:
        c = await coupons.disable_coupon(db, args.code)
        print(f"{c.code} is disabled: no new checkout can use it")
        return 0

    return await _with_db(settings, work)


def _coupon(c: coupons.CouponView) -> str:
    uses = f"{c.uses}/{c.max_uses}" if c.max_uses is not None else str(c.uses)
    until = f"  until {c.valid_until:%Y-%m-%d %H:%M} UTC" if c.valid_until else ""
    state = "" if c.active else "  (disabled)"
    return (
        f"{c.code:<24} -{c.off():<12} {c.sku or 'any product'}  used {uses}"
        f"  held {c.held}{until}{state}"
    )


def _price(product: catalogue.ProductView) -> str:
    price = f"{to_major(product.price_minor, product.currency)} {product.currency.upper()}"
    stars = product.price_for(STARS_PROVIDER, STARS)
    return price if stars is None else f"{price} or {stars} Stars"


def _provider_prices(args: argparse.Namespace) -> dict[str, tuple[int, str] | None] | None:
    """The prices a provider with its own currency charges, from `--stars N` (0: none)."""
    if args.stars is None:
        return None
    return stars_price(args.stars, every=getattr(args, "every", None))


# ---------------------------------------------------------------- argument parsing


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyvend", description="A Telegram shop for digital keys."
    )
    commands = parser.add_subparsers(title="commands")

    commands.add_parser("run", help="migrate the database and start the bot").set_defaults(
        command=cmd_run
    )
    commands.add_parser("migrate", help="bring the database schema up to date").set_defaults(
        command=cmd_migrate
    )
    commands.add_parser("stats", help="orders, revenue and stock").set_defaults(command=cmd_stats)
    verify = commands.add_parser("check", help="verify the invariants on the database")
    verify.add_argument(
        "--full",
        action="store_true",
        help=f"decrypt every stored key (default: a random {KEY_SAMPLE:,})",
    )
    verify.set_defaults(command=cmd_check)
    commands.add_parser("keygen", help="print a new KEY_ENCRYPTION_KEY").set_defaults(
        command=cmd_keygen
    )

    product = commands.add_parser("product", help="manage the catalogue").add_subparsers(
        title="product commands"
    )
    add = product.add_parser("add", help="add a product")
    add.add_argument("sku")
    add.add_argument("--name", required=True)
    add.add_argument("--price", required=True, help="e.g. 9.99")
    add.add_argument("--currency", required=True, help="three-letter code, e.g. usd")
    add.add_argument("--description")
    add.add_argument(
        "--kind", choices=[k.value for k in ProductKind], default=ProductKind.UNIQUE.value
    )
    add.add_argument("--max-per-order", type=int, default=10)
    add.add_argument("--max-per-buyer", type=int)
    add.add_argument("--low-stock", type=int, default=5, help="alert when stock falls to this")
    add.add_argument("--template", help="how to redeem; may use {key}, {order}, {product}")
    add.add_argument("--stars", type=int, help="also sold for this many Telegram Stars")
    add.add_argument(
        "--every",
        choices=[p.value for p in Period],
        help="a subscription: paid every period, a new key each time",
    )
    add.add_argument("--category", help="buyers see products grouped by category")
    add.add_argument(
        "--allocation", choices=[a.value for a in Allocation], default=Allocation.OLDEST.value
    )
    add.set_defaults(command=cmd_product_add)

    edit = product.add_parser("edit", help="change a product")
    edit.add_argument("sku")
    edit.add_argument(
        "--lang", choices=LANGUAGES, help="--name/--description set this language's text"
    )
    edit.add_argument("--name")
    edit.add_argument("--description")
    edit.add_argument("--price")
    edit.add_argument("--currency")
    edit.add_argument("--max-per-order", type=int)
    edit.add_argument("--max-per-buyer", type=int, help="0 removes the limit")
    edit.add_argument("--low-stock", type=int)
    edit.add_argument("--template")
    edit.add_argument("--stars", type=int, help="price in Telegram Stars; 0: not sold for Stars")
    edit.add_argument("--category", help='"" removes the category')
    edit.add_argument("--allocation", choices=[a.value for a in Allocation])
    edit.add_argument(
        "--review-quantity",
        type=int,
        help="orders of this many keys or more wait in /review; 0: off",
    )
    edit.add_argument(
        "--review-amount",
        help="orders worth this much or more wait in /review, e.g. 100.00; 0: off",
    )
    replace = edit.add_mutually_exclusive_group()
    replace.add_argument(
        "--auto-replace",
        dest="auto_replace",
        action="store_true",
        default=None,
        help="replace a reported key without an admin, once per order",
    )
    replace.add_argument("--no-auto-replace", dest="auto_replace", action="store_false")
    sale = edit.add_mutually_exclusive_group()
    sale.add_argument(
        "--active", dest="active", action="store_true", default=None, help="put on sale"
    )
    sale.add_argument("--inactive", dest="active", action="store_false", help="take off sale")
    edit.set_defaults(command=cmd_product_edit)

    product.add_parser("list", help="list products with stock").set_defaults(
        command=cmd_product_list
    )

    keys = commands.add_parser("keys", help="manage keys").add_subparsers(title="keys commands")
    load = keys.add_parser("import", help="import keys, one per line (.txt, .csv or - for stdin)")
    load.add_argument("sku")
    load.add_argument("file")
    load.set_defaults(command=cmd_keys_import)
    keys.add_parser(
        "reencrypt", help="rewrite every key under the first KEY_ENCRYPTION_KEY (rotation)"
    ).set_defaults(command=cmd_keys_reencrypt)

    client = commands.add_parser("client", help="business clients of the HTTP API").add_subparsers(
        title="client commands"
    )
    new = client.add_parser("add", help="add a client and print its API token once")
    new.add_argument("name")
    new.add_argument("--balance", help="opening balance, e.g. 100.00")
    new.add_argument("--currency", default="usd", help="three-letter code, e.g. usd")
    new.add_argument("--credit", help="how far below zero the balance may go, e.g. 50.00")
    new.add_argument("--webhook", help="https URL that gets signed order.fulfilled callbacks")
    new.add_argument("--email", help="address that gets each order's spreadsheet")
    new.add_argument(
        "--review-over", type=int, help="orders of more keys than this wait for an admin"
    )
    new.set_defaults(command=cmd_client_add)
    client.add_parser("list", help="list clients with balances").set_defaults(
        command=cmd_client_list
    )
    top = client.add_parser("topup", help="add money to a client's balance")
    top.add_argument("name")
    top.add_argument("amount", help="e.g. 250.00")
    top.set_defaults(command=cmd_client_topup)
    token = client.add_parser("token", help="issue a new API token; the old one stops working")
    token.add_argument("name")
    token.set_defaults(command=cmd_client_token)
    off = client.add_parser("disable", help="refuse the client's token from now on")
    off.add_argument("name")
    off.set_defaults(command=cmd_client_disable)
    review = client.add_parser("review", help="approve or reject a client order in review")
    review.add_argument("order", type=int)
    decision = review.add_mutually_exclusive_group(required=True)
    decision.add_argument("--approve", action="store_true", help="fulfil it")
    decision.add_argument("--reject", action="store_true", help="refund it to the balance")
    review.set_defaults(command=cmd_client_review)

    coupon = commands.add_parser("coupon", help="discount codes").add_subparsers(
        title="coupon commands"
    )
    new = coupon.add_parser("add", help="add a discount code")
    new.add_argument("code")
    discount = new.add_mutually_exclusive_group(required=True)
    discount.add_argument("--percent", help="whole percent off the order, 1-99")
    discount.add_argument("--off", help="amount off the order, e.g. 2.00")
    new.add_argument("--currency", help="of --off, for a code without --sku")
    new.add_argument("--sku", help="only for this product")
    new.add_argument("--uses", type=int, help="how many paid orders may use it")
    new.add_argument("--until", help="last day it works (UTC), e.g. 2026-12-31")
    new.set_defaults(command=cmd_coupon_add)
    coupon.add_parser("list", help="list codes with their uses").set_defaults(
        command=cmd_coupon_list
    )
    off = coupon.add_parser("disable", help="no new checkout may use the code")
    off.add_argument("code")
    off.set_defaults(command=cmd_coupon_disable)
    return parser


if __name__ == "__main__":
    sys.exit(main())
