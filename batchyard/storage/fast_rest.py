"""The few storage calls a worker makes for every task, each in one urllib3 request.

A tiny task costs the worker three storage calls: its input down, its output up, and its share
of a table transaction (its claim, then its result). Through the Azure SDKs a blob request costs
~0.9 ms of the worker's CPU (pipeline policies, response-header deserialization, requests'
per-request setting merges) and a transaction ~0.34 ms per row (the multipart body built and
parsed with the ``email`` package); on urllib3 the same blob request costs ~0.2 ms and a row
~0.04 ms (docs/performance.md, round 5). This module makes just those calls:

- **Get Blob** of a blob's first ``limit`` bytes (a ranged GET). A bigger blob is continued by
  the caller through the SDK, conditioned on the ETag returned here, so the two parts are one
  version of the blob.
- **Put Blob** of a small file in one request. The service checks the body against its MD5
  (``Content-MD5``) and stores the MD5 on the blob (``x-ms-blob-content-md5``), as the SDK path
  does.
- **Entity group transaction** of creates and ETag-guarded merges in one table partition,
  entities serialized as the tables SDK does for the types batchyard's rows hold.
- **Put Message** of a submit's task messages, base64 of their UTF-8 text as the queue SDK's
  ``TextBase64EncodePolicy`` sends it (a 47 KiB message costs the submitter ~2.2 ms of CPU through
  the SDK, ~0.9 ms here).

A request is authorized with the account key (Shared Key, signed here as the REST reference
describes) or by the SAS already in a URL. Retries, timeouts and pooled connections are
urllib3's, set like the SDK clients' (``account.py``). Only ``fast_path.py`` decides when this
path applies (loopback endpoints, unless turned off); the callers (``transfer.py``, the local
backend's ``store.py``) turn its errors into batchyard's.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, urlsplit

import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

from batchyard.core.version import __version__

# The calls exist unchanged since long before these versions, and Azurite 3.x accepts them; this
# path serves loopback endpoints only (fast_path.py), where the SDKs' newer versions add nothing.
BLOB_API_VERSION = "2021-08-06"
TABLE_API_VERSION = "2019-02-02"
QUEUE_API_VERSION = "2021-08-06"
# Says who sent a request in Azurite's debug log (and in a test that tells the two paths apart).
USER_AGENT = f"batchyard-fast-rest/{__version__} urllib3/{urllib3.__version__}"
# What the SDKs' storage retry policies retry: request timeouts and transient server errors.
RETRY_STATUSES = frozenset({408, 500, 502, 503, 504})
_INT32 = range(-(2**31), 2**31)
_Request = tuple[str, str, dict[str, str], bytes | None]  # method, URL (query and all), headers, body


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


class RestStatusError(Exception):
    """The service answered a request with an error status (after retries)."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"HTTP {status} ({code})")
        self.status, self.code = status, code


class RestUnreachableError(Exception):
    """No answer from the endpoint (refused, reset, timed out) after retries."""


