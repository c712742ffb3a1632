"""SharedKey verification, computed exactly the way the azure-batch SDK signs.

The SDK's ``BatchSharedKeyAuthPolicy`` signs::

    VERB\\n + 11 standard header values (content-length "0" when absent on non-GET/HEAD)
    + "name:value\\n" for every header whose lowercased name contains "ocp-" (sorted)
    + "/{account}{raw url path}"
    + "\\n{name}:{value}" for every query parameter (sorted by name, first value, decoded,
      empty values skipped)

HMAC-SHA256 with the base64-decoded account key, base64-encoded. We rebuild that string
from what arrived on the wire and compare in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

from batchyard.emulator.batch.common import BatchApiError

HEADERS_TO_SIGN = (
    "content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
    "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range",
)


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


def _failed(detail: str) -> BatchApiError:
    return BatchApiError(
        403, "AuthenticationFailed",
        "Server failed to authenticate the request. Make sure the value of Authorization header is "
        "formed correctly including the signature.",
        [("AuthenticationErrorDetail", detail)],
    )


def verify(method: str, raw_path: str, headers: Mapping[str, str], account: str, key_b64: str) -> None:
    """Raise 403 ``AuthenticationFailed`` unless the request carries a valid SharedKey signature.

    Messages never echo the presented signature or the key.
    """
    auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    if not auth:
        raise _failed("The Authorization header was not present (the emulator accepts SharedKey only).")
    scheme, _, credential = auth.partition(" ")
    if scheme != "SharedKey":
        raise _failed(f"The authentication scheme {scheme!r} is not supported (the emulator accepts SharedKey only).")
    name, sep, signature = credential.strip().partition(":")
    if not sep or not signature:
        raise _failed("The Authorization header is malformed (expected 'SharedKey account:signature').")
    if name != account:
        raise _failed(f"The account {name!r} does not exist on this emulator.")
    for lower in (False, True):
        expected = sign(key_b64, string_to_sign(method, raw_path, headers, account, lower_query_names=lower))
        if hmac.compare_digest(expected.encode(), signature.encode()):
            return
    raise _failed("The MAC signature found in the HTTP request is not the same as any computed signature.")
