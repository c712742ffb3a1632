"""Azure Batch's task semantics, written once for every layer that runs or reports a task.

The node runner, the local backend's dispatcher, the azure backend and the Batch emulator
all speak of the same things; each takes them from here:

- **failures**: batchyard's failure categories, and the ``failureInfo`` (category, code,
  message) Azure Batch reports for each, in both directions (:func:`batch_failure`,
  :func:`category_of`). The Batch category always follows from the code (:data:`BATCH_CODES`,
  Microsoft's table of task errors), wherever the failure is found;
- **outputs**: Batch's ``OutputFile`` rule for blob names (:func:`output_blob_name`,
  :func:`batch_output_path`);
- **logs**: ``stdout.txt`` / ``stderr.txt`` in the task dir, kept as ``{job}/{task}/{stream}.txt``
  in the log container, and the size of the stderr tail a result carries;
- **command lines**: Batch's ``commandLine`` is one string, batchyard's argv a list;
- **records**: one attempt's record and a task's one final record.

Nothing here talks to a service; it imports only the standard library and :mod:`batchyard.core`.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args
from urllib.parse import quote

from batchyard.core.errors import AuthenticationError, SourceMissingError
from batchyard.core.paths import glob_matches, pattern_base
from batchyard.core.redact import redact

# ------------------------------------------------------------------------------------------- failures
FailureCategory = Literal[
    "exit_code", "timeout", "input_missing", "staging_failed", "start_failed",
    "output_missing", "upload_failed", "unsafe_path", "cancelled", "poison", "lost",
]
FAILURE_CATEGORIES: tuple[str, ...] = get_args(FailureCategory)
# Failures a retry cannot fix: the same inputs give the same answer.
PERMANENT_FAILURES: frozenset[str] = frozenset(
    {"input_missing", "unsafe_path", "output_missing", "start_failed", "timeout", "cancelled", "poison",
     # Azure Batch retries only a non-zero exit, never a download or upload failure; the storage
     # clients already retry transient errors, so what is left is not worth a whole attempt.
     "staging_failed", "upload_failed"}
)
# Categories Batch has no code for, and the category their Batch failure reads back as:
# Batch refuses a path leaving the working dir when the task is added, so it never fails a task
# for one (an emulated node reports the nearest code); ``poison`` is the local dispatcher's (a
# task message it could not handle), and Batch's unknown failure reads as a lost attempt.
READS_BACK_AS: dict[str, str] = {"unsafe_path": "staging_failed", "poison": "lost"}

JOB_CANCELLED = "the job was cancelled"  # the reason of a task cancelled with its job

# Exit code of the azure backend's output check (a shell wrapper around the command) when a
# non-optional pattern matched nothing. Reserved: a command that itself exits 86 in a job with
# required outputs is reported as output_missing.
OUTPUT_MISSING_EXIT = 86

USER_ERROR, SERVER_ERROR = "usererror", "servererror"  # Batch's ErrorCategory, as on the wire
# The category and message Azure Batch reports with each task failure code: Microsoft's table of
# task scheduling errors ("Batch status and error codes"). ResourceContainer* (not in that table)
# follow their Blob* counterparts: access denied is the user's, a miscellaneous error the service's.
BATCH_CODES: dict[str, tuple[str, str]] = {
    "FailureExitCode": (USER_ERROR, "The task exited with an exit code representing a failure"),
    "BlobNotFound": (USER_ERROR, "One of the specified Azure Blob(s) is not found"),
    "BlobAccessDenied": (USER_ERROR, "Access for one of the specified Azure Blob(s) is denied"),
    "BlobDownloadTimedOut": (SERVER_ERROR, "Timeout encountered while downloading one of the specified "
                                           "Azure Blob(s)"),
    "BlobDownloadMiscError": (SERVER_ERROR, "Miscellaneous error encountered while downloading one of the "
                                            "specified Azure Blob(s)"),
    "ResourceContainerAccessDenied": (USER_ERROR, "Access for one of the specified Azure Blob container(s) "
                                                  "is denied"),
    "ResourceContainerListMiscError": (SERVER_ERROR, "Miscellaneous error encountered while listing one of "
                                                     "the specified Azure Blob container(s)"),
    "ResourceDirectoryCreateFailed": (SERVER_ERROR, "Failure encountered creating resource directory for "
                                                    "the task"),
    "ResourceFileCreateFailed": (SERVER_ERROR, "Failure encountered creating resource file"),
    "ResourceFileWriteFailed": (SERVER_ERROR, "Failure encountered writing resource file"),
    "CommandProgramNotFound": (USER_ERROR, "The specified command program is not found"),
    "CommandLaunchFailed": (USER_ERROR, "Failed to launch the specified command line"),
    "FileUploadMiscError": (USER_ERROR, "An output file could not be uploaded"),
    "DiskFull": (SERVER_ERROR, "There is not enough disk space on the node that was selected to run the task"),
    "Unknown": (SERVER_ERROR, "An unknown error has occurred"),
}


@dataclass(frozen=True)
class BatchFailure:
    """A task's ``executionInfo.failureInfo`` as Azure Batch reports it."""

    code: str
    category: str  # USER_ERROR or SERVER_ERROR
    message: str
    detail: str | None = field(default=None, compare=False)  # the "Message" entry of its details

    def to_json(self) -> dict[str, Any]:
        details = [{"name": "Message", "value": self.detail}] if self.detail else []
        return {"category": self.category, "code": self.code, "message": self.message, "details": details}

    def with_detail(self, detail: str | None) -> BatchFailure:
        return BatchFailure(self.code, self.category, self.message, redact(detail) if detail else None)


