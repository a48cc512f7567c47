"""Logging that cannot leak: secrets scrubbed from every line, chatty libraries held back.

Third-party clients log request URLs and bodies at their debug levels (the Bot API URL holds
the bot token; message bodies hold keys), so their loggers are capped whatever LOG_LEVEL
says, and every record passes a filter that replaces each configured secret with "***".
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

# Loggers that would print tokens, keys or request bodies below these levels.
_CAPS = {
    "httpx": logging.WARNING,  # logs every request URL, and the Bot API URL carries the token
    "httpcore": logging.WARNING,
    "telegram": logging.INFO,  # DEBUG logs each API call with its parameters (message texts)
    "stripe": logging.WARNING,
    "aiosqlite": logging.INFO,
    "hpack": logging.WARNING,
    "alembic": logging.WARNING,  # not secret, only noisy: one line per migration check
}


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        clean, exc_text = message, record.exc_text
        for secret in self._secrets:
            clean = clean.replace(secret, "***")
            if exc_text:
                exc_text = exc_text.replace(secret, "***")
        record.msg, record.args, record.exc_text = clean, None, exc_text
        return True


def configure(level: str, secrets: Iterable[str], *, stream=sys.stderr) -> None:
    """Send logs to `stream` at `level`, scrubbed of `secrets`."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, cap in _CAPS.items():
        logging.getLogger(name).setLevel(max(cap, root.level))
