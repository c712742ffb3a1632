"""The two accounts the azure backend talks to, checked before either is used.

The Batch account (``[azure] batch_url``, key or Microsoft Entra ID) and the storage account
(``AZURE_STORAGE_CONNECTION_STRING`` or ``[storage] connection_string``). Storage must be
configured: unlike the local backend, this one never starts a local Azurite, and it refuses
a storage account on loopback when Batch is not on loopback too. A pool's nodes would get
SAS URLs pointing at themselves: every task would fail to stage, after a pool was paid for.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
from typing import Any
from urllib.parse import urlsplit

from azure.batch import BatchClient

from batchyard.core.config import Config
from batchyard.core.errors import ConfigError
from batchyard.core.redact import register_secret
from batchyard.storage.account import Storage, StorageAccount


def is_loopback_url(url: str) -> bool:
    """Whether the URL's host is on loopback: 127.0.0.0/8, ::1 (also IPv4-mapped) or localhost."""
    host = (urlsplit(url if "//" in url else f"//{url}").hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always loopback
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _storage_setting(config: Config) -> str:
    return f"{config.storage.connection_string_env} or [storage] connection_string"


def storage_account(config: Config) -> StorageAccount:
    """The configured storage account, refused when the pool's nodes could not reach it."""
    conn = config.storage_connection_string
    if not conn:
        raise ConfigError(
            f"azure backend: no storage account configured; set {_storage_setting(config)}. The azure backend "
            "never starts a local Azurite (a pool's nodes could not reach it); to rehearse locally, run "
            "`batchyard emulator start --batch` and `eval \"$(batchyard emulator env)\"`")
    account = StorageAccount.from_connection_string(conn, source=_storage_setting(config))
    batch_url = config.azure.batch_url
    if batch_url and not is_loopback_url(batch_url):
        for endpoint in (account.blob_endpoint, account.queue_endpoint, account.table_endpoint):
            if is_loopback_url(endpoint):
                raise ConfigError(
                    f"azure backend: the storage endpoint {endpoint} ({_storage_setting(config)}) is on loopback, "
                    f"but the Batch account {batch_url} (BATCHYARD_BATCH_URL or [azure] batch_url) is not: its "
                    "nodes cannot reach this machine's loopback, so every task would fail on its SAS URLs. Use a "
                    "storage account the pool can reach, or the Batch emulator for a local run")
    return account


def make_storage(config: Config) -> Storage:
    return Storage(storage_account(config))


URL_SETTING = "BATCHYARD_BATCH_URL or [azure] batch_url"
ACCOUNT_SETTING = "BATCHYARD_BATCH_ACCOUNT or [azure] batch_account"
# Public Azure and the national clouds: the account name is the host's first label there.
BATCH_DOMAINS = (".batch.azure.com", ".batch.chinacloudapi.cn", ".batch.usgovcloudapi.net")


def check_batch_settings(config: Config) -> str:
    """The Batch URL without its trailing slash; a ConfigError naming the setting when a value cannot work.

    Each would otherwise fail later inside the SDK with a message that names nothing ("No connection
    adapters were found", "Incorrect padding"). The key is never part of a message.
    """
    azure = config.azure
    if not azure.batch_url:
        raise ConfigError(f"azure backend: no Batch account URL; set {URL_SETTING}")
    url = azure.batch_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"azure backend: the Batch account URL {url!r} ({URL_SETTING}) needs a scheme and a host: "
                          "https://<account>.<region>.batch.azure.com")
    if config.batch_key:
        key_setting = f"{config.azure.batch_key_env} or [azure] batch_key"
        try:
            if not base64.b64decode(config.batch_key, validate=True):
                raise ValueError
        except (binascii.Error, ValueError):
            raise ConfigError(f"azure backend: the Batch account key ({key_setting}) is not base64: copy "
                              "key1 or key2 from the account's Keys page (az batch account keys list)") from None
        if not azure.batch_account:
            raise ConfigError(f"azure backend: a Batch key needs the account name; set {ACCOUNT_SETTING}")
    host = parts.hostname.lower()
    if azure.batch_account and host.endswith(BATCH_DOMAINS):
        in_url = host.split(".", 1)[0]
        if in_url != azure.batch_account.lower():
            raise ConfigError(f"azure backend: the Batch account name {azure.batch_account!r} ({ACCOUNT_SETTING}) "
                              f"is not the account of the URL {url} ({in_url!r}); set the two to the same account")
    return url


class _FailsafeNoise(logging.Filter):
    """The SDK parses every error body "failsafe" and logs a WARNING with a traceback when there is
    none to parse: a HEAD or a 404 of a task's missing stderr.txt (a task cancelled before it ran)
    printed a JSONDecodeError traceback in `status`, `logs` and `report` though the error itself is
    handled. Kept at DEBUG, where `-vv` shows the SDK's requests."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and "failsafe deserialization" in str(record.msg):
            record.levelno, record.levelname, record.exc_info, record.exc_text = logging.DEBUG, "DEBUG", None, None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


for _name in ("azure.batch._utils.model_base", "azure.batch._serialization"):
    logging.getLogger(_name).addFilter(_FailsafeNoise())


def make_client(config: Config) -> BatchClient:
    """A BatchClient with a shared key when one is configured, else DefaultAzureCredential."""
    azure = config.azure
    url = check_batch_settings(config)
    if config.batch_key:
        from azure.core.credentials import AzureNamedKeyCredential

        register_secret(config.batch_key)
        credential: Any = AzureNamedKeyCredential(azure.batch_account, config.batch_key)
    else:
        if url.startswith("http://"):
            raise ConfigError(f"azure backend: {url} is plain http, where the SDK refuses token credentials; "
                              "set the Batch account key (BATCHYARD_BATCH_KEY) for an http endpoint")
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    # Few HTTP-level retries: our own loops (adding tasks, waiting) own the long retries.
    return BatchClient(url, credential, retry_total=3, retry_backoff_factor=0.5, retry_backoff_max=8,
                       connection_timeout=10, read_timeout=60)
