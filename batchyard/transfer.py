"""Moving a task's files between its working directory and Blob storage.

:class:`BlobTransfer` stages inputs and uploads outputs either by (container, blob name) on the
configured account or by a SAS URL, the way a Batch node does. Local workers, the Batch
emulator's nodes and real Batch nodes all go through it (via ``runner.py``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobClient, ContainerClient

from .errors import SourceMissingError, StorageError
from .fast_rest import BlobAddress, FirstPart, RestStatusError
from .redact import strip_sas
from .storage import (
    _BLOB_KWARGS,
    BLOCK_SIZE,
    Storage,
    _client_kwargs,
    fast_rest_client,
    file_md5,
    translate_error,
)

# Up to this size a blob goes in one request on urllib3 (fast_rest.py): ~0.2 ms of our CPU per
# request against ~0.9 ms through the SDK (round 5). A bigger download's first part goes that way
# too; through the SDK, a blob this small is in memory whole after the first response (round 4).
SMALL_BLOB = 1024 * 1024


class BlobTransfer:
    """Downloads and uploads for a task, by account reference or by SAS URL.

    Blobs up to SMALL_BLOB go in one request each on :mod:`batchyard.fast_rest` (a bigger
    download continues through the SDK after its first part); the rest, and every transfer when
    a proxy variable is set, through the SDK. Clients made from SAS URLs are cached per container
    URL (with its token), so a node staging many files from one container reuses one pool.
    """

    def __init__(self, storage: Storage | None) -> None:
        self.storage = storage
        self._url_containers: dict[str, ContainerClient] = {}
        self._lock = threading.Lock()
        self._small = storage.fast if storage is not None else fast_rest_client(None)

    def _container_for_url(self, container_url: str) -> ContainerClient:
        with self._lock:
            client = self._url_containers.get(container_url)
            if client is None:
                client = ContainerClient.from_container_url(container_url, **_BLOB_KWARGS, **_client_kwargs())
                self._url_containers[container_url] = client
            return client

    def _blob_from_url(self, blob_url: str) -> BlobClient:
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
        return self._container_for_url(container_url).get_blob_client(blob_name)

    def blob_client(self, *, container: str | None = None, name: str | None = None,
                    url: str | None = None) -> BlobClient:
        if url:
            return self._blob_from_url(url)
        if self.storage is None or container is None or name is None:
            raise StorageError("no storage account configured for a (container, blob) reference")
        return self.storage.container(container).get_blob_client(name)

    def _small_address(self, client: BlobClient, what: str, *, by_account: bool) -> BlobAddress | None:
        """Where the small-blob path sends a request for ``client``'s blob; None: use the SDK.

        The URL is the SDK client's own (its quoting, its reading of a container URL). A URL
        without a SAS goes through the SDK: only a SAS says it is Blob storage, whose answer to a
        ranged GET holds at most the range (a plain HTTP server may send a whole, large file).
        """
        if self._small is None:
            return None
        base, _, sas = client.url.partition("?")
        if by_account:
            return BlobAddress(base, what, signed=True)
        return BlobAddress(base, what, sas=sas) if "sig=" in sas else None

    def download(self, dest: Path, *, container: str | None = None, name: str | None = None,
                 url: str | None = None) -> int:
        """Download one blob to ``dest``; raises :class:`SourceMissingError` if it does not exist."""
        what = strip_sas(url) if url else f"{container}/{name}"
        client = self.blob_client(container=container, name=name, url=url)
        address = self._small_address(client, what, by_account=not url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            with tmp.open("wb") as fh:
                first = self._small.get_first(address, SMALL_BLOB) if self._small and address else None
                if first is None or first.size > len(first.data):
                    self._download_rest(fh, first, client)
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
        if container_url:
            what = f"{strip_sas(container_url)}/{blob_name}"
        elif self.storage is None or container is None:
            raise StorageError("no storage account configured for an output container")
        else:
            what = f"{container}/{blob_name}"
        from azure.storage.blob import ContentSettings

        size = src.stat().st_size
        try:
            parent = self._container_for_url(container_url) if container_url else self.storage.container(container)
            client = parent.get_blob_client(blob_name)
            address = self._small_address(client, what, by_account=not container_url)
            if self._small is not None and address is not None and size <= SMALL_BLOB:
                data = src.read_bytes()
                self._small.put_blob(address, data)
                return len(data)
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
            return [b.name for b in self._container_for_url(container_url).list_blobs(
                name_starts_with=prefix or None)]
        except Exception as exc:
            raise translate_error(exc, f"listing {strip_sas(container_url)}") from None
