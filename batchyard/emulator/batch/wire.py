"""Request framing the way Azure's front end enforces it, with bounded reads.

A body is framed by exactly one plain decimal ``Content-Length``. ``Transfer-Encoding``
(chunked or any other) is refused: Batch requires ``Content-Length`` on requests with a body
(411 ``MissingContentLengthHeader``), and a request carrying both is the classic request-
smuggling shape (400 ``InvalidHeaderValue``). When the end of a body is unknown the
connection is closed after the answer, so no stray bytes are read as a next request.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.message import Message
from typing import BinaryIO

from batchyard.emulator.batch.common import BatchApiError

MAX_BODY_BYTES = 1024 * 1024  # Batch refuses bigger request bodies with RequestBodyTooLarge
DRAIN_LIMIT_BYTES = 32 * 1024 * 1024  # beyond this we close the connection rather than read
_DECIMAL = re.compile(r"[0-9]{1,15}")
_BODY_METHODS = ("POST", "PUT", "PATCH")


@dataclass
class FramingError(Exception):
    """A request refused before its body was read; ``close`` when the connection cannot go on."""

    error: BatchApiError
    close: bool


def _bad_header(name: str, message: str) -> BatchApiError:
    return BatchApiError(400, "InvalidHeaderValue", message, [("HeaderName", name)])


def _missing_length(why: str) -> BatchApiError:
    return BatchApiError(411, "MissingContentLengthHeader", f"The Content-Length header was not specified ({why}).")


def body_length(method: str, headers: Message) -> int:
    """The body's length from the one ``Content-Length`` header, or a :class:`FramingError`."""
    encodings = headers.get_all("Transfer-Encoding") or []
    lengths = headers.get_all("Content-Length") or []
    if encodings:
        if lengths:
            raise FramingError(_bad_header("Transfer-Encoding", "A request cannot carry both Transfer-Encoding "
                                           "and Content-Length."), close=True)
        raise FramingError(_missing_length("request bodies must have a Content-Length; Transfer-Encoding "
                                           "is not accepted"), close=True)
    if not lengths:
        if method in _BODY_METHODS:
            raise FramingError(_missing_length(f"{method} requires it, 0 for no body"), close=False)
        return 0
    if len(lengths) > 1:
        raise FramingError(_bad_header("Content-Length", "Content-Length must appear once."), close=True)
    value = lengths[0].strip()
    if not _DECIMAL.fullmatch(value):
        raise FramingError(_bad_header("Content-Length", "Content-Length must be a plain decimal number of "
                                       "bytes."), close=True)
    return int(value)


def _read_exactly(rfile: BinaryIO, length: int, deadline: float, *, keep: bool) -> bytes:
    """``length`` bytes, each read bounded by the socket's timeout and all of them by ``deadline``."""
    parts: list[bytes] = []
    remaining = length
    while remaining:
        if time.monotonic() > deadline:
            raise TimeoutError("request body not received in time")
        chunk = rfile.read1(min(remaining, 65536))  # type: ignore[attr-defined]
        if not chunk:
            raise ConnectionError("client closed the connection mid-body")
        remaining -= len(chunk)
        if keep:
            parts.append(chunk)
    return b"".join(parts)


def read_body(method: str, headers: Message, rfile: BinaryIO, *, deadline: float) -> bytes:
    """The request body, or :class:`FramingError`; ``TimeoutError``/``ConnectionError`` on a stalled client."""
    length = body_length(method, headers)
    if length > MAX_BODY_BYTES:
        error = BatchApiError(413, "RequestBodyTooLarge", "The request body is too large and exceeds the "
                              "maximum permissible limit (1 MB).")
        if length > DRAIN_LIMIT_BYTES:
            raise FramingError(error, close=True)
        # Read and drop the body so the client sees our answer instead of a reset.
        _read_exactly(rfile, length, deadline, keep=False)
        raise FramingError(error, close=False)
    return _read_exactly(rfile, length, deadline, keep=True)