def failure_of_code(code: str, detail: str | None = None) -> BatchFailure:
    """The failure Batch reports with ``code``: its category and message come with the code."""
    category, message = BATCH_CODES[code]
    return BatchFailure(code, category, message).with_detail(detail)


# TaskEnded is the one code whose category depends on why the task ended.
ENDED_BY_USER = BatchFailure("TaskEnded", USER_ERROR, "Task Was Ended by User Request")
WALL_CLOCK_EXCEEDED = BatchFailure("TaskEnded", SERVER_ERROR,
                                   "The task exceeded its maxWallClockTime and was terminated")
_CATEGORY_FAILURE: dict[str, BatchFailure] = {
    "exit_code": failure_of_code("FailureExitCode"),
    "output_missing": BatchFailure("FailureExitCode", USER_ERROR, "A required output file was not found"),
    "timeout": WALL_CLOCK_EXCEEDED,
    "cancelled": ENDED_BY_USER,
    "input_missing": failure_of_code("BlobNotFound"),
    "staging_failed": failure_of_code("BlobDownloadMiscError"),
    "unsafe_path": failure_of_code("ResourceFileCreateFailed"),
    "start_failed": failure_of_code("CommandProgramNotFound"),
    "upload_failed": failure_of_code("FileUploadMiscError"),
    "lost": failure_of_code("Unknown"),
    "poison": failure_of_code("Unknown"),
}


def batch_failure(category: str, *, code: str | None = None, detail: str | None = None) -> BatchFailure:
    """The ``failureInfo`` Batch reports for a task that failed as ``category``.

    ``code``: the Batch code when the category alone does not tell it (a staging failure is
    ``BlobNotFound``, ``BlobAccessDenied`` or ``BlobDownloadMiscError``; see :func:`staging_code`).
    """
    if code is not None:
        return failure_of_code(code, detail)
    return _CATEGORY_FAILURE.get(category, _CATEGORY_FAILURE["lost"]).with_detail(detail)


def staging_code(exc: BaseException, *, listing: bool = False) -> str:
    """The Batch code of a failure to stage a resource file (``listing``: to list its container)."""
    denied = isinstance(exc, AuthenticationError)
    if listing:
        return "ResourceContainerAccessDenied" if denied else "ResourceContainerListMiscError"
    if isinstance(exc, SourceMissingError):
        return "BlobNotFound"
    return "BlobAccessDenied" if denied else "BlobDownloadMiscError"


