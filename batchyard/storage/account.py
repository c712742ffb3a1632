"""Blob, queue and table access on one storage account (Azure or Azurite).

One :class:`Storage` per process holds the service clients, so connections are reused
across tasks (on loopback a fresh connection per call costs more than the call). Every
client has connect/read timeouts: Azurite can stall, and a hung call must not hang a
worker forever.

Moving a task's files is ``transfer.py``'s (:class:`~batchyard.storage.transfer.BlobTransfer`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerClient,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)

from batchyard.core.errors import AuthenticationError, ConfigError, StorageError
from batchyard.core.redact import redact, redacting_filter, register_secret
from batchyard.storage.fast_path import FastPath
from batchyard.storage.fast_rest import FastRest, RestStatusError, RestUnreachableError
from batchyard.storage.listing import PAGE_SIZE, lean_listing_available, list_identities

log = logging.getLogger(__name__)

# Connect fast (loopback or a nearby region), but allow slow reads of big blocks.
CONNECTION_TIMEOUT_S = 10
READ_TIMEOUT_S = 120
_CLIENT_KWARGS: dict[str, Any] = {
    "connection_timeout": CONNECTION_TIMEOUT_S,
    "read_timeout": READ_TIMEOUT_S,
    "retry_total": 6,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 8,
}
BLOCK_SIZE = 8 * 1024 * 1024
# Every blob client, by account key or by SAS URL, uploads in BLOCK_SIZE blocks. Blocks over 4 MiB
# also put the SDK on its streamed upload path (the SDK's default 4 MiB blocks were ~15% slower
# against Azurite for a 512 MiB file).
_BLOB_KWARGS: dict[str, Any] = {"max_block_size": BLOCK_SIZE, "max_single_put_size": BLOCK_SIZE}
POOL_SIZE = 32  # concurrent sends/uploads share a client; urllib3's default of 10 would churn connections
FAST_POOL_SIZE = 8  # connections per host of fast_rest_client: a transfer burst's requests at most


# Loggers that print request lines or URLs (with a SAS's sig=) at DEBUG/INFO. Their records are
# scrubbed where they are made, so library users who turn on DEBUG logging without the CLI's
# handlers (``install_log_filter``) still never see a signature.
_URL_LOGGERS = ("urllib3.connectionpool", "azure.core.pipeline.policies.http_logging_policy")


def _guard_url_loggers() -> None:
    scrub = redacting_filter()
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if scrub not in logger.filters:
            logger.addFilter(scrub)


def _ca_bundle() -> str | None:
    """The CA bundle requests reads from the environment, if one is set."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")


def _client_kwargs() -> dict[str, Any]:
    """Per-client options: timeouts, retries and a connection pool sized for our concurrency."""
    import requests

    _guard_url_loggers()
    from azure.core.pipeline.transport import RequestsTransport

    session = requests.Session()
    # requests re-reads the proxy variables from the whole environment on every request (~0.2 ms,
    # a visible share of a tiny task). Without any proxy variable there is nothing to find, so it
    # stops looking (the CA bundle variable, read the same way, is read once here); with one,
    # requests keeps its per-URL proxy and no_proxy rules.
    if not urllib.request.getproxies_environment():
        ca_bundle = _ca_bundle()
        if ca_bundle:
            session.verify = ca_bundle
        session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return {**_CLIENT_KWARGS, "transport": RequestsTransport(session=session, session_owner=True)}


def fast_rest_client(account: StorageAccount | None) -> FastRest:
    """The one-request client for the per-task calls (``fast_rest.py``), with the SDK clients'
    timeouts and retries. Whether a request may use it is :class:`FastPath`'s to say."""
    _guard_url_loggers()
    return FastRest(
        account_name=account.account_name if account else "", account_key=account.account_key if account else "",
        connect_timeout=CONNECTION_TIMEOUT_S, read_timeout=READ_TIMEOUT_S, retries=_CLIENT_KWARGS["retry_total"],
        backoff=_CLIENT_KWARGS["retry_backoff_factor"], backoff_max=_CLIENT_KWARGS["retry_backoff_max"],
        pool_size=FAST_POOL_SIZE, ca_bundle=_ca_bundle(),
    )


