"""Small blobs in one HTTP request each: the task runner's staging and upload hot path.

A tiny task moves two small blobs, its input down and its output up. Through the storage SDK
each request costs ~0.9 ms of the worker's CPU (pipeline policies, response-header
deserialization, requests' per-request setting merges); the same request on urllib3 costs
~0.2 ms (1 KiB blobs against Azurite; docs/performance.md, round 5). This module makes just
those two calls, nothing else:

- **Get Blob** of a blob's first ``limit`` bytes (a ranged GET). A bigger blob is continued by
  the caller through the SDK, conditioned on the ETag returned here, so the two parts are one
  version of the blob.
- **Put Blob** of a small file in one request. The service checks the body against its MD5
  (``Content-MD5``) and stores the MD5 on the blob (``x-ms-blob-content-md5``), as the SDK path
  does.

A request is authorized with the account key (Shared Key, signed here as the REST reference
describes) or by the SAS already in a URL. Retries, timeouts and pooled connections are
urllib3's, set like the SDK clients' (``storage.py``). :class:`~batchyard.storage.BlobTransfer`
decides when this path applies and turns its errors into batchyard's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import urlsplit

import certifi
import urllib3

# Both calls exist unchanged since long before this version; Azure and Azurite 3.x accept it.
API_VERSION = "2021-08-06"
# What the SDK's storage retry policy retries: request timeouts and transient server errors.
RETRY_STATUSES = frozenset({408, 500, 502, 503, 504})


@dataclass(frozen=True)
class BlobAddress:
    """One blob, and how a request to it is authorized. Its repr shows no SAS."""

    url: str  # scheme://host[:port]/path, the path quoted, without a query
    what: str  # the blob as messages name it, without any secret
    sas: str = field(default="", repr=False)  # a SAS query without '?', or ""
    signed: bool = False  # sign with the account key (Shared Key) instead of a SAS


@dataclass(frozen=True)
class FirstPart:
    """The first bytes of a blob (all of them when ``size == len(data)``)."""

    data: bytes
    size: int
    etag: str


class BlobStatusError(Exception):
    """The service answered a request with an error status (after retries)."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"HTTP {status} ({code})")
        self.status, self.code = status, code


class BlobUnreachableError(Exception):
    """No answer from the endpoint (refused, reset, timed out) after retries."""


class SmallBlobs:
    """Get and Put Blob over one pool of connections; thread-safe."""

    def __init__(self, *, account_name: str = "", account_key: str = "", connect_timeout: float,
                 read_timeout: float, retries: int, backoff: float, backoff_max: float, pool_size: int) -> None:
        self._account = account_name
        self._key = base64.b64decode(account_key) if account_key else b""
        # The CA bundle requests would use, so both paths trust the same authorities.
        ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
        self._http = urllib3.PoolManager(
            num_pools=8, maxsize=pool_size, ca_certs=ca_bundle,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=urllib3.Retry(total=retries, backoff_factor=backoff, backoff_max=backoff_max,
                                  status_forcelist=RETRY_STATUSES, allowed_methods=frozenset({"GET", "PUT"}),
                                  redirect=0, raise_on_redirect=False, raise_on_status=False),
        )

    def __repr__(self) -> str:
        return f"SmallBlobs(account={self._account!r})"

    def get_first(self, address: BlobAddress, limit: int) -> FirstPart:
        """The blob's first ``limit`` bytes, its size and ETag; raises :class:`BlobStatusError`."""
        response = self._send("GET", address, {"x-ms-range": f"bytes=0-{limit - 1}"})
        if response.status == 416:  # a range of an empty blob: it has nothing to read past
            response = self._send("GET", address, {})
        if response.status not in (200, 206):
            raise _status_error(response)
        data = response.data
        size = len(data)
        if response.status == 206:  # Content-Range: bytes 0-1023/4096
            total = (response.headers.get("Content-Range") or "").rpartition("/")[2]
            size = int(total) if total.isdigit() else size
        return FirstPart(data, size, response.headers.get("ETag", ""))

    def put(self, address: BlobAddress, data: bytes) -> None:
        """Create or replace a block blob with ``data``, its MD5 checked and stored."""
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        response = self._send("PUT", address, {
            "x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)), "Content-MD5": md5, "x-ms-blob-content-md5": md5,
        }, body=data)
        if response.status != 201:
            raise _status_error(response)

    def _send(self, method: str, address: BlobAddress, headers: dict[str, str],
              body: bytes | None = None) -> urllib3.BaseHTTPResponse:
        headers = {"x-ms-version": API_VERSION, **headers}
        url = address.url
        if address.sas:
            url = f"{url}?{address.sas}"
        elif address.signed:
            headers["x-ms-date"] = formatdate(usegmt=True)
            headers["Authorization"] = self._shared_key(method, address.url, headers)
        try:
            return self._http.request(method, url, body=body, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            # Never the exception's text as is: MaxRetryError names the URL, SAS included.
            reason = getattr(exc, "reason", None) or exc
            raise BlobUnreachableError(type(reason).__name__) from None

    def _shared_key(self, method: str, url: str, headers: dict[str, str]) -> str:
        """The Authorization header for a request without query parameters.

        https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key
        """
        lower = {k.lower(): v.strip() for k, v in headers.items()}
        length = lower.get("content-length", "")
        standard = [method, lower.get("content-encoding", ""), lower.get("content-language", ""),
                    "" if length == "0" else length, lower.get("content-md5", ""), lower.get("content-type", ""),
                    "", "", "", "", "", lower.get("range", "")]  # Date (x-ms-date is used), conditionals
        canonical_headers = "".join(f"{k}:{v}\n" for k, v in sorted(lower.items()) if k.startswith("x-ms-"))
        # The path as sent, still quoted; with Azurite's path-style URLs it begins with the account.
        string_to_sign = "\n".join(standard) + "\n" + canonical_headers + f"/{self._account}{urlsplit(url).path}"
        signature = base64.b64encode(hmac.digest(self._key, string_to_sign.encode("utf-8"), "sha256")).decode()
        return f"SharedKey {self._account}:{signature}"


def _status_error(response: urllib3.BaseHTTPResponse) -> BlobStatusError:
    return BlobStatusError(response.status, response.headers.get("x-ms-error-code") or "no error code")
