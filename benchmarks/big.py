"""Big files: a SIZE input staged and a SIZE output uploaded through batchyard's transfer code
(BlobTransfer, what the runner uses: .part file + rename on download, whole-file MD5 on upload)
against raw azure-storage-blob calls on the same blob, in the same run.

The raw side is what a user of azure-storage-blob would write (``upload_blob`` /
``download_blob`` with ``max_concurrency=4``), on the client BlobTransfer itself uses (8 MiB
blocks and single puts, a 32-connection pool), so the ratios isolate BlobTransfer's own work
(MD5, .part file). It is also the stricter baseline: with a default
``BlobServiceClient.from_connection_string(conn)`` (4 MiB blocks) raw uploads measured ~15%
slower.

Azurite fdatasyncs every block it stores, so uploads are bound by disk writes and slowed by
any other writeback. So that neither side pays for the other's files: the source is synced
before timing starts; each download's output is deleted as soon as it is timed (it used to
stay until the end of the rep, and the writeback of raw.out fell on batchyard's upload, which
always came next: 0.70x raw in three runs, 0.90x once outputs were deleted at once, same code;
how much it matters depends on the disk); and the sides take turns going first, as later
steps of a run tend to be slower (with an odd ``reps`` the raw side goes first once more).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from batchyard.storage.transfer import BlobTransfer

from .common import median, storage_of, timed

CHUNK = 8 * 1024 * 1024


def _make_file(path: Path, size: int) -> None:
    block = os.urandom(CHUNK)  # incompressible, and cheap: one random block repeated
    with path.open("wb") as fh:
        written = 0
        while written < size:
            n = min(CHUNK, size - written)
            fh.write(block[:n])
            written += n


def run(conn: str, *, size: int = 1 << 30, reps: int = 3) -> dict[str, Any]:
    storage = storage_of(conn)
    container = f"big-{uuid.uuid4().hex[:8]}"
    storage.ensure_container(container)
    client = storage.container(container)
    transfer = BlobTransfer(storage)
    raw_up, raw_down, by_up, by_down = [], [], [], []
    mib = size / 2**20
    with tempfile.TemporaryDirectory(prefix="by-bench-big-") as tmp:
        src, raw_out, by_out = Path(tmp) / "big.bin", Path(tmp) / "raw.out", Path(tmp) / "wd" / "by.out"
        _make_file(src, size)
        os.sync()

        def raw_upload() -> None:
            with src.open("rb") as fh:
                client.upload_blob("raw.bin", fh, length=size, overwrite=True, max_concurrency=4)

        def raw_download() -> None:
            with raw_out.open("wb") as fh:
                client.download_blob("raw.bin", max_concurrency=4).readinto(fh)

        def by_upload() -> None:
            transfer.upload(src, blob_name="by.bin", container=container)

        def by_download() -> None:
            transfer.download(by_out, container=container, name="by.bin")

        sides = [(raw_upload, raw_download, raw_out, raw_up, raw_down),
                 (by_upload, by_download, by_out, by_up, by_down)]
        for rep in range(reps):
            for upload, download, out, ups, downs in sides if rep % 2 == 0 else sides[::-1]:
                ups.append(timed(upload)[0])
                downs.append(timed(download)[0])
                out.unlink()
            print(f"  big rep {rep + 1}/{reps}: upload raw {mib / raw_up[-1]:.0f} MB/s, batchyard "
                  f"{mib / by_up[-1]:.0f} MB/s; download raw {mib / raw_down[-1]:.0f} MB/s, batchyard "
                  f"{mib / by_down[-1]:.0f} MB/s", flush=True)
    return {
        "size_mib": round(mib), "reps": reps,
        "raw_upload_mb_s": round(mib / median(raw_up), 1), "upload_mb_s": round(mib / median(by_up), 1),
        "raw_download_mb_s": round(mib / median(raw_down), 1), "stage_mb_s": round(mib / median(by_down), 1),
        "upload_ratio": round(median(raw_up) / median(by_up), 3),
        "stage_ratio": round(median(raw_down) / median(by_down), 3),
    }