@dataclass(frozen=True)
class StorageAccount:
    """One storage account's endpoints and key. Its repr never shows the key."""

    account_name: str
    blob_endpoint: str
    queue_endpoint: str
    table_endpoint: str
    account_key: str = field(repr=False, default="")

    def __post_init__(self) -> None:
        register_secret(self.account_key)

    @classmethod
    def from_connection_string(cls, conn_str: str, *, source: str = "connection string") -> StorageAccount:
        parts: dict[str, str] = {}
        for piece in conn_str.strip().split(";"):
            if not piece.strip():
                continue
            key, sep, value = piece.partition("=")
            if not sep:
                raise ConfigError(f"{source}: malformed (expected key=value pairs separated by ';')")
            parts[key.strip().lower()] = value.strip()
        if parts.get("usedevelopmentstorage", "").lower() == "true":
            raise ConfigError(
                f"{source}: UseDevelopmentStorage=true points at fixed ports; run "
                "`batchyard emulator env` and use the connection string it prints"
            )
        name = parts.get("accountname")
        key = parts.get("accountkey")
        if not name:
            raise ConfigError(f"{source}: AccountName is missing")
        if not key:
            raise ConfigError(f"{source}: AccountKey is missing (SAS-only connection strings are not supported)")
        register_secret(key)
        try:  # every signature decodes the key; a bad one would fail in each request instead
            base64.b64decode(key, validate=True)
        except binascii.Error:
            raise ConfigError(f"{source}: AccountKey is not base64 (a storage key is 88 characters of A-Z, a-z, "
                              "0-9, '+' and '/', ending in '='); copy it again from the portal") from None
        protocol = parts.get("defaultendpointsprotocol", "https")
        suffix = parts.get("endpointsuffix", "core.windows.net")

        def endpoint(kind: str) -> str:
            explicit = parts.get(f"{kind}endpoint")
            return (explicit or f"{protocol}://{name}.{kind}.{suffix}").rstrip("/")

        return cls(
            account_name=name,
            account_key=key,
            blob_endpoint=endpoint("blob"),
            queue_endpoint=endpoint("queue"),
            table_endpoint=endpoint("table"),
        )

    def connection_string(self) -> str:
        """The secret-bearing connection string; never log it."""
        return (
            f"DefaultEndpointsProtocol={urlsplit(self.blob_endpoint).scheme};AccountName={self.account_name};"
            f"AccountKey={self.account_key};BlobEndpoint={self.blob_endpoint};"
            f"QueueEndpoint={self.queue_endpoint};TableEndpoint={self.table_endpoint};"
        )

    @property
    def is_local(self) -> bool:
        host = urlsplit(self.blob_endpoint).hostname or ""
        return host in ("127.0.0.1", "localhost", "::1") or host.startswith("azurite")


def translate_error(exc: Exception, what: str) -> Exception:
    """Turn an SDK exception into a batchyard error whose message names ``what`` and holds no secret."""
    if isinstance(exc, ClientAuthenticationError) or (
        isinstance(exc, HttpResponseError) and exc.status_code == 403
    ) or (isinstance(exc, RestStatusError) and exc.status in (401, 403)):
        return AuthenticationError(
            f"{what}: the storage account refused the credentials (HTTP 403). "
            "Check the AccountKey in AZURE_STORAGE_CONNECTION_STRING or [storage] in batchyard.toml."
        )
    if isinstance(exc, RestStatusError):
        return StorageError(f"{what}: {exc.code} (HTTP {exc.status})")
    if isinstance(exc, RestUnreachableError):
        return StorageError(f"{what}: storage endpoint unreachable ({exc})")
    if isinstance(exc, ServiceRequestError):
        return StorageError(f"{what}: storage endpoint unreachable ({redact(str(exc).splitlines()[0])})")
    code = getattr(exc, "error_code", None) or type(exc).__name__
    first_line = redact(str(exc).splitlines()[0] if str(exc) else "")
    return StorageError(f"{what}: {code}: {first_line}")


