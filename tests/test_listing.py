"""A container's blob identities (name, content MD5, ETag, size) read from List Blobs pages through
the SDK client's own pipeline (storage/listing.py) are exactly what the SDK's ``list_blobs`` reads,
against a real Azurite: tricky names, blobs with and without an MD5, prefixes, pages."""

from __future__ import annotations

import base64
from typing import Any
from xml.etree import ElementTree

import pytest
from azure.storage.blob import ContentSettings

from batchyard.core.errors import StorageError
from batchyard.storage import listing
from batchyard.storage.listing import lean_listing_available, list_identities

NAMES = ["plain.txt", "with space/and more.txt", "ünïcødé/日本語.txt", "plus+eq=amp&semi;comma,.txt",
         "pct%41%2F.txt", "hash#and?query.txt", "tilde~star*paren()'quote.txt", "a/b/c/deep.txt",
         "lt<gt>amp&.txt", "in/x.txt", "in/y/z.txt", "inner.txt", "sp ace/x.txt", "plus+/y.txt", "plus /z.txt"]


def _sdk_identities(client: Any, prefix: str = "") -> list[tuple[str, bytes | None, str, int]]:
    return [(b.name, bytes(b.content_settings.content_md5) if b.content_settings.content_md5 else None,
             str(b.etag or ""), int(b.size or 0)) for b in client.list_blobs(name_starts_with=prefix or None)]


def test_the_lean_listing_reads_what_the_sdks_listing_reads(project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    container = project.container("inputs")
    client = project.storage.container(container)
    for i, name in enumerate(NAMES):
        data = bytes([65 + i]) * (i * 7)
        if i % 3 == 0:  # no MD5 on it (a blob put in blocks by another tool has none)
            client.get_blob_client(name).upload_blob(data, overwrite=True,
                                                     content_settings=ContentSettings(content_md5=None))
            client.get_blob_client(name).set_http_headers(ContentSettings(content_md5=None))
        else:
            client.upload_blob(name, data, overwrite=True)
    assert lean_listing_available(client)  # a future SDK without it would quietly be slow: noticed here
    monkeypatch.setattr(listing, "PAGE_SIZE", 5)  # three pages, the marker carried between them
    for prefix in ("", "in", "in/", "nothing-here", "sp ace/", "plus+", "plus "):  # a '+' is not a space
        want = _sdk_identities(client, prefix)
        assert list(list_identities(client, prefix)) == want, prefix
        assert list(project.storage.list_blob_identities(container, prefix)) == want, prefix
    assert sum(1 for _, md5, _, _ in list_identities(client) if md5 is None) >= 3


def test_a_missing_container_is_named(project: Any) -> None:
    with pytest.raises(StorageError, match="no-such-container"):
        list(project.storage.list_blob_identities("no-such-container"))


def test_an_encoded_name_and_a_missing_md5_are_read_as_the_service_means_them() -> None:
    # Blob storage percent-encodes a name that XML cannot carry and marks it (List Blobs, 2025-06-01).
    md5 = base64.b64encode(b"0123456789abcdef").decode()
    page = ElementTree.fromstring(
        "<EnumerationResults><Blobs>"
        '<Blob><Name Encoded="true">bell%07char.txt</Name><Properties><Etag>0x1</Etag>'
        f"<Content-Length>3</Content-Length><Content-MD5>{md5}</Content-MD5></Properties></Blob>"
        "<Blob><Name>plain%41.txt</Name><Properties><Etag>0x2</Etag><Content-Length>0</Content-Length>"
        "<Content-MD5 /></Properties></Blob>"
        "</Blobs><NextMarker /></EnumerationResults>")
    got = [listing._identity(blob) for blob in page.iterfind("Blobs/Blob")]
    assert got == [("bell\x07char.txt", b"0123456789abcdef", "0x1", 3), ("plain%41.txt", None, "0x2", 0)]