class FastRest:
    """Get Blob, Put Blob, table transactions and Put Message over one pool of connections; thread-safe."""

    def __init__(self, *, account_name: str = "", account_key: str = "", connect_timeout: float,
                 read_timeout: float, retries: int, backoff: float, backoff_max: float, pool_size: int,
                 ca_bundle: str | None = None) -> None:
        self._account = account_name
        self._key = base64.b64decode(account_key) if account_key else b""
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        # requests' CA bundle (the one set in the environment, else certifi's): both paths trust
        # the same authorities.
        self._http = urllib3.PoolManager(
            num_pools=8, maxsize=pool_size, ca_certs=ca_bundle or certifi.where(),
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            # Every method, as the SDKs' policies do: a transaction whose answer was lost and that
            # is sent again is refused as a whole (its creates exist) and the caller falls back.
            retries=urllib3.Retry(total=retries, backoff_factor=backoff, backoff_max=backoff_max,
                                  status_forcelist=RETRY_STATUSES, allowed_methods=None,
                                  redirect=0, raise_on_redirect=False, raise_on_status=False),
        )
        self._bursts = _BurstConnections(connect_timeout=connect_timeout, read_timeout=read_timeout,
                                         keep=pool_size, ca_certs=ca_bundle or certifi.where())

    def __repr__(self) -> str:
        return f"FastRest(account={self._account!r})"

    # --- blobs -----------------------------------------------------------------------------------------
    def get_first(self, address: BlobAddress, limit: int) -> FirstPart:
        """The blob's first ``limit`` bytes, its size and ETag; raises :class:`RestStatusError`."""
        response = self._send_blob("GET", address, {"x-ms-range": f"bytes=0-{limit - 1}"})
        if response.status == 416:  # a range of an empty blob: it has nothing to read past
            response = self._send_blob("GET", address, {})
        if response.status not in (200, 206):
            raise _status_error(response)
        return _first_part(response)

    def get_first_many(self, addresses: list[BlobAddress], limit: int) -> list[FirstPart | None]:
        """:meth:`get_first` of several blobs, the requests sent together, one connection each.

        None for a blob not got this way (no answer, or any status but 200/206): ask for it
        alone with :meth:`get_first`, which retries and raises as usual.
        """
        responses = self._together([self._blob_request("GET", a, {"x-ms-range": f"bytes=0-{limit - 1}"})
                                    for a in addresses])
        return [_first_part(r) if r is not None and r.status in (200, 206) else None for r in responses]

    def put_blob(self, address: BlobAddress, data: bytes) -> None:
        """Create or replace a block blob with ``data``, its MD5 checked and stored."""
        response = self._request(*self._put_request(address, data))
        if response.status != 201:
            raise _status_error(response)

    def put_blob_many(self, items: list[tuple[BlobAddress, bytes]]) -> list[bool]:
        """:meth:`put_blob` of several blobs, sent together; False where one was not stored
        this way (put it alone with :meth:`put_blob`)."""
        responses = self._together([self._put_request(address, data) for address, data in items])
        return [r is not None and r.status == 201 for r in responses]

    def _put_request(self, address: BlobAddress, data: bytes) -> _Request:
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        return self._blob_request("PUT", address, {
            "x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)), "Content-MD5": md5, "x-ms-blob-content-md5": md5,
        }, body=data)

    def _send_blob(self, method: str, address: BlobAddress, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        return self._request(*self._blob_request(method, address, headers))

    def _blob_request(self, method: str, address: BlobAddress, headers: dict[str, str],
                      body: bytes | None = None) -> _Request:
        headers = {"x-ms-version": BLOB_API_VERSION, "User-Agent": USER_AGENT, **headers}
        url = address.url
        if address.sas:
            url = f"{url}?{address.sas}"
        elif address.signed:
            headers["x-ms-date"] = formatdate(usegmt=True)
            headers["Authorization"] = self._blob_shared_key(method, address.url, headers)
        return method, url, headers, body

    def _together(self, requests: list[_Request]) -> list[urllib3.BaseHTTPResponse | None]:
        """Send every request, each on a connection of its own, then read the answers.

        The service gets them at once: Azurite, one Node thread, handles requests that arrive
        together for ~30% less CPU each than the same requests one after another, and this
        thread makes no hand-off to others (threads doing the same cost more CPU than they
        saved; docs/performance.md, round 6). No retry here: None where a request failed.
        """
        sent: list[tuple[str, HTTPConnection | None]] = []
        for method, url, headers, body in requests:
            conn = None
            try:
                conn = self._bursts.take(url)
                conn.request(method, url[url.index("/", url.index("//") + 2):], body=body, headers=headers)
            except Exception:
                conn = _drop(conn)
            sent.append((url, conn))
        responses: list[urllib3.BaseHTTPResponse | None] = []
        for url, conn in sent:
            response = None
            if conn is not None:
                try:
                    conn.timeout = self._read_timeout  # set on the socket by getresponse()
                    response = conn.getresponse()  # read whole (preloaded): the connection is free again
                    self._bursts.give_back(url, conn)
                except Exception:
                    _drop(conn)
                    response = None
            responses.append(response)
        return responses

    def _blob_shared_key(self, method: str, url: str, headers: dict[str, str]) -> str:
        """The Authorization header of a blob request without query parameters.

        https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key
        """
        lower = {k.lower(): v.strip() for k, v in headers.items()}
        length = lower.get("content-length", "")
        standard = [method, lower.get("content-encoding", ""), lower.get("content-language", ""),
                    "" if length == "0" else length, lower.get("content-md5", ""), lower.get("content-type", ""),
                    "", "", "", "", "", lower.get("range", "")]  # Date (x-ms-date is used), conditionals
        canonical_headers = "".join(f"{k}:{v}\n" for k, v in sorted(lower.items()) if k.startswith("x-ms-"))
        # The path as sent, still quoted; with Azurite's path-style URLs it begins with the account.
        return self._signed("\n".join(standard) + "\n" + canonical_headers + f"/{self._account}{urlsplit(url).path}")

    # --- queues ----------------------------------------------------------------------------------------
    def put_message(self, queue_url: str, text: str) -> None:
        """Put ``text`` on the queue at ``queue_url`` (its endpoint and name), base64-encoded as the
        queue SDK's ``TextBase64EncodePolicy`` does; raises :class:`RestStatusError`."""
        encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
        body = (f"<?xml version='1.0' encoding='utf-8'?>\n<QueueMessage><MessageText>{encoded}</MessageText>"
                "</QueueMessage>").encode()
        url = f"{queue_url}/messages"
        headers = {"x-ms-version": QUEUE_API_VERSION, "User-Agent": USER_AGENT, "x-ms-date": formatdate(usegmt=True),
                   "Content-Type": "application/xml; charset=utf-8", "Content-Length": str(len(body))}
        headers["Authorization"] = self._blob_shared_key("POST", url, headers)  # the queue service signs alike
        response = self._request("POST", url, headers, body)
        if response.status != 201:
            raise _status_error(response)

    # --- tables ----------------------------------------------------------------------------------------
    def submit_group(self, table_endpoint: str, table: str, creates: list[dict[str, Any]],
                     merges: list[tuple[dict[str, Any], str]]) -> list[str] | None:
        """One transaction: ``creates``, then ``merges`` each on condition of its ETag.

        Returns the new ETags in that order, or None if the service refused any of the writes
        (then none was made). Raises :class:`RestStatusError` for an answer that is not about one
        write (the table is gone: ``TableNotFound``; credentials refused) and ``TypeError`` for a
        value the tables SDK would not serialize this way (the caller then uses the SDK).
        """
        changeset = f"changeset_{uuid.uuid4()}"
        base = f"{table_endpoint}/{table}"
        parts = [_operation(changeset, f"POST {base}", "Prefer: return-no-content\r\n", row) for row in creates]
        for row, etag in merges:
            keys = f"PartitionKey='{_key(row['PartitionKey'])}',RowKey='{_key(row['RowKey'])}'"
            parts.append(_operation(changeset, f"MERGE {base}({keys})", f"If-Match: {etag}\r\n", row))
        batch = f"batch_{uuid.uuid4()}"
        body = (f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n" + "".join(parts)
                + f"--{changeset}--\r\n--{batch}--\r\n").encode("utf-8")
        content_type = f"multipart/mixed; boundary={batch}"
        url = f"{table_endpoint}/$batch"
        date = formatdate(usegmt=True)
        headers = {
            "x-ms-version": TABLE_API_VERSION, "x-ms-date": date, "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx", "Content-Type": content_type, "Accept": "application/json",
            "User-Agent": USER_AGENT,
            # Shared Key for the Table service: verb, Content-MD5, Content-Type, date, resource.
            "Authorization": self._signed(f"POST\n\n{content_type}\n{date}\n/{self._account}{urlsplit(url).path}"),
        }
        response = self._request("POST", url, headers, body)
        if response.status != 202:
            raise _status_error(response, _odata_code(response.data))
        answers = _changeset_answers(response)
        refused = [(status, code) for status, _, code in answers if not 200 <= status < 300]
        if refused:
            if refused[0][1] == "TableNotFound":
                raise RestStatusError(*refused[0])
            return None
        if len(answers) != len(creates) + len(merges):
            raise RestStatusError(response.status, f"{len(answers)} answers to {len(creates) + len(merges)} writes")
        return [etag for _, etag, _ in answers]

    # --- shared ----------------------------------------------------------------------------------------
    def _signed(self, string_to_sign: str) -> str:
        signature = base64.b64encode(hmac.digest(self._key, string_to_sign.encode("utf-8"), "sha256")).decode()
        return f"SharedKey {self._account}:{signature}"

    def _request(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> urllib3.BaseHTTPResponse:
        try:
            return self._http.request(method, url, body=body, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            # Never the exception's text as is: MaxRetryError names the URL, SAS included.
            reason = getattr(exc, "reason", None) or exc
            raise RestUnreachableError(type(reason).__name__) from None


class _BurstConnections:
    """The connections bursts send on, kept per origin (scheme, host, port) for the next burst.

    A burst sends a request on each of several connections before reading any answer. urllib3's
    pool has no public call for that (its ``urlopen`` sends, then waits for the answer), so the
    bursts hold connections of their own, made from urllib3's public connection classes
    (``request``, ``getresponse``, ``is_connected``), at most ``keep`` idle per origin.
    """

    def __init__(self, *, connect_timeout: float, read_timeout: float, keep: int, ca_certs: str) -> None:
        self._connect_timeout, self._read_timeout, self._keep, self._ca_certs = (
            connect_timeout, read_timeout, keep, ca_certs)
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str, int | None], list[HTTPConnection]] = {}

    def take(self, url: str) -> HTTPConnection:
        """An idle connection to ``url``'s origin, or a new one (it connects on its first request)."""
        origin = _origin(url)
        with self._lock:
            idle = self._idle.get(origin)
            conn = idle.pop() if idle else None
        if conn is not None and not conn.is_connected:
            conn.close()  # closed by the server while idle: the next request connects again
        if conn is None:
            scheme, host, port = origin
            if scheme == "https":
                conn = HTTPSConnection(host, port, timeout=self._connect_timeout, cert_reqs="CERT_REQUIRED",
                                       ca_certs=self._ca_certs)
            else:
                conn = HTTPConnection(host, port, timeout=self._connect_timeout)
        conn.timeout = self._connect_timeout
        return conn

    def give_back(self, url: str, conn: HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(_origin(url), [])
            if len(idle) < self._keep:
                idle.append(conn)
                return
        conn.close()


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port


def _drop(conn: HTTPConnection | None) -> None:
    """Close a burst connection that failed (never raises: the request is then sent alone)."""
    with contextlib.suppress(Exception):
        if conn is not None:
            conn.close()


def _first_part(response: urllib3.BaseHTTPResponse) -> FirstPart:
    data = response.data
    size = len(data)
    if response.status == 206:  # Content-Range: bytes 0-1023/4096
        total = (response.headers.get("Content-Range") or "").rpartition("/")[2]
        size = int(total) if total.isdigit() else size
    return FirstPart(data, size, response.headers.get("ETag", ""))


def _status_error(response: urllib3.BaseHTTPResponse, code: str | None = None) -> RestStatusError:
    return RestStatusError(response.status, response.headers.get("x-ms-error-code") or code or "no error code")


def _key(value: str) -> str:
    """A PartitionKey or RowKey inside a request URL: quotes doubled (OData), then URL-quoted."""
    return quote(value.replace("'", "''"), safe="")


def _operation(changeset: str, request_line: str, extra_headers: str, row: Mapping[str, Any]) -> str:
    return (f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            f"{request_line} HTTP/1.1\r\nContent-Type: application/json\r\n"
            f"Accept: application/json;odata=minimalmetadata\r\n{extra_headers}DataServiceVersion: 3.0\r\n\r\n"
            f"{json.dumps(_entity_json(row))}\r\n")


def _entity_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as the tables SDK sends it, for the types batchyard's rows hold (others: TypeError)."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        if value is None:
            continue
        kind = type(value)
        if kind is str:
            out[name], out[f"{name}@odata.type"] = value, "Edm.String"
        elif kind is bool or (kind is int and value in _INT32):
            out[name] = value
        elif kind is float:
            out[name] = value if math.isfinite(value) else ("NaN" if math.isnan(value) else
                                                            "Infinity" if value > 0 else "-Infinity")
            out[f"{name}@odata.type"] = "Edm.Double"
        else:
            raise TypeError(f"property {name!r}: {kind.__name__} is written through the tables SDK")
    return out


_BOUNDARY = re.compile(r"boundary=([^\s;]+)")


def _changeset_answers(response: urllib3.BaseHTTPResponse) -> list[tuple[int, str, str]]:
    """(status, ETag, error code) of each write in a transaction's answer, in order."""
    text = response.data.decode("utf-8", "replace").replace("\r\n", "\n")
    inner = _BOUNDARY.search(text)  # the changeset's boundary, declared in the batch's first part
    if inner is None:
        raise RestStatusError(response.status, "a transaction answer without a changeset")
    answers = []
    for chunk in text.split(f"--{inner.group(1)}")[1:]:
        rest = chunk.partition("HTTP/1.1 ")[2]
        if not rest:
            continue  # the closing delimiter
        status_line, _, after = rest.partition("\n")
        headers, _, payload = after.partition("\n\n")
        etag = next((line.split(":", 1)[1].strip() for line in headers.split("\n")
                     if line.lower().startswith("etag:")), "")
        status = int(status_line.split(" ", 1)[0])
        answers.append((status, etag, "" if 200 <= status < 300 else _odata_code(payload.encode())))
    return answers


def _odata_code(payload: bytes) -> str:
    """The error code of a JSON OData error body, or ""."""
    try:
        return str(json.loads(payload)["odata.error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""
