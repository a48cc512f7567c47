"""The one translation function every buyer- and admin-facing text goes through.

Catalogues are gettext `.po` files under `handlers/locales/<lang>/LC_MESSAGES/`, read with
Babel and compiled in memory on first use, so there is no build step and no binary file in
the tree. English is the source language (the msgid is the English text); adding a
language is adding a catalogue and its code to `LANGUAGES`.
"""

from __future__ import annotations

import gettext
import io
from contextvars import ContextVar
from functools import cache
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

LANGUAGES = ("en", "zh")
DEFAULT = "en"
DOMAIN = "messages"
LOCALES = Path(__file__).resolve().parent / "locales"
NAMES = {"en": "English", "zh": "中文"}  # each language in its own words, for /language

# The language the user of the update being handled chose with /language. PTB handles each
# update in a task of its own and awaits that update's handlers in it, so what the first
# handler group sets here is what that update's later handlers see, and nothing else does.
_chosen: ContextVar[str | None] = ContextVar("chosen_language", default=None)


def language_of(code: str | None) -> str:
    """The supported language closest to a Telegram `language_code` ("zh-hans" -> "zh")."""
    base = (code or "").split("-")[0].lower()
    return base if base in LANGUAGES else DEFAULT


def use_chosen(language: str | None) -> None:
    """Answer the rest of this update in `language` (the user's /language choice), if given."""
    _chosen.set(language if language in LANGUAGES else None)


def user_language(code: str | None) -> str:
    """The language to answer a user in: their /language choice, else their Telegram one."""
    return _chosen.get() or language_of(code)


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