def category_of(failure: BatchFailure | None, exit_code: int | None, *, checks_outputs: bool = False,
                resource_names: Iterable[str] = ()) -> str:
    """batchyard's category of a Batch task that completed with ``result: failure``.

    ``checks_outputs``: the command line wraps the command in the output check (exit
    :data:`OUTPUT_MISSING_EXIT`); ``resource_names``: the job's resource files, whose absence is
    a staging failure, where the absent input of a task is ``input_missing``.
    """
    code, message, detail = (failure.code, failure.message, failure.detail or "") if failure else ("", "", "")
    if code == "FailureExitCode" or (not code and exit_code not in (None, 0)):
        return "output_missing" if checks_outputs and exit_code == OUTPUT_MISSING_EXIT else "exit_code"
    if code == "TaskEnded":
        return "cancelled" if "user" in message.lower() else "timeout"
    if code.startswith("FileUpload"):
        return "upload_failed"
    if code.startswith("Command") or code == "TaskProcessStartFailed":
        return "start_failed"
    if code.startswith(("Blob", "Resource", "ContainerNotFound", "ContainerAccess")):
        is_resource = any(name in detail or quote(name) in detail for name in resource_names)
        return "input_missing" if code == "BlobNotFound" and not is_resource else "staging_failed"
    return "exit_code" if exit_code not in (None, 0) else "lost"


def batch_exit_code(exit_code: int | None) -> int | None:
    """The exit code Batch reports: a signal death (a negative returncode) the way a Linux shell shows it."""
    if exit_code is None:
        return None
    return 128 - exit_code if exit_code < 0 else exit_code


# -------------------------------------------------------------------------------------------- outputs
def output_blob_name(path: str, relative: str, *, wildcard: bool) -> str:
    """The blob a matched output file goes to: Batch's ``OutputFile`` rule.

    With a wildcard in the pattern, ``path`` is a prefix (a virtual directory) and the file keeps
    its path ``relative`` to the pattern's fixed leading directories; without one, ``path`` is
    the blob name, unless it is empty or ends with ``/`` (then the file's name is appended).
    """
    if wildcard or not path or path.endswith("/"):
        return f"{path}{relative}" if path.endswith("/") or not path else f"{path}/{relative}"
    return path


def batch_output_path(pattern: str, prefix: str) -> str | None:
    """Batch's ``OutputFile.path`` giving the blob names :func:`output_blob_name` gives for ``prefix``.

    With a wildcard, Batch treats ``path`` as a virtual directory and adds the '/' itself.
    Without one, ``path`` is the blob name, so a prefix ending in '/' gets the file's name.
    """
    if pattern_base(pattern)[1]:
        return prefix.rstrip("/") or None
    if not prefix or prefix.endswith("/"):
        return prefix + pattern.rsplit("/", 1)[-1]
    return prefix


def is_output_blob(pattern: str, prefix: str, name: str) -> bool:
    """Whether blob ``name`` is one an output of ``pattern`` uploaded under ``prefix`` would have (the
    inverse of :func:`output_blob_name`): how ``download`` tells a current output from a blob an
    older outputs spec left under the same prefix."""
    fixed, wildcard = pattern_base(pattern)
    if not wildcard:
        return name == output_blob_name(prefix, pattern.rsplit("/", 1)[-1], wildcard=False)
    folder = prefix if not prefix or prefix.endswith("/") else f"{prefix}/"
    if not name.startswith(folder) or name == folder:
        return False
    relative = name[len(folder):]
    return glob_matches(f"{fixed}/{relative}" if fixed else relative, pattern)


# ----------------------------------------------------------------------------------------------- logs
LogStream = Literal["stdout", "stderr"]
LOG_STREAMS: tuple[str, ...] = get_args(LogStream)
LOG_FILES_PATTERN = "../std*.txt"  # the task dir's logs, as an OutputFile pattern (from the working dir)
STDERR_TAIL_BYTES = 8 * 1024  # how much of the end of stderr a failed task's result carries


