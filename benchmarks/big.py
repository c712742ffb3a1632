"""Big files: a SIZE input staged and a SIZE output uploaded through batchyard's transfer code
(BlobTransfer, what the runner uses: .part file + rename on download, whole-file MD5 on upload)
against raw azure-storage-blob calls on the same blob, in the same run."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from batchyard.storage import BlobTransfer

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
    with tempfile.TemporaryDirectory(prefix="by-bench-big-") as tmp:
        src = Path(tmp) / "big.bin"
        _make_file(src, size)
        for rep in range(reps):
            def raw_upload() -> None:
                with src.open("rb") as fh:
                    client.upload_blob("raw.bin", fh, length=size, overwrite=True, max_concurrency=4)

            def raw_download() -> None:
                with (Path(tmp) / "raw.out").open("wb") as fh:
                    client.download_blob("raw.bin", max_concurrency=4).readinto(fh)

            raw_up.append(timed(raw_upload)[0])
            raw_down.append(timed(raw_download)[0])
            by_up.append(timed(lambda: transfer.upload(src, blob_name="by.bin", container=container))[0])
            by_down.append(timed(lambda: transfer.download(Path(tmp) / "wd" / "by.out", container=container,
                                                           name="by.bin"))[0])
            mib = size / 2**20
            print(f"  big rep {rep + 1}/{reps}: upload raw {mib / raw_up[-1]:.0f} MB/s, batchyard "
                  f"{mib / by_up[-1]:.0f} MB/s; download raw {mib / raw_down[-1]:.0f} MB/s, batchyard "
                  f"{mib / by_down[-1]:.0f} MB/s", flush=True)
            for name in ("raw.out", "wd/by.out"):
                (Path(tmp) / name).unlink(missing_ok=True)
    mib = size / 2**20
    return {
        "size_mib": round(mib), "reps": reps,
        "raw_upload_mb_s": round(mib / median(raw_up), 1), "upload_mb_s": round(mib / median(by_up), 1),
        "raw_download_mb_s": round(mib / median(raw_down), 1), "stage_mb_s": round(mib / median(by_down), 1),
        "upload_ratio": round(median(raw_up) / median(by_up), 3),
        "stage_ratio": round(median(raw_down) / median(by_down), 3),
    }
