"""How Azurite's own cost per request grows with what it holds (why tasks per second fall as a
local job grows): its CPU per blob request against the blobs in the account, and per row written in
a table transaction against the rows in that row's partition and in the rest of the table; its CPU
per query (a message's 14 row keys in one partition; a job's rows written since a moment, as a
status poll asks) against the rows in the table.

Each measurement on a fresh Azurite, through the SDKs, Azurite's CPU read with psutil:

    .venv/bin/python -m benchmarks.azurite_growth --out results.json
"""

from __future__ import annotations

import argparse
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from pathlib import Path
from typing import Any

import psutil

from .common import azurite, emit_json

PROBES = 600  # requests timed at each size


def _azurite_cpu() -> Any:
    node = next(p for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] and any(part.endswith("azurite.js") for part in p.info["cmdline"]))
    return lambda: sum(node.cpu_times()[:2])


def blob_ms(conn: str, held: int) -> float:
    """Azurite's CPU (ms) per request: a 1-KiB put and a get, with ``held`` blobs in the account."""
    from azure.storage.blob import BlobServiceClient

    cpu = _azurite_cpu()
    box = BlobServiceClient.from_connection_string(conn).create_container(f"g{uuid.uuid4().hex[:12]}")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: box.upload_blob(f"held/{i:07d}", b"x"), range(held)))
    before = cpu()
    for i in range(PROBES // 2):
        box.upload_blob(f"new/{i}", b"y" * 1024)
        box.download_blob(f"new/{i}").readall()
    return round((cpu() - before) / PROBES * 1000, 3)


def row_ms(conn: str, in_partition: int, elsewhere: int) -> float:
    """Azurite's CPU (ms) per row merged in 50-row transactions, with ``in_partition`` rows in the
    row's partition and ``elsewhere`` rows in other partitions of the table."""
    from azure.data.tables import TableServiceClient, UpdateMode

    cpu = _azurite_cpu()
    table = TableServiceClient.from_connection_string(conn).create_table(f"g{uuid.uuid4().hex[:12]}")
    for partition, rows in (("p", in_partition), ("other", elsewhere)):
        for i in range(0, rows, 100):
            table.submit_transaction([("upsert", {"PartitionKey": f"{partition}{j // 1000}" if partition == "other"
                                                  else partition, "RowKey": f"r{j:07d}"})
                                      for j in range(i, min(rows, i + 100))])
    before = cpu()
    for i in range(0, PROBES, 50):
        table.submit_transaction([("upsert", {"PartitionKey": "p", "RowKey": f"r{(j * 7919) % in_partition:07d}",
                                              "state": "done"}, {"mode": UpdateMode.MERGE})
                                  for j in range(i, i + 50)])
    return round((cpu() - before) / PROBES * 1000, 3)


QUERIES = 40  # queries timed at each size


def query_ms(conn: str, rows: int) -> dict[str, float]:
    """Azurite's CPU (ms) per query, with ``rows`` rows in the table (partitions of 1,000): 14 row
    keys of one partition, and the rows of one job's partitions written in the last second (none)."""
    from datetime import datetime

    from azure.data.tables import TableServiceClient

    cpu = _azurite_cpu()
    table = TableServiceClient.from_connection_string(conn).create_table(f"g{uuid.uuid4().hex[:12]}")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: table.submit_transaction(
            [("upsert", {"PartitionKey": f"job~{j // 1000}", "RowKey": f"r{j:07d}", "state": "succeeded"})
             for j in range(i, min(rows, i + 100))]), range(0, rows, 100)))
    keys = " or ".join(f"RowKey eq 'r{j:07d}'" for j in range(14))
    since = datetime.now(UTC)
    out = {}
    for name, query in (("row_keys", f"PartitionKey eq 'job~0' and ( {keys} )"),
                        ("changed_since", "( PartitionKey eq 'job' or ( PartitionKey gt 'job~' and PartitionKey lt "
                                          "'job~~' ) ) and Timestamp ge @since")):
        before = cpu()
        for _ in range(QUERIES):
            list(table.query_entities(query, parameters={"since": since}))
        out[name] = round((cpu() - before) / QUERIES * 1000, 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.azurite_growth")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only-queries", action="store_true", help="measure the queries only")
    args = parser.parse_args()
    out: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "probes": PROBES,
                           "blob_ms_by_blobs_held": {}, "row_ms_by_partition_rows": {}, "row_ms_by_other_rows": {}}
    for held in () if args.only_queries else (0, 5000, 10_000):
        with azurite() as conn:
            out["blob_ms_by_blobs_held"][held] = blob_ms(conn, held)
        print(f"blobs held {held}: {out['blob_ms_by_blobs_held'][held]} ms of Azurite's CPU per request", flush=True)
    for rows in () if args.only_queries else (1000, 10_000, 30_000):
        with azurite() as conn:
            out["row_ms_by_partition_rows"][rows] = row_ms(conn, rows, 0)
        print(f"rows in the partition {rows}: {out['row_ms_by_partition_rows'][rows]} ms per row", flush=True)
    for rows in () if args.only_queries else (10_000, 30_000):
        with azurite() as conn:
            out["row_ms_by_other_rows"][rows] = row_ms(conn, 1000, rows)
        print(f"1,000 rows in the partition, {rows} in others: {out['row_ms_by_other_rows'][rows]} ms per row",
              flush=True)
    out["query_ms_by_table_rows"] = {}
    for rows in (1000, 10_000, 50_000):
        with azurite() as conn:
            out["query_ms_by_table_rows"][rows] = query_ms(conn, rows)
        print(f"rows in the table {rows}: {out['query_ms_by_table_rows'][rows]} ms per query", flush=True)
    return emit_json(out, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
