"""SharedKey verification, computed exactly the way the azure-batch SDK signs, with Azure's clock.

The SDK's ``BatchSharedKeyAuthPolicy`` signs::

    VERB\\n + 11 standard header values (content-length "0" when absent on non-GET/HEAD)
    + "name:value\\n" for every header whose lowercased name contains "ocp-" (sorted)
    + "/{account}{raw url path}"
    + "\\n{name}:{value}" for every query parameter (sorted by name, first value, decoded,
      empty values skipped)

HMAC-SHA256 with the base64-decoded account key, base64-encoded. We rebuild that string
from what arrived on the wire and compare in constant time.

The request date comes from ``ocp-date``, else ``Date`` (Batch's rule: ``ocp-date`` wins when
both are sent); both are covered by the signature. ``x-ms-date`` is a Storage header that the
Batch signature does not cover, so it is not read: a request dated only by it is undated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qs, urlsplit

from batchyard.emulator.batch.common import BatchApiError, rfc1123, utcnow

HEADERS_TO_SIGN = (
    "content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
    "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range",
)
# "The Batch service must receive a request within 15 minutes of when it is created."
DATE_WINDOW = timedelta(minutes=15)


@dataclass(frozen=True)
class Verified:
    """What a valid request was signed with: the replay guard keys on these."""

    signature: str
    date: datetime


def string_to_sign(method: str, raw_path: str, headers: Mapping[str, str], account: str,
                   *, lower_query_names: bool = False) -> str:
    """The canonical string for one request (``raw_path`` includes the query, as sent)."""
    lowered = {k.lower(): v for k, v in headers.items() if v}
    if method not in ("GET", "HEAD") and "content-length" not in lowered:
        lowered["content-length"] = "0"
    out = method + "\n" + "\n".join(str(lowered.get(h, "")) for h in HEADERS_TO_SIGN) + "\n"
    ocp = sorted((k.lower(), v) for k, v in headers.items() if "ocp-" in k.lower() and v)
    out += "".join(f"{k}:{v}\n" for k, v in ocp)
    url = urlsplit(raw_path)
    out += f"/{account}{url.path}"
    query = parse_qs(url.query)
    if lower_query_names:  # what the REST docs describe; the SDK does not lowercase
        query = {k.lower(): v for k, v in query.items()}
    for name in sorted(query):
        value = query[name][0]
        if value:
            out += f"\n{name}:{value}"
    return out


def sign(key_b64: str, text: str) -> str:
    digest = hmac.new(base64.b64decode(key_b64), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def failed(detail: str) -> BatchApiError:
    """Azure's 403 for every authentication failure; the detail says which check refused."""
    return BatchApiError(
        403, "AuthenticationFailed",
        "Server failed to authenticate the request. Make sure the value of Authorization header is "
        "formed correctly including the signature.",
        [("AuthenticationErrorDetail", detail)],
    )


def request_date(headers: Mapping[str, str], now: datetime | None = None) -> datetime:
    """The signed request date, within 15 minutes of ``now`` either way, else Azure's 403.

    The details are Azure Storage's wording (Batch shares its front end and answers the same
    ``AuthenticationFailed``); Azure documents no wording for a future date, so that one is ours.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    raw = (lowered.get("ocp-date") or lowered.get("date") or "").strip()
    if not raw:
        raise failed("Request date header not specified")
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        when = None
    if when is None or when.tzinfo is None:
        raise failed("The Date header in the request is incorrect.")
    now = now or utcnow()
    if when < now - DATE_WINDOW:
        raise failed(f"Request date header too old: '{rfc1123(when)}'")
    if when > now + DATE_WINDOW:
        raise failed(f"Request date header too far in the future: '{rfc1123(when)}'")
    return when


def verify(method: str, raw_path: str, headers: Mapping[str, str], account: str, key_b64: str,
           *, now: datetime | None = None) -> Verified:
    """Raise 403 ``AuthenticationFailed`` unless the request is dated now and carries a valid signature.

    Checked in Azure's order: Authorization present, date, scheme, account, MAC. Messages never
    echo the presented signature or the key.
    """
    auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    if not auth:
        raise failed("The Authorization header was not present (the emulator accepts SharedKey only).")
    when = request_date(headers, now)
    scheme, _, credential = auth.partition(" ")
    if scheme != "SharedKey":
        raise failed(f"The authentication scheme {scheme!r} is not supported (the emulator accepts SharedKey only).")
    name, sep, signature = credential.strip().partition(":")
    if not sep or not signature:
        raise failed("The Authorization header is malformed (expected 'SharedKey account:signature').")
    if name != account:
        raise failed(f"The account {name!r} does not exist on this emulator.")
    try:
        base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise BatchApiError(400, "InvalidAuthenticationInfo",
                            "The authentication information was not provided in the correct format. "
                            "Verify the value of Authorization header.",
                            [("AuthenticationErrorDetail", "Signature is not a valid base64 string.")]) from None
    for lower in (False, True):
        expected = sign(key_b64, string_to_sign(method, raw_path, headers, account, lower_query_names=lower))
        if hmac.compare_digest(expected.encode(), signature.encode()):
            return Verified(signature=expected, date=when)
    raise failed("The MAC signature found in the HTTP request is not the same as any computed signature.")
