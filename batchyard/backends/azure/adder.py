"""Adding tasks to a Batch job: 100 per request, 8 requests at a time, under one deadline.

Why not the SDK's ``create_tasks``: it retries a persistent 5xx forever, and we want per-task
answers: ``TaskExists`` means an earlier (interrupted) submit already added it.

The tasks come as an iterable and are taken a chunk at a time as requests go out: at most
``2 x concurrency`` chunks are built ahead of the answers, so a 100,000-task submit holds ~1,600
task bodies, not all of them, and the first request leaves once the first 100 are built. The
answers are read as JSON (the SDK's ``stream=True``: the request, its signature, retries and
errors are the SDK's; only the answer's 100 per-task models are not built).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError, ServiceRequestError

from batchyard.backends.azure.tasks import batch_error, error_code, first_line
from batchyard.core.bounded import bounded_map, chunks
from batchyard.core.errors import BackendError
from batchyard.core.redact import redact

CHUNK = 100  # Batch's limit of tasks per add-collection request
CHUNK_CONCURRENCY = 8
AHEAD = 2  # chunks built per request in flight: the next ones are ready when an answer comes

TaskBody = bm.BatchTaskCreateOptions | dict[str, Any]


@dataclass
class AddReport:
    added: int = 0
    existed: int = 0


class TaskAdder:
    """Add tasks 100 per request, 8 requests at a time, under one deadline (see the module's doc)."""

    def __init__(self, client: Any, job_id: str, *, deadline_s: float = 600.0, chunk: int = CHUNK,
                 concurrency: int = CHUNK_CONCURRENCY) -> None:
        self.client, self.job_id = client, job_id
        self.deadline = time.monotonic() + deadline_s
        self.deadline_s = deadline_s
        self.chunk, self.concurrency = chunk, concurrency
        self.report = AddReport()
        self._lock = threading.Lock()

    def add(self, tasks: Iterable[TaskBody]) -> AddReport:
        """Add ``tasks`` (SDK models or their JSON), taking them as requests go out; the first error
        stops the rest (chunks not yet sent are not sent) and is raised."""
        bounded_map(self._add_chunk, chunks(tasks, self.chunk), concurrency=self.concurrency, ahead=AHEAD,
                    thread_name_prefix="batchyard-add")
        return self.report

    def _backoff(self, attempt: int, why: str) -> None:
        if time.monotonic() >= self.deadline:
            raise BackendError(f"adding tasks to job {self.job_id!r}: Azure Batch still answers {why} after "
                               f"{self.deadline_s:.0f} s; submit again later (tasks already added are kept)")
        delay = min(10.0, 0.25 * 2 ** attempt) * (0.5 + random.random() / 2)
        time.sleep(max(0.0, min(delay, self.deadline - time.monotonic())))

    def _add_chunk(self, pending: list[TaskBody]) -> None:
        attempt = 0
        while pending:
            try:
                # A body of plain JSON (task_bodies.py) or of models: the SDK serializes either as it is.
                answer = self.client.create_task_collection(self.job_id, {"value": pending},  # type: ignore[arg-type]
                                                            stream=True)
                results = json.loads(b"".join(answer)).get("value") or []
            except HttpResponseError as exc:
                if error_code(exc) == "RequestBodyTooLarge" or exc.status_code == 413:
                    if len(pending) == 1:
                        raise BackendError(f"task {pending[0]['id']!r} of job {self.job_id!r} is too large for "
                                           "Azure Batch (over 1 MB: too many resource files or environment)") from None
                    half = len(pending) // 2
                    self._add_chunk(pending[:half])
                    self._add_chunk(pending[half:])
                    return
                if exc.status_code is not None and (exc.status_code >= 500 or exc.status_code == 429):
                    self._backoff(attempt, f"{exc.status_code} {error_code(exc) or ''}".strip())
                    attempt += 1
                    continue
                raise batch_error(exc, f"adding tasks to job {self.job_id!r}") from None
            except ServiceRequestError as exc:  # connection reset: the request may or may not have landed
                self._backoff(attempt, f"with a connection error ({first_line(exc)})")
                attempt += 1
                continue
            except Exception as exc:
                raise batch_error(exc, f"adding tasks to job {self.job_id!r}") from None
            retry_ids = self._tally(results)
            by_id = {str(t["id"]).lower(): t for t in pending}
            pending = [by_id[i] for i in retry_ids if i in by_id]
            if pending:
                self._backoff(attempt, "server errors for some tasks")
                attempt += 1

    def _tally(self, results: Sequence[dict[str, Any]]) -> list[str]:
        """Count the answer's per-task results (Batch's JSON); the ids of those to send again."""
        retry: list[str] = []
        added = existed = 0
        for r in results:
            status = str(r.get("status") or "").lower()
            error = r.get("error") or {}
            code = error.get("code")
            if status == "success":
                added += 1
            elif status == "clienterror" and code == "TaskExists":
                existed += 1
            elif status == "clienterror":
                text = (error.get("message") or {}).get("value") or ""
                details = "; ".join(f"{d.get('key')}={d.get('value')}" for d in error.get("values") or [])
                first = str(text).split("\n", 1)[0]
                raise BackendError(redact(f"Azure Batch refused task {r.get('taskId')!r} of job {self.job_id!r}: "
                                          f"{code}: {first}" + (f" ({details})" if details else "")))
            else:
                retry.append(str(r.get("taskId")).lower())
        with self._lock:
            self.report.added += added
            self.report.existed += existed
        return retry


__all__ = ["AddReport", "TaskAdder"]
