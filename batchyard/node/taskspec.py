"""What a node is told to run (:class:`TaskSpec`) and what it reports back (:class:`AttemptRecord`,
:class:`TaskOutcome`): backend-neutral, shared by the runner, the local backend's nodes and the
Batch emulator's nodes. Spec-shaped objects never print a SAS: URL fields are excluded from repr.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from batchyard.core.batch_semantics import attempt_record, now_iso

__all__ = ["AttemptRecord", "NodeContext", "OutputFile", "ResourceFile", "TaskOutcome", "TaskSpec", "UploadOn",
           "now_iso"]

UploadOn = Literal["success", "failure", "completion"]


@dataclass(frozen=True)
class ResourceFile:
    """A file to stage into the working dir: a blob on the configured account, or a (SAS) URL."""

    file_path: str
    container: str | None = None
    blob: str | None = None
    http_url: str | None = field(default=None, repr=False)  # may carry a SAS signature
    is_input: bool = False  # missing -> input_missing (else staging_failed)
    # Job-wide files that never change for a given key are downloaded once per node and copied
    # into each task's working dir (a copy, so a task that edits its copy cannot affect the next).
    cache_key: str | None = None


@dataclass(frozen=True)
class OutputFile:
    """Files matching ``pattern`` (relative to the working dir; Batch's ``../`` reaches the task
    dir) go to ``container`` on the configured account or to ``container_url`` (a SAS URL).

    With a wildcard in the pattern, ``path`` is a prefix and each file keeps its path relative
    to the pattern's fixed leading directories; without one, ``path`` is the blob name (or a
    prefix when it ends with ``/``). This is Batch's OutputFile rule.
    """

    pattern: str
    path: str = ""
    upload_on: UploadOn = "success"
    optional: bool = False
    container: str | None = None
    container_url: str | None = field(default=None, repr=False)
    skip_empty: bool = False  # logs: an empty stdout/stderr costs an upload and says nothing


@dataclass(frozen=True)
class NodeContext:
    """The node a task runs on: where its directories live and what it reports about itself."""

    root: Path
    node_id: str = "local-0"
    pool_id: str = "local"
    account_name: str = "local"
    account_url: str = ""
    is_dedicated: bool = True

    @property
    def shared_dir(self) -> Path:
        return self.root / "shared"

    @property
    def startup_dir(self) -> Path:
        return self.root / "startup"

    def task_dir(self, job_id: str, task_id: str) -> Path:
        return self.root / "workitems" / job_id / "job-1" / task_id


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to run one task, backend-neutral (a subset of Batch's task)."""

    job_id: str
    task_id: str
    argv: tuple[str, ...]
    environment: Mapping[str, str] = field(default_factory=dict)
    resource_files: tuple[ResourceFile, ...] = ()
    output_files: tuple[OutputFile, ...] = ()
    max_wall_clock_seconds: float | None = None
    max_task_retry_count: int = 0  # -1 = retry without limit (Batch semantics)
    keep_task_dir: bool = True
    container_image: str | None = None  # run argv inside this image (batchyard.node.docker)
    elevated: bool = False  # Batch's elevationLevel admin: root inside a container image


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt's facts, as recorded and reported."""

    number: int
    started_at: str
    ended_at: str
    exit_code: int | None
    failure_category: str | None = None
    failure_message: str | None = None
    node_id: str = ""
    slot: int = 0
    # Batch's failureInfo code, where the category alone does not tell it (a staging failure:
    # BlobNotFound, BlobAccessDenied, BlobDownloadMiscError); an emulated node reports it.
    batch_code: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.failure_category is None

    def to_dict(self) -> dict[str, object]:
        return attempt_record(self.number, started_at=self.started_at, ended_at=self.ended_at,
                              exit_code=self.exit_code, category=self.failure_category,
                              reason=self.failure_message, node_id=self.node_id, slot=self.slot)


@dataclass(frozen=True)
class TaskOutcome:
    """The end of a task after all its attempts."""

    succeeded: bool
    attempts: tuple[AttemptRecord, ...]
    stderr_tail: str = ""
    uploaded: tuple[str, ...] = ()

    @property
    def last(self) -> AttemptRecord:
        return self.attempts[-1]
