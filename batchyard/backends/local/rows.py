"""A task's row in the local backend's tasks table, and what is read back from it."""

from __future__ import annotations

import json
from typing import Any

from batchyard.backends.base import TaskResult, dumps, final_state
from batchyard.core.job import TaskDef


def entity_to_result(entity: dict[str, Any]) -> TaskResult:
    attempts = json.loads(entity.get("attempts_json") or "[]")
    return TaskResult(
        job_id=entity["PartitionKey"], task_id=entity["RowKey"],
        state=final_state(entity.get("state") or "pending", entity.get("failure_category")),
        label=entity.get("label", ""), exit_code=entity.get("exit_code"),
        failure_category=entity.get("failure_category"), failure_message=entity.get("failure_message"),
        attempts=int(entity.get("attempt_count") or 0), started_at=entity.get("started_at"),
        ended_at=entity.get("ended_at"), node_id=entity.get("node_id"),
        stderr_tail=entity.get("stderr_tail") or "", attempt_records=tuple(attempts),
    )


def task_def_from_entity(entity: dict[str, Any]) -> TaskDef:
    return TaskDef(
        task_id=entity["RowKey"], argv=tuple(json.loads(entity["argv_json"])),
        input_container=entity.get("input_container") or None, input_blob=entity.get("input_blob") or None,
        input_path=entity.get("input_path") or None,
        params=tuple(tuple(p) for p in json.loads(entity.get("params_json") or "[]")),
        fingerprint=entity.get("fingerprint") or "",
    )


def pending_row(job_id: str, task: TaskDef) -> dict[str, Any]:
    """A task's row before anything happened to it (written at submit, or created at claim time)."""
    return {
        "PartitionKey": job_id, "RowKey": task.task_id, "state": "pending", "label": task.label,
        "argv_json": dumps(list(task.argv)), "input_container": task.input_container or "",
        "input_blob": task.input_blob or "", "input_path": task.input_path or "",
        "params_json": dumps([list(p) for p in task.params]), "attempt_count": 0, "attempts_json": "[]",
        "claim_owner": "", "claim_expires": 0.0, "deliveries": 0, "fingerprint": task.fingerprint,
    }


__all__ = ["entity_to_result", "pending_row", "task_def_from_entity"]
