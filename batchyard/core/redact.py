"""Keep secrets out of everything a person or a file can see.

Three kinds of secret travel through batchyard: storage account keys (alone or inside
a connection string), SAS tokens (their ``sig=`` part is what grants access) and
Batch account keys. :func:`redact` scrubs all of them from text by shape, and also
any literal value registered with :func:`register_secret` (so a key that somehow
appears out of its usual shape is caught too), and any fragment of a registered key
(:data:`FRAGMENT_MIN` characters or more: a hostile file name can make a command print
the start of a key, which a whole-value match lets through). :func:`install_log_filter`
applies it to every log record of batchyard and the Azure SDKs.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import quote, unquote

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

# Fragments: any piece of a registered key this long or longer is masked. 8 base64 characters are
# 48 bits of a key: short enough to catch the start of a key a command was tricked into printing,
# long enough that random text (hashes, ids) never matches one of a key's ~80 pieces by chance.
FRAGMENT_MIN = 8
# A matched piece of letters only, up to this long, is left alone: it is most likely a word that a
# human-chosen password happens to contain ("registry" in "registry-Pa55-..."), and masking every
# "registry" in a log would hide more than it protects. A piece with a digit or one of + / = %
# (base64 and URL encoding), or a longer one, is masked.
FRAGMENT_WORDLIKE_MAX = 11
_FRAGMENT_SIGNS = frozenset("0123456789+/=%")
_CANDIDATE_RUN = re.compile(rf"\S{{{FRAGMENT_MIN},}}")
# A quick test first, at C speed: a piece of FRAGMENT_MIN (>= 7) characters anywhere in a text
# contains one of the text's consecutive 4-character blocks, so a text none of whose blocks occurs in
# a key holds no fragment (most texts), and only the others are scanned window by window.
_BLOCK = re.compile(".{4}", re.S)
# The secret parts of a connection string or SAS token; the rest (endpoints, account name, sv=, se=)
# is public and would match ordinary text.
_SECRET_FIELDS = re.compile(r"(?i)(?:AccountKey|SharedAccessSignature)\s*=\s*([^;\s'\"]+)"
                            r"|(?:^|[?&;])sig=([^&;\s'\"#]+)")

_literals: set[str] = set()
_literals_lock = threading.Lock()
_fragments: frozenset[str] = frozenset()  # every FRAGMENT_MIN-long piece of every registered key
_blocks: frozenset[str] = frozenset()  # every 4-character piece of every registered key


def _key_material(value: str) -> list[str]:
    """The parts of ``value`` whose fragments are masked: a connection string's key or signature, a SAS
    token's ``sig``; the whole value for anything else (a key, a password)."""
    found = [a or b for a, b in _SECRET_FIELDS.findall(value)]
    return found or [value]


def register_secret(value: str | None) -> None:
    """Remember a literal secret so :func:`redact` masks it, and any fragment of its key, wherever it appears."""
    if not value or len(value) < 8:
        return
    global _fragments, _blocks
    keys: set[str] = set()  # the key as stored, decoded and URL-encoded (as it appears in a URL)
    for material in _key_material(value):
        keys |= {material, unquote(material), quote(unquote(material), safe="")}
    pieces = {key[i:i + FRAGMENT_MIN] for key in keys for i in range(len(key) - FRAGMENT_MIN + 1)}
    with _literals_lock:
        _literals.update({value} | {key for key in keys if len(key) >= 8})
        if not pieces <= _fragments:
            _fragments = _fragments | pieces
            _blocks = _blocks | {key[i:i + 4] for key in keys for i in range(len(key) - 3)}


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
    fragments = _fragments
    if not fragments or _blocks.isdisjoint(_BLOCK.findall(text)):
        return text
    return _mask_fragments(text, fragments)


def _mask_fragments(text: str, fragments: frozenset[str]) -> str:
    """``text`` with every stretch made of overlapping registered-key pieces masked (unless it looks like a word)."""
    spans: list[tuple[int, int]] = []
    for run in _CANDIDATE_RUN.finditer(text):
        chunk, offset = run.group(), run.start()
        last = len(chunk) - FRAGMENT_MIN
        i = 0
        while i <= last:
            if chunk[i:i + FRAGMENT_MIN] not in fragments:
                i += 1
                continue
            j = i + 1
            while j <= last and chunk[j:j + FRAGMENT_MIN] in fragments:
                j += 1
            piece = chunk[i:j - 1 + FRAGMENT_MIN]
            if len(piece) > FRAGMENT_WORDLIKE_MAX or not _FRAGMENT_SIGNS.isdisjoint(piece):
                start, stop = offset + i, offset + j - 1 + FRAGMENT_MIN
                if spans and start <= spans[-1][1]:  # overlaps the last stretch: one mask for both
                    start = spans.pop()[0]
                spans.append((start, stop))
            i = j
    if not spans:
        return text
    parts, end = [], 0
    for start, stop in spans:
        parts += [text[end:start], MASK]
        end = stop
    return "".join(parts) + text[end:]


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