class Storage:
    """Cached, thread-safe service clients for one account, plus SAS helpers."""

    def __init__(self, account: StorageAccount, *, fast_path: str | None = None) -> None:
        """``fast_path``: ``"auto"`` or ``"off"`` (``[storage] fast_path``); None: ``BATCHYARD_FAST_PATH``."""
        self.account = account
        self.fast_path = FastPath(partial(fast_rest_client, account), fast_path)
        self._lock = threading.Lock()
        self._blob: BlobServiceClient | None = None
        self._queue: Any = None
        self._table: Any = None
        self._containers: dict[str, ContainerClient] = {}

    def __repr__(self) -> str:
        return f"Storage(account={self.account.account_name!r}, blob={self.account.blob_endpoint!r})"

    @classmethod
    def from_connection_string(cls, conn_str: str, *, fast_path: str | None = None) -> Storage:
        return cls(StorageAccount.from_connection_string(conn_str), fast_path=fast_path)

    # --- clients -------------------------------------------------------------------------------------
    @property
    def fast(self) -> FastRest | None:
        """The one-request client for this account's per-task calls, or None: through the SDK
        (:class:`FastPath` decides; the blob and table endpoints must both be loopback)."""
        return self.fast_path.client_for(self.account.blob_endpoint, self.account.table_endpoint)

    @property
    def fast_queue(self) -> FastRest | None:
        """The one-request client for a submit's queue puts, or None: through the SDK (the queue
        endpoint must be loopback)."""
        return self.fast_path.client_for(self.account.queue_endpoint)

    @property
    def blob_service(self) -> BlobServiceClient:
        with self._lock:
            if self._blob is None:
                self._blob = BlobServiceClient.from_connection_string(
                    self.account.connection_string(), **_BLOB_KWARGS, **_client_kwargs(),
                )
            return self._blob

    @property
    def queue_service(self) -> Any:
        from azure.storage.queue import QueueServiceClient

        with self._lock:
            if self._queue is None:
                self._queue = QueueServiceClient.from_connection_string(
                    self.account.connection_string(), **_client_kwargs()
                )
            return self._queue

    @property
    def table_service(self) -> Any:
        from azure.data.tables import TableServiceClient

        with self._lock:
            if self._table is None:
                self._table = TableServiceClient.from_connection_string(
                    self.account.connection_string(), **_client_kwargs()
                )
            return self._table

    def container(self, name: str) -> ContainerClient:
        with self._lock:
            client = self._containers.get(name)
        if client is None:
            client = self.blob_service.get_container_client(name)
            with self._lock:
                self._containers[name] = client
        return client

    def ensure_container(self, name: str) -> None:
        try:
            self.container(name).create_container()
        except ResourceExistsError:
            pass
        except Exception as exc:
            raise translate_error(exc, f"creating container {name!r}") from None

    def preflight(self) -> None:
        """One cheap authenticated call to each service; fails fast with a clear error."""
        checks = (
            ("blob service", lambda: next(iter(self.blob_service.list_containers(results_per_page=1)), None)),
            ("queue service", lambda: next(iter(self.queue_service.list_queues(results_per_page=1)), None)),
            ("table service", lambda: next(iter(self.table_service.list_tables(results_per_page=1)), None)),
        )
        for what, call in checks:
            try:
                call()
            except Exception as exc:
                raise translate_error(
                    exc, f"storage preflight ({what} of account {self.account.account_name!r})"
                ) from None

    # --- blobs -------------------------------------------------------------------------------------
    def list_blob_names(self, container: str, prefix: str = "") -> Iterator[str]:
        try:
            # Names only: list_blobs parses every blob's properties into objects, which took 2.3 s
            # for 10,000 blobs against 0.9 s here. Pages of 1,000 (not the service's 5,000) bound
            # the memory of a page being parsed.
            yield from self.container(container).list_blob_names(name_starts_with=prefix or None,
                                                                 results_per_page=1000)
        except ResourceNotFoundError:
            raise StorageError(f"container {container!r} does not exist") from None
        except Exception as exc:
            raise translate_error(exc, f"listing container {container!r}") from None

    def list_blob_identities(self, container: str, prefix: str = "") -> Iterator[tuple[str, bytes | None, str, int]]:
        """(name, content MD5 or None, ETag, size) of every blob under ``prefix``: what a change-aware
        re-run compares (:mod:`batchyard.storage.listing`; the SDK's listing if that cannot be used)."""
        client = self.container(container)
        try:
            if lean_listing_available(client):
                yield from list_identities(client, prefix)
                return
            for blob in client.list_blobs(name_starts_with=prefix or None, results_per_page=PAGE_SIZE):
                md5 = blob.content_settings.content_md5 if blob.content_settings else None
                yield blob.name, bytes(md5) if md5 else None, str(blob.etag or ""), int(blob.size or 0)
        except ResourceNotFoundError:
            raise StorageError(f"container {container!r} does not exist") from None
        except Exception as exc:
            raise translate_error(exc, f"listing container {container!r}") from None

    def upload_file(self, container: str, name: str, path: Path, *, overwrite: bool = True) -> int:
        size = path.stat().st_size
        with path.open("rb") as fh:
            self.container(container).upload_blob(
                name, fh, length=size, overwrite=overwrite, max_concurrency=4
            )
        return size

    def upload_bytes(self, container: str, name: str, data: bytes, *, overwrite: bool = True) -> None:
        self.container(container).upload_blob(name, data, length=len(data), overwrite=overwrite)

    def download_bytes(self, container: str, name: str) -> bytes:
        return self.container(container).download_blob(name, max_concurrency=1).readall()

    def blob_md5(self, container: str, name: str) -> bytes | None:
        try:
            props = self.container(container).get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            return None
        md5 = props.content_settings.content_md5
        return bytes(md5) if md5 else b""

    # --- SAS ---------------------------------------------------------------------------------------
    def blob_sas_url(self, container: str, name: str, *, expiry: timedelta, permission: str = "r") -> str:
        start = datetime.now(UTC) - timedelta(minutes=5)  # clock skew between us and the service
        token = generate_blob_sas(
            self.account.account_name, container, name,
            account_key=self.account.account_key,
            permission=BlobSasPermissions.from_string(permission),
            expiry=datetime.now(UTC) + expiry, start=start,
        )
        return f"{self.container(container).get_blob_client(name).url}?{token}"

    def container_sas_url(self, container: str, *, expiry: timedelta, permission: str = "cw") -> str:
        start = datetime.now(UTC) - timedelta(minutes=5)
        token = generate_container_sas(
            self.account.account_name, container,
            account_key=self.account.account_key,
            permission=ContainerSasPermissions.from_string(permission),
            expiry=datetime.now(UTC) + expiry, start=start,
        )
        return f"{self.container(container).url}?{token}"


def file_md5(path: Path) -> bytes:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.digest()
