"""BlobTransfer.upload against a real Azurite: every blob carries its whole file's Content-MD5,
whether it went up in one request or in blocks, by account reference or by container SAS URL."""

from __future__ import annotations

import hashlib
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobClient

from batchyard.errors import AuthenticationError, StorageError
from batchyard.storage import BLOCK_SIZE, BlobTransfer


def _file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def _upload(project: Any, src: Path, name: str, *, by_sas: bool) -> tuple[int, BlobClient]:
    out = project.container("outputs")
    if by_sas:
        url = project.storage.container_sas_url(out, expiry=timedelta(minutes=10), permission="rcw")
        size = BlobTransfer(None).upload(src, blob_name=name, container_url=url)
    else:
        size = BlobTransfer(project.storage).upload(src, blob_name=name, container=out)
    return size, project.storage.container(out).get_blob_client(name)


def _check(blob: BlobClient, src: Path) -> None:
    data = src.read_bytes()
    assert blob.download_blob().readall() == data
    assert bytes(blob.get_blob_properties().content_settings.content_md5) == hashlib.md5(data).digest()


@pytest.mark.parametrize("by_sas", [False, True], ids=["account", "sas"])
def test_multi_block_upload_has_the_whole_file_md5(project: Any, tmp_path: Path, by_sas: bool) -> None:
    size = BLOCK_SIZE + 12345
    src = _file(tmp_path / "big.bin", size)
    uploaded, blob = _upload(project, src, "d/big.bin", by_sas=by_sas)
    assert uploaded == size
    _check(blob, src)
    # BLOCK_SIZE blocks by SAS URL too (the SDK's default is 64 MiB single puts, 4 MiB blocks).
    assert [b.size for b in blob.get_block_list("committed")[0]] == [BLOCK_SIZE, 12345]


@pytest.mark.parametrize("by_sas", [False, True], ids=["account", "sas"])
@pytest.mark.parametrize("size", [0, 1000, BLOCK_SIZE])
def test_small_upload_is_one_request_with_the_md5(project: Any, tmp_path: Path, size: int, by_sas: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def not_one_request(*args: object, **kwargs: object) -> None:
        raise AssertionError("a file of at most one block took more than one request")

    monkeypatch.setattr(BlobClient, "set_http_headers", not_one_request)
    src = _file(tmp_path / "small.bin", size)
    uploaded, blob = _upload(project, src, "small.bin", by_sas=by_sas)
    assert uploaded == size
    _check(blob, src)
    assert blob.get_block_list("committed")[0] == []  # a single Put Blob, no blocks staged


def test_upload_errors_name_the_target_without_the_sas(project: Any, tmp_path: Path) -> None:
    src = _file(tmp_path / "big.bin", BLOCK_SIZE + 1)
    with pytest.raises(StorageError, match=re.escape("uploading no-such-container/x.bin: ContainerNotFound")):
        BlobTransfer(project.storage).upload(src, blob_name="x.bin", container="no-such-container")
    url = project.storage.container_sas_url(project.container("outputs"), expiry=timedelta(minutes=10),
                                            permission="r")  # no write permission: HTTP 403
    with pytest.raises(AuthenticationError) as info:
        BlobTransfer(None).upload(src, blob_name="x.bin", container_url=url)
    assert "/x.bin" in str(info.value)
    assert "sig=" not in str(info.value)
