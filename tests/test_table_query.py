"""Table rows read as the service sends them (storage/table_query.py) are the rows the SDK's
``query_entities`` reads, against a real Azurite: quoted values, a time filter, more than a page."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError

from batchyard.storage.table_query import filter_text, lean_query_available, query_rows


def test_parameters_are_written_as_odata_literals() -> None:
    when = datetime(2026, 12, 3, 15, 7, 31, 771586, tzinfo=UTC)
    query = "PartitionKey eq @pk and ( RowKey gt @first ) and Timestamp ge @since and n eq @n and b eq @b"
    assert filter_text(query, {"pk": "it's", "first": "a@b", "since": when, "n": 5, "b": True}) == (
        "PartitionKey eq 'it''s' and ( RowKey gt 'a@b' ) and Timestamp ge datetime'2026-12-03T15:07:31.771586Z' "
        "and n eq 5 and b eq true")


def test_rows_read_lean_are_the_sdks_rows(project: Any) -> None:
    table = project.storage.table_service.create_table(f"lean{uuid.uuid4().hex[:12]}")
    try:
        assert lean_query_available(table)  # a future SDK without it would quietly be slow: noticed here
        for part in ("job'a~0", "job'a~1", "job'b"):  # a quote in the key: the literal doubles it
            for start in range(0, 600, 100):
                table.submit_transaction([("upsert", {"PartitionKey": part, "RowKey": f"t{i:04d}",
                                                      "state": ("running", "succeeded")[i % 2], "n": i})
                                          for i in range(start, start + 100)])
        query = "( PartitionKey gt @first and PartitionKey lt @after )"
        params: dict[str, Any] = {"first": "job'a~", "after": "job'a~~"}
        select = ["RowKey", "state", "Timestamp"]
        sdk = sorted((e["RowKey"], e["state"], e.metadata["timestamp"])
                     for e in table.query_entities(query, parameters=params, select=select))
        lean = sorted((r["RowKey"], r["state"], r["Timestamp"]) for r in query_rows(table, query, parameters=params,
                                                                                    select=select))
        assert lean == sdk and len(lean) == 1200  # more than Azurite's page of 1,000: continued
        later = max(stamp for _, _, stamp in sdk) - timedelta(microseconds=1)
        newest = list(query_rows(table, f"{query} and Timestamp ge @since", parameters={**params, "since": later},
                                 select=["RowKey"]))
        assert 1 <= len(newest) < 1200 and set(newest[0]) == {"RowKey"}
    finally:
        project.storage.table_service.delete_table(table.table_name)
    with pytest.raises(ResourceNotFoundError):
        list(query_rows(table, "RowKey eq @r", parameters={"r": "x"}, select=["RowKey"]))
