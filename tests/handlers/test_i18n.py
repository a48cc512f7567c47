"""Every text the bot writes goes through the catalogue, and every language covers all of it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from handlers.i18n import LANGUAGES, LOCALES, language_of, t, tn

ROOT = Path(__file__).resolve().parents[2]
_FIELD = re.compile(r"\{(\w+)\}")


def _messages_in_code() -> set[str | tuple[str, str]]:
    found: set[str | tuple[str, str]] = set()
    for directory in ("handlers", "bot"):
        for _file, _line, message, _comments, _context in extract_from_dir(
            ROOT / directory, keywords={"t": (2,), "tn": (2, 3)}, comment_tags=()
        ):
            found.add(message if isinstance(message, str) else tuple(message))
    return found


@pytest.mark.parametrize("language", [lang for lang in LANGUAGES if lang != "en"])
def test_every_message_is_translated_with_the_same_placeholders(language: str) -> None:
    with (LOCALES / language / "LC_MESSAGES" / "messages.po").open("rb") as po:
        catalogue = {
            (m.id if isinstance(m.id, str) else tuple(m.id)): m.string for m in read_po(po) if m.id
        }
    in_code = _messages_in_code()
    assert in_code, "no messages found: is the extraction looking in the right place?"
    missing = sorted(str(m) for m in in_code - catalogue.keys())
    assert not missing, f"untranslated in {language}: {missing}"
    unused = sorted(str(m) for m in catalogue.keys() - in_code)
    assert not unused, f"stale {language} entries (no longer in the code): {unused}"
    for message, translation in catalogue.items():
        sources = message if isinstance(message, tuple) else (message,)
        targets = translation if isinstance(translation, tuple) else (translation,)
        assert all(targets), f"empty {language} translation for {message!r}"
        for target in targets:
            assert set(_FIELD.findall(target)) == set(_FIELD.findall(sources[0])), message


def test_languages_fall_back_to_english() -> None:
    assert language_of("zh-hans") == "zh"
    assert language_of("de") == "en" and language_of(None) == "en"
    assert t("zh", "Order not found.") == "未找到该订单。"
    assert t("en", "Order #{order}: {reason}", order=3, reason="paid") == "Order #3: paid"
    assert (
        tn("en", "Filled {n} backordered order.", "Filled {n} backordered orders.", 2)
        == "Filled 2 backordered orders."
    )