def log_file_name(stream: str) -> str:
    """The log's file name in the task dir (Batch's), and the last part of its blob name."""
    if stream not in LOG_STREAMS:
        raise ValueError(f"log stream must be one of {', '.join(LOG_STREAMS)}, not {stream!r}")
    return f"{stream}.txt"


def log_prefix(job_id: str, task_id: str | None = None) -> str:
    """The log container's folder of a task's logs (no trailing '/'), or of a job's (with one)."""
    return f"{job_id}/" if task_id is None else f"{job_id}/{task_id}"


def log_blob_name(job_id: str, task_id: str, stream: str) -> str:
    """A task's log in the log container: ``{job}/{task}/{stream}.txt``."""
    return f"{log_prefix(job_id, task_id)}/{log_file_name(stream)}"


def tail_offset(size: int) -> int:
    """Where the stderr tail of a log of ``size`` bytes starts."""
    return max(0, size - STDERR_TAIL_BYTES)


def tail_text(data: bytes) -> str:
    """The stderr tail as text a result may carry: the last bytes, decoded, with no secret."""
    return redact(data[-STDERR_TAIL_BYTES:].decode("utf-8", errors="replace"))


# -------------------------------------------------------------------------------------- command lines
def join_command_line(argv: Sequence[str]) -> str:
    """Batch's ``commandLine`` for ``argv``: each argument quoted POSIX-style, so it arrives whole."""
    return shlex.join(argv)


def split_command_line(command_line: str) -> tuple[str, ...]:
    """The argv of a ``commandLine``: POSIX ``shlex.split``, as Batch on Linux runs it (no shell).

    Raises ValueError naming what is wrong (unbalanced quotes, nothing to run).
    """
    try:
        argv = tuple(shlex.split(command_line, posix=True))
    except ValueError as exc:
        raise ValueError(f"cannot be split into arguments ({exc})") from None
    if not argv:
        raise ValueError("is empty")
    return argv


# -------------------------------------------------------------------------------------------- records
def now_iso() -> str:
    """A record's timestamp: UTC, ISO 8601, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def attempt_record(number: int, *, started_at: str | None, ended_at: str | None, exit_code: int | None,
                   category: str | None = None, reason: str | None = None, node_id: str = "",
                   slot: int = 0) -> dict[str, Any]:
    """One attempt's record, as every backend stores and reports it (``attempt_records``)."""
    return {"number": number, "started_at": started_at, "ended_at": ended_at, "exit_code": exit_code,
            "failure_category": category, "failure_message": reason, "node_id": node_id, "slot": slot}


def final_record(category: str | None, reason: str | None, *, attempts: Sequence[Mapping[str, Any]],
                 ended_at: str | None = None, **facts: Any) -> dict[str, Any]:
    """A task's one final record: succeeded when ``category`` is None, else failed with it.

    ``attempts`` are :func:`attempt_record` dicts; ``facts`` add what is known besides (exit_code,
    stderr_tail, node_id, started_at). ``reason`` is redacted: a record never holds a secret.
    """
    return {"state": "succeeded" if category is None else "failed", "failure_category": category,
            "failure_message": redact(reason) if reason else reason, "ended_at": ended_at or now_iso(),
            "attempts_json": list(attempts), **facts}


# --------------------------------------------------------------------------------------- dependencies
# A task's dependsOn.taskIds may hold at most this many characters in all (the ids' lengths added
# up); more is refused with 400 TaskDependencyListTooLong. Ranges (dependsOn.taskIdRanges) name
# only integer ids, which batchyard's task ids are not.
MAX_DEPENDENCY_ID_CHARS = 64_000
# What a dependent task batchyard adds names at most: Azure asks for "slightly less" than the limit
# (its stored form has some overhead), so a quarter is left free.
DEPENDENCY_ID_BUDGET = 48_000
TASK_DEPENDENCIES_NOT_ON_JOB = "TaskDependenciesNotSpecifiedOnJob"  # dependsOn in a job without them
DEPENDENCY_LIST_TOO_LONG = "TaskDependencyListTooLong"
