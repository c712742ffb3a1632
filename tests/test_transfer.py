"""BlobTransfer against a real Azurite: every blob carries its whole file's Content-MD5, whether it
went up in one request or in blocks, by account reference or by container SAS URL; small blobs go
in one request each and land as the SDK would store them; downloads of every size are whole."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import socket
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from azure.storage.blob import BlobClient, ContentSettings
from urllib3.connection import HTTPConnection

from batchyard.core.errors import AuthenticationError, SourceMissingError, StorageError
from batchyard.storage.account import BLOCK_SIZE, Storage
from batchyard.storage.fast_rest import FastRest
from batchyard.storage.transfer import SMALL_BLOB, BlobTransfer

_REAL_REQUEST = HTTPConnection.request


def _file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def _upload(project: Any, src: Path, name: str, *, by_sas: bool) -> tuple[int, BlobClient]:
    out = project.container("outputs")
    transfer, ref = _transfer(project, out, by_sas=by_sas)
    return transfer.upload(src, blob_name=name, **ref), project.storage.container(out).get_blob_client(name)


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


# --- the one-request path for small blobs (fast_rest.py) -------------------------------------------
# Blobs up to SMALL_BLOB go up and down in one urllib3 request each, signed with the account key or
# by the SAS in a URL; a bigger download continues through the SDK. These tests hold it to the SDK's
# results on the same Azurite.

NAMES = ["plain.txt", "with space/and more.txt", "ünïcødé/日本語.txt", "plus+eq=amp&semi;comma,.txt",
         "pct%41%2F.txt", "hash#and?query.txt", "tilde~star*paren()'quote.txt", "a/b/c/deep.txt"]


def _transfer(project: Any, container: str, *, by_sas: bool) -> tuple[BlobTransfer, dict[str, str]]:
    """A transfer and the reference kwargs for `container`: by account, or by a container SAS URL."""
    if by_sas:
        url = project.storage.container_sas_url(container, expiry=timedelta(minutes=10), permission="rcw")
        return BlobTransfer(None), {"container_url": url}
    return BlobTransfer(project.storage), {"container": container}


def _download(transfer: BlobTransfer, ref: dict[str, str], name: str, dest: Path) -> int:
    if "container_url" in ref:
        base, _, sas = ref["container_url"].partition("?")
        return transfer.download(dest, url=f"{base}/{quote(name, safe='/')}?{sas}")
    return transfer.download(dest, container=ref["container"], name=name)


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:10000/devstoreaccount1", "https://acct.blob.core.windows.net"])
@pytest.mark.parametrize("sas", ["", "?sv=2025-01-05&sp=rcw&sig=a%2Bb%3D"], ids=["account", "sas"])
def test_a_blob_url_is_the_one_the_sdk_forms(endpoint: str, sas: str) -> None:
    # The small-blob path addresses a blob without making the SDK's blob client (which costs more
    # than the request): the URL must be that client's own, quoting and SAS query included.
    from azure.storage.blob import ContainerClient

    container = ContainerClient.from_container_url(f"{endpoint}/c-1{sas}")
    for name in [*NAMES, "trailing/", "dots/../x.txt", "semi;colon~.txt"]:
        want = container.get_blob_client(name).url
        assert BlobTransfer.blob_url(container, name) == want, name
        # A blob's own URL (how a Batch task's resource file arrives) names the same blob.
        client, blob_name, what = BlobTransfer(None)._locate(None, None, want)
        assert BlobTransfer.blob_url(client, blob_name) == want and "sig=" not in what, name


@pytest.mark.fast_path
@pytest.mark.parametrize("by_sas", [False, True], ids=["account", "sas"])
def test_small_blobs_go_in_one_request_each_with_what_the_sdk_stores(
        project: Any, tmp_path: Path, by_sas: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    out = project.container("outputs")
    sdk_made = project.storage.container(out).get_blob_client("by-sdk.bin")
    src = _file(tmp_path / "src.bin", 3000)
    sdk_made.upload_blob(src.read_bytes(), content_settings=ContentSettings(
        content_md5=bytearray(hashlib.md5(src.read_bytes()).digest())))

    def through_the_sdk(*args: object, **kwargs: object) -> None:
        raise AssertionError("a small blob went through the SDK")

    monkeypatch.setattr(BlobClient, "upload_blob", through_the_sdk)
    monkeypatch.setattr(BlobClient, "download_blob", through_the_sdk)
    transfer, ref = _transfer(project, out, by_sas=by_sas)
    for name in NAMES:
        assert transfer.upload(src, blob_name=name, **ref) == 3000
        assert _download(transfer, ref, name, tmp_path / "got") == 3000
        assert (tmp_path / "got").read_bytes() == src.read_bytes()
    monkeypatch.undo()
    assert sorted(project.storage.list_blob_names(out, "")) == sorted([*NAMES, "by-sdk.bin"])
    want = sdk_made.get_blob_properties()
    for name in NAMES:
        got = project.storage.container(out).get_blob_client(name).get_blob_properties()
        assert (got.size, got.blob_type, got.content_settings.content_type, got.content_settings.content_md5) == (
            want.size, want.blob_type, want.content_settings.content_type, want.content_settings.content_md5)


@pytest.mark.parametrize("by_sas", [False, True], ids=["account", "sas"])
@pytest.mark.parametrize("size", [0, 1, SMALL_BLOB - 1, SMALL_BLOB, SMALL_BLOB + 1, 3 * SMALL_BLOB + 7])
def test_downloads_of_every_size_are_whole(project: Any, tmp_path: Path, size: int, by_sas: bool) -> None:
    out = project.container("outputs")
    src = _file(tmp_path / "src.bin", size)
    project.storage.container(out).get_blob_client("blob.bin").upload_blob(src.read_bytes())
    transfer, ref = _transfer(project, out, by_sas=by_sas)
    assert _download(transfer, ref, "blob.bin", tmp_path / "got") == size
    assert (tmp_path / "got").read_bytes() == src.read_bytes()
    assert not list(tmp_path.glob("got*.part"))


@pytest.mark.fast_path
def test_a_blob_replaced_between_its_first_part_and_the_rest_is_read_again_whole(project: Any, tmp_path: Path) -> None:
    out = project.container("outputs")
    blob = project.storage.container(out).get_blob_client("moving.bin")
    old, new = os.urandom(2 * SMALL_BLOB), os.urandom(2 * SMALL_BLOB + 5)
    blob.upload_blob(old)
    transfer = BlobTransfer(project.storage)
    small, address = transfer._fast.client, transfer._small_address(blob.url, "moving.bin", by_account=True)
    assert address is not None
    first = small.get_first(address, SMALL_BLOB)
    assert (first.size, first.data) == (len(old), old[:SMALL_BLOB])
    blob.upload_blob(new, overwrite=True)  # a new version before the rest is read
    with (tmp_path / "got").open("w+b") as fh:
        transfer._download_rest(fh, first, blob)
    assert (tmp_path / "got").read_bytes() == new  # not old's first MiB glued to new's tail


def test_small_blob_errors_name_the_blob_and_hold_no_secret(project: Any, tmp_path: Path) -> None:
    out = project.container("outputs")
    src = _file(tmp_path / "src.bin", 10)
    transfer = BlobTransfer(project.storage)
    with pytest.raises(SourceMissingError, match=re.escape(f"input blob not found: {out}/nope.txt")):
        transfer.download(tmp_path / "x", container=out, name="nope.txt")
    with pytest.raises(StorageError, match=re.escape("uploading no-such-container/x.bin: ContainerNotFound")):
        transfer.upload(src, blob_name="x.bin", container="no-such-container")
    wrong_key = base64.b64encode(b"not the key" * 4).decode()
    wrong = BlobTransfer(Storage(dataclasses.replace(project.storage.account, account_key=wrong_key)))
    for call in (lambda: wrong.upload(src, blob_name="x.bin", container=out),
                 lambda: wrong.download(tmp_path / "x", container=out, name="x.bin")):
        with pytest.raises(AuthenticationError) as info:
            call()
        assert f"{out}/x.bin" in str(info.value) and wrong_key not in str(info.value)
    read_only = project.storage.container_sas_url(out, expiry=timedelta(minutes=10), permission="r")
    with pytest.raises(AuthenticationError) as refused:
        BlobTransfer(None).upload(src, blob_name="x.bin", container_url=read_only)
    missing_url = f"{read_only.partition('?')[0]}/nope.txt?{read_only.partition('?')[2]}"
    with pytest.raises(SourceMissingError) as missing:
        BlobTransfer(None).download(tmp_path / "x", url=missing_url)
    for exc in (refused.value, missing.value):
        assert "sig=" not in str(exc) and read_only.partition("?")[0] in str(exc)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob("x*.part"))


class FlakyProxy:
    """A TCP relay to Azurite's blob port that spoils its first connections: one is closed with
    the request unanswered, the next answered 503 ServerBusy; the rest are relayed."""

    SPOILED = ("close", "503")

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.accepted = target, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            spoil = self.SPOILED[self.accepted - 1] if self.accepted <= len(self.SPOILED) else None
            threading.Thread(target=self._handle, args=(conn, spoil), daemon=True).start()

    def _handle(self, conn: socket.socket, spoil: str | None) -> None:
        with conn:
            if spoil is not None:
                conn.recv(65536)
                if spoil == "503":
                    conn.sendall(b"HTTP/1.1 503 Server Busy\r\nx-ms-error-code: ServerBusy\r\n"
                                 b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                return
            with socket.create_connection(self.target) as upstream:
                def pump(src: socket.socket, dst: socket.socket) -> None:
                    with contextlib.suppress(OSError):
                        while data := src.recv(65536):
                            dst.sendall(data)
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
                back.start()
                pump(conn, upstream)
                back.join(timeout=10)

    def close(self) -> None:
        self.listener.close()


# The fast path's own retries (urllib3's, 0.5 s back-off). Through the storage SDK the same two
# failures are retried too, after its ExponentialRetry's 15 s and 18 s: too slow for this test.
@pytest.mark.fast_path
@pytest.mark.timeout(180)  # a hang guard (retries never end): generous under load
def test_small_blobs_are_retried_through_a_dropped_connection_and_a_busy_server(project: Any, tmp_path: Path) -> None:
    endpoint = urlsplit(project.storage.account.blob_endpoint)
    out = project.container("outputs")
    src = _file(tmp_path / "src.bin", 2048)
    for direction in ("upload", "download"):
        proxy = FlakyProxy((endpoint.hostname or "", endpoint.port or 0))
        try:
            via = dataclasses.replace(project.storage.account,
                                      blob_endpoint=f"http://127.0.0.1:{proxy.port}{endpoint.path}")
            transfer = BlobTransfer(Storage(via))
            if direction == "upload":
                assert transfer.upload(src, blob_name="retried.bin", container=out) == 2048
            else:
                assert transfer.download(tmp_path / "got", container=out, name="retried.bin") == 2048
                assert (tmp_path / "got").read_bytes() == src.read_bytes()
            assert proxy.accepted == 3, direction  # two spoiled attempts, then the one relayed
        finally:
            proxy.close()
    blob = project.storage.container(out).get_blob_client("retried.bin")
    assert blob.download_blob().readall() == src.read_bytes()


def test_with_a_proxy_variable_set_every_transfer_goes_through_the_sdk(
        project: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # requests honours proxy variables (and no_proxy); urllib3 on its own would not.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    def one_request(*args: object, **kwargs: object) -> None:
        raise AssertionError("the one-request path ignored a proxy variable")

    monkeypatch.setattr(FastRest, "put_blob", one_request)
    monkeypatch.setattr(FastRest, "get_first", one_request)
    out = project.container("outputs")
    src = _file(tmp_path / "src.bin", 100)
    transfer = BlobTransfer(Storage(project.storage.account))  # the variables are read when a Storage first needs them
    assert transfer.upload(src, blob_name="p.bin", container=out) == 100
    assert transfer.download(tmp_path / "got", container=out, name="p.bin") == 100
    assert (tmp_path / "got").read_bytes() == src.read_bytes()


def test_request_logs_of_small_blobs_show_no_signature(project: Any, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    out = project.container("outputs")
    transfer, ref = _transfer(project, out, by_sas=True)
    src = _file(tmp_path / "src.bin", 100)
    with caplog.at_level(logging.DEBUG, logger="urllib3"):
        transfer.upload(src, blob_name="logged.bin", **ref)
        _download(transfer, ref, "logged.bin", tmp_path / "got")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any("logged.bin" in line for line in lines)  # the request lines were logged...
    assert not any("sig=" in line and "sig=***" not in line for line in lines)  # ...without a signature


# --- transfers in bursts (BlobTransfer.prefetched / uploaded_ahead) ----------------------------------
# A burst sends several small-blob requests at once on as many connections, for less CPU in
# Azurite and here (docs/performance.md, round 6). It must change nothing a lone transfer
# promises: the bytes and MD5 stored, a missing blob reported, retries after a failure, no secret
# in any error; and a blob is sent once, not once in the burst and again alone.

def _lone_calls(monkeypatch: pytest.MonkeyPatch, container: str) -> list[str]:
    """Record which blobs of ``container`` go through the one-request-each calls (not a burst).
    (The patch holds for every thread of this process: another test's leftover thread is not counted.)"""
    seen: list[str] = []
    for name in ("get_first", "put_blob"):
        real = getattr(FastRest, name)

        def counting(self: FastRest, address: Any, *args: Any, _real: Any = real, _name: str = name) -> Any:
            if f"/{container}/" in address.url:
                seen.append(f"{_name} {address.what.rsplit('/', 1)[-1]}")
            return _real(self, address, *args)

        monkeypatch.setattr(FastRest, name, counting)
    return seen


def _refs(ref: dict[str, str], names: list[str]) -> list[tuple[str | None, str | None, str | None]]:
    if "container_url" in ref:
        base, _, sas = ref["container_url"].partition("?")
        return [(None, None, f"{base}/{name}?{sas}") for name in names]
    return [(ref["container"], name, None) for name in names]


@pytest.mark.fast_path
@pytest.mark.parametrize("by_sas", [False, True], ids=["account", "sas"])
def test_a_burst_sends_each_blob_once_and_stores_what_a_lone_transfer_does(
        project: Any, tmp_path: Path, by_sas: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    box = project.container("outputs")
    sizes = {"empty": 0, "one": 1, "small": 3000, "big": SMALL_BLOB + 5}
    for name, size in sizes.items():
        project.storage.upload_bytes(box, name, _file(tmp_path / f"{name}.src", size).read_bytes())
    transfer, ref = _transfer(project, box, by_sas=by_sas)
    lone = _lone_calls(monkeypatch, box)
    refs = _refs(ref, [*sizes, "missing"])
    with transfer.prefetched(refs):
        for (container, name, url), want in zip(refs, sizes, strict=False):
            got = tmp_path / f"{want}.got"
            assert transfer.download(got, container=container, name=name, url=url) == sizes[want]
            assert got.read_bytes() == (tmp_path / f"{want}.src").read_bytes()
        with pytest.raises(SourceMissingError):
            transfer.download(tmp_path / "nope", container=refs[-1][0], name=refs[-1][1], url=refs[-1][2])
    # The empty blob's ranged GET is refused (416) and the missing one is 404: those two, and
    # only those, are asked again alone (which reads the empty one whole and raises for the other).
    assert sorted(lone) == ["get_first empty", "get_first missing"]

    lone.clear()
    files = [(tmp_path / f"{name}.src", f"up/{name}", ref.get("container"), ref.get("container_url"))
             for name in sizes]
    with transfer.uploaded_ahead(files):
        (tmp_path / "one.src").write_bytes(b"changed after the burst")  # so it is uploaded again
        for src, blob_name, container, container_url in files:
            assert transfer.upload(src, blob_name=blob_name, container=container,
                                   container_url=container_url) == src.stat().st_size
    assert lone == ["put_blob one"], lone  # the big one goes in blocks through the SDK, as alone
    monkeypatch.undo()
    for name in sizes:
        blob = project.storage.container(box).get_blob_client(f"up/{name}")
        data = (tmp_path / f"{name}.src").read_bytes()
        assert blob.download_blob().readall() == data
        assert bytes(blob.get_blob_properties().content_settings.content_md5 or b"") == hashlib.md5(data).digest()


@pytest.mark.fast_path
@pytest.mark.timeout(180)  # a hang guard (retries never end): generous under load
def test_burst_requests_that_fail_are_sent_again_alone_with_retries(project: Any, tmp_path: Path) -> None:
    endpoint = urlsplit(project.storage.account.blob_endpoint)
    box = project.container("outputs")
    names = ["a", "b", "c"]
    for name in names:
        project.storage.upload_bytes(box, name, name.encode() * 100)
    proxy = FlakyProxy((endpoint.hostname or "", endpoint.port or 0))
    try:
        via = dataclasses.replace(project.storage.account, blob_endpoint=f"http://127.0.0.1:{proxy.port}{endpoint.path}")
        transfer = BlobTransfer(Storage(via))
        with transfer.prefetched([(box, name, None) for name in names]):  # 1st connection closed, 2nd 503
            for name in names:
                assert transfer.download(tmp_path / name, container=box, name=name) == 100
                assert (tmp_path / name).read_bytes() == name.encode() * 100
        # The burst's three connections (the first two spoiled), then the one the two spoiled
        # requests went again on, alone, from the lone requests' pool.
        assert proxy.accepted == 4
    finally:
        proxy.close()


def test_a_refused_burst_upload_fails_alone_with_no_secret(project: Any, tmp_path: Path) -> None:
    box = project.container("outputs")
    read_only = project.storage.container_sas_url(box, expiry=timedelta(minutes=5), permission="r")
    files = [(_file(tmp_path / f"f{i}", 100), f"f{i}", None, read_only) for i in range(3)]
    transfer = BlobTransfer(None)
    # Refused (403) in the burst: no error there, nothing stored; the upload alone then fails.
    with transfer.uploaded_ahead(files), pytest.raises((StorageError, AuthenticationError)) as refused:
        transfer.upload(files[0][0], blob_name="f0", container_url=read_only)
    assert "sig=" not in str(refused.value) and read_only.partition("?")[0] in str(refused.value)
    assert list(project.storage.list_blob_names(box, "")) == []


@pytest.mark.fast_path
def test_a_burst_whose_connections_fail_leaves_every_transfer_to_go_alone(
        project: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = project.container("outputs")
    for name in ("a", "b"):
        project.storage.upload_bytes(box, name, name.encode() * 10)
    burst_calls: list[str] = []

    def unusable(conn: HTTPConnection, method: str, url: str, *args: object, **kwargs: object) -> None:
        if f"/{box}/" not in url:  # another thread of this process (a test before this one) is not the burst
            return _REAL_REQUEST(conn, method, url, *args, **kwargs)
        burst_calls.append(url)
        raise OSError("connection refused")  # every connection a burst would send on fails

    transfer = BlobTransfer(project.storage)
    lone = _lone_calls(monkeypatch, box)
    monkeypatch.setattr(HTTPConnection, "request", unusable)
    with transfer.prefetched([(box, "a", None), (box, "b", None)]):
        monkeypatch.setattr(HTTPConnection, "request", _REAL_REQUEST)  # the lone requests work again
        assert sorted(u.rpartition("/")[2] for u in burst_calls) == ["a", "b"]  # both went into the burst, failed there
        for name in ("a", "b"):
            assert transfer.download(tmp_path / name, container=box, name=name) == 10
            assert (tmp_path / name).read_bytes() == name.encode() * 10
    assert sorted(lone) == ["get_first a", "get_first b"]  # each then went alone
