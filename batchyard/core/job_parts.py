"""The parts of a job: its inputs, resource files, outputs and constraints (the job model is
:mod:`batchyard.core.job`; the final step :mod:`batchyard.core.final_step`)."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from batchyard.core.durations import parse_duration
from batchyard.core.errors import UnsafePathError
from batchyard.core.paths import blob_name_problem, safe_relative_path
from batchyard.core.placeholders import MAX_COMMAND_CHARS, split_command

CONTAINER_RE = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Inputs(_Model):
    """One task per blob in ``container`` whose name starts with ``prefix`` and, after the prefix,
    matches ``glob``. With ``local_dir``, those local files are uploaded there first."""

    container: str = Field(description="Container holding the inputs (3-63 chars: a-z, 0-9, single '-').")
    prefix: str = Field(default="", description="Only blobs whose name starts with this; `{input}` is the rest.")
    glob: str = Field(default="*", description="Glob matched on the name after the prefix (`*` also matches '/').")
    local_dir: str | None = Field(default=None, description="Local folder (relative to the job file) uploaded "
                                  "to container/prefix first; unchanged files (same MD5) are skipped. The "
                                  "inputs are every blob under container/prefix, so a blob stays an input when "
                                  "its local file is deleted: delete the blob too (or use a fresh prefix).")

    @field_validator("container")
    @classmethod
    def _container(cls, v: str) -> str:
        if not CONTAINER_RE.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a valid container name (3-63 chars: lowercase letters, digits, single hyphens)"
            )
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v.startswith("/") or "\\" in v or "\x00" in v or ".." in PurePosixPath(v).parts:
            raise ValueError(f"prefix {v!r} must be a relative blob prefix without '..' or backslashes")
        return v


class ResourceFileSpec(_Model):
    """A local file (relative to the job file) uploaded once and staged into every task's working dir."""

    source: str = Field(description="Local file, relative to the job file.")
    file_path: str | None = Field(default=None, description="Where it lands in the working dir "
                                  "(default: its file name). Relative, no '..'.")

    @model_validator(mode="after")
    def _paths(self) -> ResourceFileSpec:
        target = self.file_path or Path(self.source).name
        try:
            safe_relative_path(target, what="file_path")
        except UnsafePathError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def target(self) -> str:
        return self.file_path or Path(self.source).name


class OutputSpec(_Model):
    """Files matching ``pattern`` (relative to the working dir) go to ``container`` under ``path``."""

    pattern: str = Field(description="Glob relative to the working dir (`**` for subfolders). No '..', not absolute.")
    container: str = Field(description="Destination container.")
    path: str = Field(default="{job_id}/", description="Blob prefix (placeholders allowed); with a pattern "
                      "without wildcards and no trailing '/', the blob name itself. Before and after substitution: "
                      "relative, no '.' or '..' segment, no backslash.")
    upload_on: Literal["success", "failure", "completion"] = Field(
        default="success", description="Upload after a successful, a failed, or any attempt.")
    optional: StrictBool = Field(default=False, description="If false, a pattern matching no file fails the task "
                           "(`output_missing`).")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            safe_relative_path(v, what="pattern")
        except UnsafePathError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("container")
    @classmethod
    def _container(cls, v: str) -> str:
        return Inputs._container(v)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        problem = blob_name_problem(v)
        if problem:
            raise ValueError(f"path {v!r} {problem}: it must be a relative blob prefix")
        return v


Duration = Annotated[float, Field(gt=0)]


class Constraints(_Model):
    """Mirrors Batch's task constraints. Timeouts are not retried (Batch terminates the task)."""

    max_wall_clock_time: Duration | None = Field(
        default=None, description="Per attempt: '90s', '10m', '1h30m', '2d' or seconds. The command and all its "
        "descendants are killed (`timeout`, not retried).")
    max_task_retry_count: int = Field(default=0, ge=-1, le=100, description="Retries after a non-zero exit "
                                      "(-1: no limit, as in Batch).")
    retention_time: Duration | None = Field(default=None, description="How long Batch keeps the task dir "
                                            "(azure backend only).")

    @field_validator("max_wall_clock_time", "retention_time", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)


def checked_command(command: str) -> str:
    """``command`` as a task's command, or ValueError saying why not: too long, unsplittable, empty."""
    if len(command) > MAX_COMMAND_CHARS:  # before splitting, which is slow on a long one
        raise ValueError(f"is {len(command):,} characters long; at most {MAX_COMMAND_CHARS:,} are accepted "
                         "(put a long script in a resource file and run that)")
    try:
        argv = split_command(command)
    except ValueError as exc:
        raise ValueError(f"cannot be split into arguments: {exc}") from None
    if not argv:
        raise ValueError("must not be empty")
    return command
