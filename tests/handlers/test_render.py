"""Rendering of key deliveries: the key reaches the buyer exactly as imported, whatever it holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from handlers import render
from store.deliveries import Job
from store.models import DeliveryKind

# Each looks like a placeholder, or half of one, or HTML: none may be changed on the way out.
AWKWARD_KEYS = ["AB{order}CD", "X-{product}-Y", "{key}", "{", "}{", "{{key}}", "<b>&{order}"]


def _job(
    keys: list[str], template: str, product: str = "Space Game", key_ids: tuple[int, ...] = ()
) -> Job:
    now = datetime.now(UTC)
    return Job(
        id=1,
        kind=DeliveryKind.KEYS,
        order_id=42,
        chat_id=7,
        attempts=0,
        language="en",
        product_name=product,
        quantity=len(keys),
        template=template,
        keys=tuple(keys),
        lease_expires_at=now,
        queued_at=now,
        key_ids=key_ids,
    )


def _spoilers(text: str) -> list[str]:
    parts = text.split("<tg-spoiler>")[1:]
    return [part.split("</tg-spoiler>")[0] for part in parts]


@pytest.mark.parametrize(
    "template",
    ["", "Redeem {key} for order #{order} of {product}", "{product} / {order}", "{key}{key}"],
)
def test_a_template_never_changes_the_key(template: str) -> None:
    [screen] = render.delivery(_job(AWKWARD_KEYS, template), timedelta(minutes=15), "en")
    message = screen.text
    escaped = [render._e(key) for key in AWKWARD_KEYS]
    expected = [k for k in escaped for _ in range(max(1, template.count("{key}")))]
    assert _spoilers(message) == expected


def test_placeholders_in_the_product_name_stay_as_written() -> None:
    job = _job(["K-1"], "{product} #{order}: {key}", product="Pack {key} {order}")
    [screen] = render.delivery(job, timedelta(minutes=15), "en")
    message = screen.text
    assert "Pack {key} {order} #42: <tg-spoiler>K-1</tg-spoiler>" in message
    assert _spoilers(message) == ["K-1"]


def test_one_key_has_one_report_button_and_a_shared_key_none() -> None:
    [one] = render.delivery(_job(["K-1"], "", key_ids=(5,)), timedelta(minutes=15), "en")
    [shared] = render.delivery(_job(["K-1"], ""), timedelta(minutes=15), "en")

    buttons = [b for row in one.keyboard.inline_keyboard for b in row]
    assert [(b.text, b.callback_data) for b in buttons] == [("⚠️ Report a problem", "kr:42:5")]
    assert shared.keyboard is None


def test_a_long_key_list_keeps_each_message_within_telegrams_button_limit() -> None:
    keys = [f"K-{n}" for n in range(250)]
    job = _job(keys, "", key_ids=tuple(range(1000, 1250)))

    screens = render.delivery(job, timedelta(minutes=15), "en")

    data = [b.callback_data for s in screens for row in s.keyboard.inline_keyboard for b in row]
    assert data == [f"kr:42:{k}" for k in range(1000, 1250)]
    assert all(sum(len(row) for row in s.keyboard.inline_keyboard) <= 100 for s in screens)
    assert [k for s in screens for k in _spoilers(s.text)] == keys
    assert all(len(s.text) <= render.MESSAGE_LIMIT for s in screens)
