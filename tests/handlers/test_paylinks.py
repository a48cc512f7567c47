"""Pay links as tokens, without a shop: what they carry, and what no one else can make."""

from __future__ import annotations

import asyncio

import pytest

from handlers.paylinks import LINK_TTL, BadLink, LinkExpired, PayLink, PayLinks

BASE = "https://shop.example.com/"
NOW = 1_800_000_000.0


def _links(token: str = "123:bot-token") -> PayLinks:
    return PayLinks.from_bot_token(BASE, token)


def _token(url: str) -> str:
    assert url.startswith("https://shop.example.com/pay/")
    return url.rsplit("/", 1)[1]


@pytest.mark.parametrize("coupon", [None, "SPRING-10", "折扣 50%/x.y"])
def test_a_link_reads_back_as_the_purchase_it_was_made_for(coupon: str | None) -> None:
    links = _links()
    url = links.url(buyer_id=42, product_id=7, quantity=3, language="zh", coupon=coupon, now=NOW)

    assert links.read(_token(url), now=NOW) == PayLink(
        42, 7, 3, int(NOW + LINK_TTL.total_seconds()), "zh", coupon
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.replace("42.", "43.", 1),  # another buyer
        lambda t: t.replace(".7.3.", ".7.30.", 1),  # more keys
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # the signature itself
        lambda t: t.rsplit(".", 1)[0],  # no signature
        lambda t: "",
        lambda t: "....",
    ],
    ids=["buyer", "quantity", "signature", "unsigned", "empty", "dots"],
)
def test_a_changed_link_is_not_ours(change) -> None:
    links = _links()
    token = _token(links.url(buyer_id=42, product_id=7, quantity=3, language="en", now=NOW))

    with pytest.raises(BadLink):
        links.read(change(token), now=NOW)


def test_another_bot_token_makes_links_this_shop_refuses() -> None:
    theirs = _links("999:another-token").url(
        buyer_id=42, product_id=7, quantity=1, language="en", now=NOW
    )

    with pytest.raises(BadLink):
        _links().read(_token(theirs), now=NOW)


def test_a_link_past_its_time_has_expired() -> None:
    links = _links()
    token = _token(links.url(buyer_id=42, product_id=7, quantity=1, language="zh", now=NOW))

    assert links.read(token, now=NOW + LINK_TTL.total_seconds()).buyer_id == 42
    with pytest.raises(LinkExpired):
        links.read(token, now=NOW + LINK_TTL.total_seconds() + 1)


async def test_opens_of_one_purchase_take_turns_and_leave_nothing_behind() -> None:
    links = _links()
    link = PayLink(42, 7, 1, 0, "en")
    steps: list[tuple[str, int]] = []

    async def open_link(n: int) -> None:
        async with links.opening(link):
            steps.append(("in", n))
            await asyncio.sleep(0)
            steps.append(("out", n))

    await asyncio.gather(*(open_link(n) for n in range(3)))

    assert steps == [("in", 0), ("out", 0), ("in", 1), ("out", 1), ("in", 2), ("out", 2)]
    assert links._opening == {}  # no lock kept per purchase once its opens are answered
