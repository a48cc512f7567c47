"""The fake's Stripe object templates against Stripe's published example objects.

The templates in tests/fixtures/stripe/ are the project's own. Where Stripe's examples sit
beside the repository (`../shared/fixtures/stripe/`, as on the machine this project grew on),
this checks that the templates invent no field, give each field the type Stripe gives it,
and leave out no top-level field Stripe sends. Elsewhere it skips: the suite needs nothing
outside the repository.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.stripe import TEMPLATES, template

PUBLISHED = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "stripe"
NAMES = sorted(path.name.removesuffix(".json") for path in TEMPLATES.glob("*.json"))


def _kind(value: Any) -> str:
    return "number" if type(value) in (int, float) else type(value).__name__


def differences(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Where `ours` departs from `theirs`: a field Stripe's example lacks, or another type.

    A null on either side says nothing about the type. An empty hash in Stripe's example is
    free-form (`metadata`) or left unshown, so any fields under it are accepted.
    """
    if ours is None or theirs is None:
        return []
    if _kind(ours) != _kind(theirs):
        return [f"{path or '.'}: {_kind(ours)} here, {_kind(theirs)} in Stripe's example"]
    if isinstance(ours, dict) and theirs:
        found: list[str] = []
        for key, value in ours.items():
            if key in theirs:
                found += differences(value, theirs[key], f"{path}.{key}")
            else:
                found.append(f"{path}.{key}: not in Stripe's example")
        return found
    if isinstance(ours, list) and ours and theirs:
        return differences(ours[0], theirs[0], f"{path}[0]")
    return []


def test_every_object_the_fake_serves_has_a_template() -> None:
    assert NAMES == [
        "charge",
        "checkout.session",
        "dispute",
        "event",
        "invoice",
        "payment_intent",
        "refund",
        "subscription",
    ]


@pytest.mark.parametrize("name", NAMES)
def test_a_template_has_the_fields_and_types_of_stripes_published_example(name: str) -> None:
    if not (PUBLISHED / f"{name}.json").is_file():
        pytest.skip(f"Stripe's published examples are not beside the repository ({PUBLISHED})")
    theirs = json.loads((PUBLISHED / f"{name}.json").read_text(encoding="utf-8"))
    ours = template(name)

    assert ours["object"] == theirs["object"]
    assert differences(ours, theirs) == []
    assert sorted(theirs.keys() - ours.keys()) == [], "top-level fields Stripe sends are missing"


def test_the_comparison_notices_an_invented_field_and_a_changed_type() -> None:
    theirs = {"amount": 100, "outcome": {"type": "authorized"}, "metadata": {}, "refunds": None}
    ours = {
        "amount": "100",
        "outcome": {"type": "authorized", "made_up": 1},
        "metadata": {"order_id": "7"},
        "refunds": {"object": "list"},
    }

    assert differences(ours, theirs) == [
        ".amount: str here, number in Stripe's example",
        ".outcome.made_up: not in Stripe's example",
    ]
