"""The whole money -> key path through real HTTP: a buyer pays on Stripe and gets one key."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from store.models import Key, KeyStatus, Order, OrderStatus, Reveal
from tests.e2e.conftest import Shop
from tests.e2e.helpers import scalar

BUYER = 1001


async def test_buyer_pays_and_receives_exactly_the_imported_key(shop: Shop, tmp_path) -> None:
    added = await shop.cli(
        "product",
        "add",
        "GAME",
        "--name",
        "Space Game",
        "--price",
        "9.99",
        "--currency",
        "usd",
        "--template",
        "Redeem at example.com/redeem — order {order}",
    )
    assert added.returncode == 0, added.stderr
    keys = tmp_path / "keys.txt"
    keys.write_text("SPACE-AAAA-0001\nSPACE-AAAA-0002\nSPACE-AAAA-0003\n")
    imported = await shop.cli("keys", "import", "GAME", str(keys))
    assert imported.returncode == 0, imported.stderr
    assert "added 3" in imported.stdout

    tg = shop.telegram
    tg.message(BUYER, "/start buy_GAME")
    card = await tg.wait_for(lambda m: m.chat_id == BUYER and "Space Game" in (m.text or ""))
    assert await scalar(shop, select(func.count()).where(Key.status == KeyStatus.RESERVED)) == 0
    # "Pay by card" is a link: the browser opens it, the shop opens the checkout and sends
    # the browser on to Stripe's page. The card was the one message before payment.
    async with shop.http.get(card.button("Pay")["url"], allow_redirects=False) as opened:
        assert opened.status == 303
        session_id = opened.headers["Location"].rsplit("/", 1)[1]
    assert len(tg.messages_to(BUYER)) == 1
    session = shop.stripe.sessions[session_id]
    assert session["amount_total"] == 999 and session["currency"] == "usd"
    order_id = int(session["client_reference_id"])
    assert await scalar(shop, select(func.count()).where(Key.status == KeyStatus.RESERVED)) == 1

    shop.stripe.pay(session_id)
    event = shop.stripe.completed_event(session_id)
    response = await shop.post_event(event)
    assert response.status == 200

    delivered = await tg.wait_for(lambda m: m.chat_id == BUYER and m.spoiler_texts())
    assert delivered.spoiler_texts() == ["SPACE-AAAA-0001"]
    assert delivered.protect_content
    assert f"order {order_id}" in delivered.text

    # The same event again, and later: nothing more happens.
    again = await shop.post_event(event)
    assert again.status == 200
    await asyncio.sleep(1.5)
    key_messages = [m for m in tg.messages_to(BUYER) if "SPACE-AAAA" in (m.text or "")]
    assert len(key_messages) == 1
    assert (
        await scalar(shop, select(Order.status).where(Order.id == order_id))
        == OrderStatus.FULFILLED
    )
    assert await scalar(shop, select(func.count()).where(Key.status == KeyStatus.SOLD)) == 1
    assert await scalar(shop, select(func.count()).select_from(Reveal)) == 1
    check = await shop.cli("check")
    assert check.returncode == 0, check.stdout
