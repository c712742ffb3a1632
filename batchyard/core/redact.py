"""Keep secrets out of everything a person or a file can see.

Three kinds of secret travel through batchyard: storage account keys (alone or inside
a connection string), SAS tokens (their ``sig=`` part is what grants access) and
Batch account keys. :func:`redact` scrubs all of them from text by shape, and also
any literal value registered with :func:`register_secret` (so a key that somehow
appears out of its usual shape is caught too). :func:`install_log_filter` applies
it to every log record of batchyard and the Azure SDKs.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # AccountKey=...; in connection strings (value runs to ';' or end or quote)
    (re.compile(r"(?i)(AccountKey\s*=\s*)[^;\s'\"]+"), r"\1" + MASK),
    # SharedAccessSignature=... in connection strings
    (re.compile(r"(?i)(SharedAccessSignature\s*=\s*)[^;\s'\"]+"), r"\1" + MASK),
    # sig=... in SAS query strings (URL-encoded or not)
    (re.compile(r"(?i)([?&;]sig=)[^&\s'\"#]+"), r"\1" + MASK),
    # Authorization: SharedKey account:signature  /  Bearer tokens
    (re.compile(r"(?i)(SharedKey(?:Lite)?\s+[^:\s'\"]+:)[A-Za-z0-9+/=]+"), r"\1" + MASK),
    (re.compile(r"(?i)(Bearer\s+)[A-Za-z0-9._\-]+"), r"\1" + MASK),
)

_literals: set[str] = set()
_literals_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a literal secret so :func:`redact` masks it wherever it appears."""
    if value and len(value) >= 8:
        with _literals_lock:
            _literals.add(value)


def known_secrets() -> int:
    """How many literal secrets are registered (a cache of redacted text keys on this)."""
    with _literals_lock:
        return len(_literals)


def redact(text: str) -> str:
    """Return ``text`` with every known secret shape and registered literal masked."""
    if not text:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    with _literals_lock:
        literals = tuple(_literals)
    for literal in literals:
        if literal in text:
            text = text.replace(literal, MASK)
    return text


def strip_sas(url: str) -> str:
    """A URL without its query string, for messages about a blob or container."""
    return url.split("?", 1)[0]


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with secrets masked (args folded in first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is not ours to fix; leave it alone
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactingFilter()
_SCRUBBED_LOGGERS = ("batchyard", "azure", "urllib3")


def install_log_filter() -> None:
    """Attach the redacting filter to batchyard's and the Azure SDKs' loggers and to root handlers.

    Filters on a logger only see records logged on that very logger, so the filter is
    also put on every handler of the root logger, which sees records from children.
    """
    for name in _SCRUBBED_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


def redacting_filter() -> logging.Filter:
    """The shared filter instance, for handlers created later."""
    return _FILTER
