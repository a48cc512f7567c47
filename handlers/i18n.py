"""The one translation function every buyer- and admin-facing text goes through.

Catalogues are gettext `.po` files under `handlers/locales/<lang>/LC_MESSAGES/`, read with
Babel and compiled in memory on first use, so there is no build step and no binary file in
the tree. English is the source language (the msgid is the English text); adding a
language is adding a catalogue and its code to `LANGUAGES`.
"""

from __future__ import annotations

import gettext
import io
from functools import cache
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

LANGUAGES = ("en", "zh")
DEFAULT = "en"
DOMAIN = "messages"
LOCALES = Path(__file__).resolve().parent / "locales"


def language_of(code: str | None) -> str:
    """The supported language closest to a Telegram `language_code` ("zh-hans" -> "zh")."""
    base = (code or "").split("-")[0].lower()
    return base if base in LANGUAGES else DEFAULT


@cache
def _catalogue(language: str) -> gettext.NullTranslations:
    path = LOCALES / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    if not path.exists():
        return gettext.NullTranslations()
    with path.open("rb") as po:
        catalog = read_po(po, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def t(language: str, message: str, /, **values: object) -> str:
    """`message` in `language`, with `{name}` fields filled from `values`."""
    text = _catalogue(language).gettext(message)
    return text.format(**values) if values else text


def tn(language: str, singular: str, plural: str, n: int, /, **values: object) -> str:
    """Like `t`, choosing the plural form for `n` (which is also available as `{n}`)."""
    text = _catalogue(language).ngettext(singular, plural, n)
    return text.format(n=n, **values)
