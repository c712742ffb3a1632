"""JobStore.write_group against a real Azurite: claims and results written in one table
transaction by ``fast_rest`` (one urllib3 request) land as the tables SDK writes them, are all or
nothing, return ETags that guard the next write, and fail as the SDK path does."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.data.tables import TableClient

from batchyard.backends.local.store import JobStore, StorageLostError
from batchyard.core.errors import AuthenticationError
from batchyard.storage.account import Storage
from batchyard.storage.fast_rest import FastRest

KEYS = ["plain", "it's a key with spaces", "ünïcødé-日本", "pct%41+plus=eq&amp"]


def _store(project: Any, storage: Storage | None = None) -> tuple[JobStore, TableClient]:
    store = JobStore(storage or project.storage, project.config())
    store.storage.table_service.create_table_if_not_exists(store._tasks_name)
    return store, store.tasks


def _row(key: str, **extra: Any) -> dict[str, Any]:
    return {"PartitionKey": "job-1", "RowKey": key, "state": "running", "claim_owner": "w:1", "deliveries": 1,
            "claim_expires": 1_700_000_000.0, "integral_float": 2.0, "flag": True, "missing": None, **extra}


@pytest.mark.fast_path
def test_group_rows_are_stored_as_the_sdk_stores_them(project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store, table = _store(project)
    for key in KEYS:
        table.create_entity(_row(f"sdk-{key}"))
    called = []
    real = FastRest.submit_group
    monkeypatch.setattr(FastRest, "submit_group", lambda *a, **k: called.append(1) or real(*a, **k))
    etags = store.write_group([_row(key) for key in KEYS], [])
    assert called and etags is not None and len(etags) == len(KEYS)
    for key, etag in zip(KEYS, etags, strict=True):
        fast, sdk = table.get_entity("job-1", key), table.get_entity("job-1", f"sdk-{key}")
        assert fast.metadata["etag"] == etag
        assert {k: (v, type(v)) for k, v in fast.items() if k != "RowKey"} == {
            k: (v, type(v)) for k, v in sdk.items() if k != "RowKey"}
        assert isinstance(fast["integral_float"], float) and fast["integral_float"] == 2.0
    # Merges name their row in the URL: quotes doubled, then URL-quoted.
    merged = store.write_group([], [({"PartitionKey": "job-1", "RowKey": key, "state": "done"}, etag)
                                    for key, etag in zip(KEYS, etags, strict=True)])
    assert merged is not None
    assert [table.get_entity("job-1", key)["state"] for key in KEYS] == ["done"] * len(KEYS)


def test_merges_are_guarded_by_the_etags_a_group_returns(project: Any) -> None:
    store, table = _store(project)
    created = store.write_group([_row("a"), _row("b")], [])
    assert created is not None
    merged = store.write_group([_row("c")], [({"PartitionKey": "job-1", "RowKey": "a", "state": "succeeded"},
                                              created[0])])
    assert merged is not None and len(merged) == 2
    assert table.get_entity("job-1", "a")["state"] == "succeeded"
    assert table.get_entity("job-1", "a")["deliveries"] == 1  # a merge keeps what it does not name
    assert table.get_entity("job-1", "a").metadata["etag"] == merged[1]
    # A stale ETag (row "a" changed since `created`) refuses the whole group: "d" is not created either.
    assert store.write_group([_row("d")], [({"PartitionKey": "job-1", "RowKey": "a", "state": "failed"},
                                            created[0])]) is None
    assert table.get_entity("job-1", "a")["state"] == "succeeded"
    assert [e["RowKey"] for e in table.query_entities("RowKey eq 'd'")] == []
    # A create of a row that exists refuses the group too; "b" keeps its state.
    assert store.write_group([_row("a")], [({"PartitionKey": "job-1", "RowKey": "b", "state": "failed"},
                                            created[1])]) is None
    assert table.get_entity("job-1", "b")["state"] == "running"


def test_a_value_of_another_type_goes_through_the_sdk(project: Any) -> None:
    store, table = _store(project)
    when = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    etags = store.write_group([_row("dated", seen=when)], [])
    assert etags is not None
    assert table.get_entity("job-1", "dated")["seen"] == when


def test_a_table_gone_is_storage_lost_and_a_wrong_key_is_refused(project: Any) -> None:
    wrong_key = base64.b64encode(b"not the key" * 4).decode()
    wrong = Storage(dataclasses.replace(project.storage.account, account_key=wrong_key))
    store, _ = _store(project)
    with pytest.raises(AuthenticationError) as refused:
        JobStore(wrong, project.config()).write_group([_row("x")], [])
    assert wrong_key not in str(refused.value)
    project.storage.table_service.delete_table(store._tasks_name)
    with pytest.raises(StorageLostError, match="does not exist on the storage account"):
        store.write_group([_row("x")], [])
