"""Moving a task's files between its working directory and Blob storage.

:class:`BlobTransfer` stages inputs and uploads outputs either by (container, blob name) on the
configured account or by a SAS URL, the way a Batch node does. Local workers, the Batch
emulator's nodes and real Batch nodes all go through it (via ``runner.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobClient, ContainerClient

from batchyard.core.errors import SourceMissingError, StorageError
from batchyard.core.redact import strip_sas
from batchyard.storage.account import (
    _BLOB_KWARGS,
    BLOCK_SIZE,
    FAST_POOL_SIZE,
    Storage,
    _client_kwargs,
    fast_rest_client,
    file_md5,
    translate_error,
)
from batchyard.storage.fast_path import FastPath
from batchyard.storage.fast_rest import BlobAddress, FirstPart, RestStatusError

# Up to this size a blob goes in one request on urllib3 (fast_rest.py): ~0.2 ms of our CPU per
# request against ~0.9 ms through the SDK (round 5). A bigger download's first part goes that way
# too; through the SDK, a blob this small is in memory whole after the first response (round 4).
SMALL_BLOB = 1024 * 1024

BlobRef = tuple[str | None, str | None, str | None]  # (container, blob name) on the account, or a URL
_Put = tuple[str, str | None, str | None, str]  # blob name, container or container URL, the file's path
# A burst's requests each take a connection of the pool, and what they carry is in memory at
# once: at most this many in one burst, and uploads in bursts of at most BURST_BYTES.
BURST_REQUESTS = FAST_POOL_SIZE
BURST_BYTES = 8 * 1024 * 1024


class BlobTransfer:
    """Downloads and uploads for a task, by account reference or by SAS URL.

    Blobs up to SMALL_BLOB go in one request each on :mod:`batchyard.storage.fast_rest` (a bigger
    download continues through the SDK after its first part) where :class:`FastPath` allows it
    (the storage's, or for SAS URLs without storage one read from ``BATCHYARD_FAST_PATH``): to
    loopback endpoints, unless turned off or a proxy variable is set. The rest go through the SDK.
    Clients made from SAS URLs are cached per container URL (with its token), so a node staging
    many files from one container reuses one pool.
    """

    def __init__(self, storage: Storage | None, *, fast_path: str | None = None) -> None:
        """``fast_path``: the mode for SAS URLs without ``storage`` (None: ``BATCHYARD_FAST_PATH``);
        with ``storage``, its own :class:`FastPath` decides."""
        self.storage = storage
        self._url_containers: dict[str, ContainerClient] = {}
        self._lock = threading.Lock()
        self._fast = storage.fast_path if storage is not None else FastPath(partial(fast_rest_client, None), fast_path)
        self._firsts: dict[BlobRef, FirstPart] = {}  # see prefetched()
        self._stored: dict[_Put, tuple[int, int]] = {}  # (size, mtime) of files put by uploaded_ahead()

    def _container_for_url(self, container_url: str) -> ContainerClient:
        with self._lock:
            client = self._url_containers.get(container_url)
            if client is None:
                client = ContainerClient.from_container_url(container_url, **_BLOB_KWARGS, **_client_kwargs())
                self._url_containers[container_url] = client
            return client

    def _split_blob_url(self, blob_url: str) -> tuple[ContainerClient, str]:
        # Split the URL into container URL (+ its SAS query) and blob name, so the container
        # client, and its connections, are shared by every blob of that container.
        base, _, query = blob_url.partition("?")
        parts = urlsplit(base)
        path_bits = parts.path.lstrip("/").split("/")
        # path style (Azurite/emulators: /account/container/blob) or host style (/container/blob)
        is_path_style = parts.hostname in ("127.0.0.1", "localhost", "::1") or (
            self.storage is not None and base.startswith(self.storage.account.blob_endpoint)
            and urlsplit(self.storage.account.blob_endpoint).path not in ("", "/")
        )
        n_prefix = 2 if is_path_style else 1
        container_url = f"{parts.scheme}://{parts.netloc}/" + "/".join(path_bits[:n_prefix])
        blob_name = unquote("/".join(path_bits[n_prefix:]))
        if query:
            container_url = f"{container_url}?{query}"
        return self._container_for_url(container_url), blob_name

    def _locate(self, container: str | None, name: str | None, url: str | None,
                container_url: str | None = None) -> tuple[ContainerClient, str, str]:
        """A blob by account, blob URL or container URL: (the SDK client of its container, its name
        there, its name for messages). No blob client is made: a transfer needs one only when it
        goes through the SDK, and making one costs more than a small blob's whole request."""
        if container_url:
            return self._container_for_url(container_url), name or "", f"{strip_sas(container_url)}/{name}"
        if url:
            client, blob_name = self._split_blob_url(url)
            return client, blob_name, strip_sas(url)
        if self.storage is None or container is None or name is None:
            raise StorageError("no storage account configured for a (container, blob) reference")
        return self.storage.container(container), name, f"{container}/{name}"

    @staticmethod
    def blob_url(client: ContainerClient, name: str) -> str:
        """The URL of blob ``name`` in ``client``'s container, as the SDK's own blob client forms
        it (its quoting, the container URL's SAS query after it)."""
        base, mark, query = client.url.partition("?")
        return f"{base}/{quote(name, safe='~/')}{mark}{query}"

    def blob_client(self, *, container: str | None = None, name: str | None = None,
                    url: str | None = None) -> BlobClient:
        client, blob_name, _ = self._locate(container, name, url)
        return client.get_blob_client(blob_name)

    def _small_address(self, blob_url: str, what: str, *, by_account: bool) -> BlobAddress | None:
        """Where the small-blob path sends a request for the blob at ``blob_url``; None: use the SDK.

        A URL without a SAS goes through the SDK: only a SAS says it is Blob storage, whose answer
        to a ranged GET holds at most the range (a plain HTTP server may send a whole, large file).
        """
        base, _, sas = blob_url.partition("?")
        if not self._fast.allows(base):
            return None
        if by_account:
            return BlobAddress(base, what, signed=True)
        return BlobAddress(base, what, sas=sas) if "sig=" in sas else None

    @contextmanager
    def prefetched(self, refs: list[BlobRef]) -> Iterator[None]:
        """Within it, :meth:`download` of one of ``refs`` (container, name, url) starts from its
        first part got on entry, every one in a single burst (:meth:`FastRest.get_first_many`).
        One not got then is downloaded as usual; what was not used is dropped on exit."""
        got: dict[BlobRef, FirstPart] = {}
        wanted: list[tuple[BlobRef, BlobAddress]] = []
        for ref in dict.fromkeys(refs):
            with contextlib.suppress(StorageError):  # (one that cannot be addressed fails alone, in staging)
                address = self._address_of(*ref)
                if address is not None:
                    wanted.append((ref, address))
        wanted = wanted[:BURST_REQUESTS]
        if len(wanted) > 1:
            parts = self._fast.client.get_first_many([address for _, address in wanted], SMALL_BLOB)
            got = {ref: first for (ref, _), first in zip(wanted, parts, strict=True) if first is not None}
        with self._lent(self._firsts, got):
            yield

    @contextmanager
    def uploaded_ahead(self, files: list[tuple[Path, str, str | None, str | None]]) -> Iterator[None]:
        """Within it, :meth:`upload` of one of ``files`` (path, blob name, container, container URL)
        unchanged since entry is already done: the small ones were put on entry, in one burst
        (:meth:`FastRest.put_blob_many`). One not stored then is uploaded as usual."""
        wanted: list[tuple[_Put, tuple[int, int], BlobAddress, Path]] = []
        for src, blob_name, container, container_url in files:
            with contextlib.suppress(OSError, StorageError):
                stat = src.stat()
                address = self._address_of(container, blob_name, None, container_url=container_url)
                if address is not None and stat.st_size <= SMALL_BLOB:
                    key = (blob_name, container, container_url, str(src))
                    wanted.append((key, (stat.st_size, stat.st_mtime_ns), address, src))
        stored: dict[_Put, tuple[int, int]] = {}
        while len(wanted) > 1:
            burst, size = [], 0
            while wanted and len(burst) < BURST_REQUESTS and size + wanted[0][1][0] <= BURST_BYTES:
                size += wanted[0][1][0]
                burst.append(wanted.pop(0))
            with contextlib.suppress(OSError):  # (one unreadable now is uploaded alone, and fails there)
                items = [(address, src.read_bytes()) for _, _, address, src in burst]
                done = self._fast.client.put_blob_many(items)
                stored.update({key: seen for (key, seen, _, _), ok in zip(burst, done, strict=True) if ok})
        with self._lent(self._stored, stored):
            yield

    @contextmanager
    def _lent(self, table: dict[Any, Any], entries: dict[Any, Any]) -> Iterator[None]:
        """``entries`` in ``table`` (where download / upload take them) for the time of the block."""
        with self._lock:
            table.update(entries)
        try:
            yield
        finally:
            with self._lock:
                for key in entries:
                    table.pop(key, None)

    def _address_of(self, container: str | None, name: str | None, url: str | None, *,
                    container_url: str | None = None) -> BlobAddress | None:
        client, blob_name, what = self._locate(container, name, url, container_url)
        return self._small_address(self.blob_url(client, blob_name), what, by_account=not (url or container_url))

    def download(self, dest: Path, *, container: str | None = None, name: str | None = None,
                 url: str | None = None) -> int:
        """Download one blob to ``dest``; raises :class:`SourceMissingError` if it does not exist."""
        client, blob_name, what = self._locate(container, name, url)
        with self._lock:
            first = self._firsts.pop((container, name, url), None)
        address = None if first is not None else self._small_address(self.blob_url(client, blob_name), what,
                                                                     by_account=not url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Unique: two downloads may fill one resource cache entry at once (two task slots of an
        # emulated node, two worker processes); each writes its own file and the last rename wins.
        tmp = dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:12]}.part")
        try:
            with tmp.open("wb") as fh:
                if first is None and address is not None:
                    first = self._fast.client.get_first(address, SMALL_BLOB)
                if first is None or first.size > len(first.data):
                    self._download_rest(fh, first, client.get_blob_client(blob_name))
                else:
                    fh.write(first.data)
                size = fh.tell()
            os.replace(tmp, dest)
            return size
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, ResourceNotFoundError) or (isinstance(exc, RestStatusError) and exc.status == 404):
                raise SourceMissingError(f"input blob not found: {what}") from None
            raise translate_error(exc, f"downloading {what}") from None

    @staticmethod
    def _download_rest(fh: Any, first: FirstPart | None, client: BlobClient) -> None:
        """Through the SDK: the blob after its ``first`` part (same version), or all of it."""
        if first is not None and first.etag:  # (a service always sends one; without it, read all)
            fh.write(first.data)
            try:
                stream = client.download_blob(offset=len(first.data), max_concurrency=4, etag=first.etag,
                                              match_condition=MatchConditions.IfNotModified)
                stream.readinto(fh)
                return
            except ResourceModifiedError:  # replaced between the two requests: read it again, whole
                fh.seek(0)
                fh.truncate()
        stream = client.download_blob(max_concurrency=4)
        # A small blob is already in memory, whole, from the first response.
        fh.write(stream.readall()) if stream.size <= SMALL_BLOB else stream.readinto(fh)

    def upload(self, src: Path, *, blob_name: str, container: str | None = None,
               container_url: str | None = None) -> int:
        """Upload a file in blocks, with its MD5 set on the blob so readers can verify it."""
        if not container_url and (self.storage is None or container is None):
            raise StorageError("no storage account configured for an output container")
        what = f"{strip_sas(container_url)}/{blob_name}" if container_url else f"{container}/{blob_name}"
        from azure.storage.blob import ContentSettings

        stat = src.stat()
        size = stat.st_size
        with self._lock:
            seen = self._stored.pop((blob_name, container, container_url, str(src)), None)
        if seen == (size, stat.st_mtime_ns):  # put in a burst a moment ago, as it is now
            return size
        try:
            container_client, name, _ = self._locate(container, blob_name, None, container_url)
            address = self._small_address(self.blob_url(container_client, name), what, by_account=not container_url)
            if address is not None and size <= SMALL_BLOB:
                data = src.read_bytes()
                self._fast.client.put_blob(address, data)
                return len(data)
            client = container_client.get_blob_client(name)
            if size <= BLOCK_SIZE:  # one request, the file read once: the MD5 travels with it
                data = src.read_bytes()
                md5 = hashlib.md5(data, usedforsecurity=False).digest()
                client.upload_blob(data, length=len(data), overwrite=True,
                                   content_settings=ContentSettings(content_md5=bytearray(md5)))
                return len(data)
            # Big files: hash in a second thread while the blocks go up (reading the file twice
            # costs less than hashing first and uploading after), then set the header. Staging the
            # blocks ourselves, hashing each as it was read, measured ~8% slower against Azurite
            # than the SDK's streamed upload, and no faster in big.py.
            with ThreadPoolExecutor(1) as hasher:
                digest = hasher.submit(file_md5, src)
                with src.open("rb") as fh:
                    client.upload_blob(fh, length=size, overwrite=True, max_concurrency=4)
                client.set_http_headers(ContentSettings(content_md5=bytearray(digest.result())))
            return size
        except Exception as exc:
            raise translate_error(exc, f"uploading {what}") from None

    def list_names(self, container_url: str, prefix: str = "") -> list[str]:
        try:
            # Names only: list_blobs would build every blob's properties (~14 times the CPU).
            return list(self._container_for_url(container_url).list_blob_names(name_starts_with=prefix or None))
        except Exception as exc:
            raise translate_error(exc, f"listing {strip_sas(container_url)}") from None
