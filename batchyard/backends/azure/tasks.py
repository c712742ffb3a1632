"""The azure backend's job/task translation: batchyard's job model <-> Azure Batch tasks.

Pure functions (adding them is :mod:`batchyard.backends.azure.adder`): nothing here decides
*which* tasks to add; :mod:`batchyard.backends.azure.backend` does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from azure.batch import models as bm
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

from batchyard.backends.base import TaskResult, TaskState
from batchyard.core.batch_semantics import (
    LOG_FILES_PATTERN,
    OUTPUT_MISSING_EXIT,
    BatchFailure,
    attempt_record,
    batch_output_path,
    category_of,
    join_command_line,
    log_prefix,
)
from batchyard.core.errors import (
    AuthenticationError,
    BackendError,
    JobNotFoundError,
    JobValidationError,
    TaskNotFoundError,
)
from batchyard.core.job import Job, TaskDef, output_prefix
from batchyard.core.redact import redact

log = logging.getLogger(__name__)

REQUIRED_OUTPUTS_ENV = "BATCHYARD_REQUIRED_OUTPUTS"
# A task's fingerprint (core/rerun.py), kept in its own Batch record: a task cannot be changed once added.
FINGERPRINT_ENV = "BATCHYARD_FINGERPRINT"
WEEK = timedelta(days=7)
MAX_DISPLAY_NAME = 1024

# Runs "$@" (the real argv, never re-parsed by a shell), then checks each required pattern; exits
# OUTPUT_MISSING_EXIT when one matched nothing.
# Patterns come newline-separated in $BATCHYARD_REQUIRED_OUTPUTS; globbing is off while splitting
# (set -f) so a pattern is only expanded once, by the inner for loop.
_CHECK_SCRIPT = (
    '"$@"; rc=$?; [ "$rc" -ne 0 ] && exit "$rc"; '
    'nl=$(printf "\\nx"); nl=${nl%x}; set -f; IFS=$nl; '
    f"for p in ${REQUIRED_OUTPUTS_ENV}; do "
    'set +f; found=; for f in $p; do if [ -e "$f" ]; then found=1; break; fi; done; set -f; '
    'if [ -z "$found" ]; then printf "batchyard: output pattern \'%s\' matched no file\\n" "$p" >&2; '
    f"exit {OUTPUT_MISSING_EXIT}; fi; done; exit 0"
)
_MISSING_RE = re.compile(r"batchyard: output pattern '(.*)' matched no file")
# A SAS URL refused by storage: Batch's access-denied codes, or a 403 in an upload failure's details.
SAS_DENIED_CODES = ("BlobAccessDenied", "ResourceContainerAccessDenied")
_DENIED_TEXT = re.compile(r"\b403\b|AuthenticationFailed|AuthorizationFailure|AuthorizationPermissionMismatch|"
                          r"refused the credentials", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------- errors
def batch_error(exc: BaseException, what: str) -> Exception:
    """An SDK exception as a batchyard error naming ``what``, with no key or SAS in its message."""
    if isinstance(exc, HttpResponseError) and exc.status_code == 403:
        return AuthenticationError(
            f"{what}: Azure Batch refused the credentials (HTTP 403 {_code(exc) or ''}). Check the Batch "
            "account key (BATCHYARD_BATCH_KEY or [azure] batch_key) and the account name "
            "(BATCHYARD_BATCH_ACCOUNT or [azure] batch_account)."
        )
    if isinstance(exc, ClientAuthenticationError):
        return AuthenticationError(f"{what}: authentication failed ({first_line(exc)}). With no Batch key, "
                                   "batchyard uses DefaultAzureCredential: log in (az login) or set the key.")
    if isinstance(exc, ServiceRequestError):
        if "bearer token" in str(exc).lower():
            return AuthenticationError(f"{what}: token credentials need an https Batch URL; for an http "
                                       "endpoint (an emulator) set the Batch account key (BATCHYARD_BATCH_KEY).")
        return BackendError(f"{what}: the Batch endpoint is unreachable ({first_line(exc)}); check "
                            "BATCHYARD_BATCH_URL or [azure] batch_url")
    if isinstance(exc, HttpResponseError):
        code = _code(exc)
        if code in ("JobNotFound",):
            return JobNotFoundError(f"{what}: the job does not exist on Azure Batch")
        if code == "TaskNotFound":
            return TaskNotFoundError(f"{what}: the task does not exist on Azure Batch")
        return BackendError(f"{what}: Azure Batch answered {exc.status_code} {code or ''}: {_message(exc)}")
    return BackendError(f"{what}: {type(exc).__name__}: {first_line(exc)}")


def _code(exc: HttpResponseError) -> str | None:
    error = getattr(exc, "error", None)
    return getattr(error, "code", None) if error is not None else None


def _message(exc: HttpResponseError) -> str:
    error = getattr(exc, "error", None)
    text = getattr(error, "message", None) or exc.reason or ""
    return redact(str(text).split("\nRequestId:", 1)[0].strip())


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact(text.splitlines()[0] if text else type(exc).__name__)


def enum_text(value: Any) -> str:
    """An SDK enum (or plain string) as its wire value: ``str()`` of a str-Enum gives ``Cls.MEMBER``."""
    if value is None:
        return ""
    return str(getattr(value, "value", value)).lower()


def error_code(exc: BaseException) -> str | None:
    return _code(exc) if isinstance(exc, HttpResponseError) else None


# ---------------------------------------------------------------------------------------------- SAS
def sas_lifetime(job: Job, *, margin: timedelta) -> tuple[timedelta, list[str]]:
    """How long the task SAS URLs must live, and the warnings to log about it.

    Every attempt may run up to max_wall_clock_time, so (retries + 1) x limit + margin; the
    margin covers the time a task waits for a node. Without a limit nothing bounds a task, so a week.
    """
    c = job.constraints
    warnings: list[str] = []
    if c.max_wall_clock_time is None or c.max_task_retry_count < 0:
        warnings.append(f"job {job.id}: tasks without max_wall_clock_time (or with unlimited retries) get "
                        "week-long SAS URLs; set [constraints] max_wall_clock_time to shorten them")
        return WEEK, warnings
    lifetime = timedelta(seconds=(c.max_task_retry_count + 1) * c.max_wall_clock_time) + margin
    if lifetime > WEEK:
        warnings.append(f"job {job.id}: task SAS URLs live {lifetime} (over 7 days) because of "
                        "max_wall_clock_time x (max_task_retry_count + 1)")
    return lifetime, warnings


# ---------------------------------------------------------------------------------------------- tasks
def required_patterns(job: Job) -> list[str]:
    patterns = job.required_patterns()
    for p in patterns:
        if "\n" in p:
            raise JobValidationError(f"job {job.id}", [("outputs", f"pattern {p!r} contains a newline")])
    return patterns


def command_line(argv: Sequence[str], required: Sequence[str]) -> str:
    """The task's command line: argv quoted POSIX-style, wrapped in the output check when needed."""
    if not required:
        return join_command_line(argv)
    return join_command_line(["/bin/sh", "-c", _CHECK_SCRIPT, "batchyard-task", *argv])


def _upload_condition(upload_on: str) -> bm.OutputFileUploadCondition:
    return {"success": bm.OutputFileUploadCondition.TASK_SUCCESS,
            "failure": bm.OutputFileUploadCondition.TASK_FAILURE,
            "completion": bm.OutputFileUploadCondition.TASK_COMPLETION}[upload_on]


@dataclass(frozen=True)
class TaskUrls:
    """SAS URLs shared by every task of one submit (made once: signing is not free)."""

    resource_files: tuple[tuple[str, str], ...]  # (file_path, url)
    output_containers: dict[str, str] = field(repr=False)  # container -> create/write SAS URL
    log_container_url: str = field(repr=False, default="")


def build_task(job: Job, task: TaskDef, *, urls: TaskUrls, input_url: str | None, required: Sequence[str],
               registry: bm.ContainerRegistryReference | None = None) -> bm.BatchTaskCreateOptions:
    """One Batch task; ``registry``: the private registry of the job's container image, if any."""
    resource_files = [bm.ResourceFile(http_url=url, file_path=path) for path, url in urls.resource_files]
    if input_url is not None and task.input_path is not None:
        resource_files.insert(0, bm.ResourceFile(http_url=input_url, file_path=task.input_path))
    outputs = []
    for out in job.outputs:
        path = batch_output_path(out.pattern, output_prefix(job, out, task))
        outputs.append(bm.OutputFile(
            file_pattern=out.pattern,
            destination=bm.OutputFileDestination(container=bm.OutputFileBlobContainerDestination(
                container_url=urls.output_containers[out.container], path=path)),
            upload_options=bm.OutputFileUploadConfiguration(upload_condition=_upload_condition(out.upload_on)),
        ))
    # stdout/stderr kept in the log container, so `logs` works after the node is gone.
    outputs.append(bm.OutputFile(
        file_pattern=LOG_FILES_PATTERN,
        destination=bm.OutputFileDestination(container=bm.OutputFileBlobContainerDestination(
            container_url=urls.log_container_url, path=log_prefix(job.id, task.task_id))),
        upload_options=bm.OutputFileUploadConfiguration(upload_condition=bm.OutputFileUploadCondition.TASK_COMPLETION),
    ))
    env = [bm.EnvironmentSetting(name=k, value=v) for k, v in task.environment(job)]  # placeholders, columns
    if required:
        env.append(bm.EnvironmentSetting(name=REQUIRED_OUTPUTS_ENV, value="\n".join(required)))
    if task.fingerprint:
        env.append(bm.EnvironmentSetting(name=FINGERPRINT_ENV, value=task.fingerprint))
    c = job.constraints
    return bm.BatchTaskCreateOptions(
        id=task.task_id, display_name=task.label[:MAX_DISPLAY_NAME] or None,
        command_line=command_line(task.argv, required),
        resource_files=resource_files, output_files=outputs, environment_settings=env or None,
        constraints=bm.BatchTaskConstraints(
            max_wall_clock_time=timedelta(seconds=c.max_wall_clock_time) if c.max_wall_clock_time else None,
            retention_time=timedelta(seconds=c.retention_time) if c.retention_time else None,
            max_task_retry_count=c.max_task_retry_count,
        ),
        # Omitted, Batch runs the task as a non-admin auto-user (in a container too: not root).
        user_identity=bm.UserIdentity(auto_user=bm.AutoUserSpecification(
            scope=bm.AutoUserScope.POOL, elevation_level=bm.ElevationLevel.ADMIN)) if job.elevated else None,
        container_settings=bm.BatchTaskContainerSettings(
            image_name=job.container_image, working_directory=bm.ContainerWorkingDirectory.TASK_WORKING_DIRECTORY,
            registry=registry,
        ) if job.container_image else None,
    )


# ---------------------------------------------------------------------------------------------- results
def fingerprint_of(task: Any) -> str:
    """The fingerprint a task (a ``BatchTask`` or a ``WireView`` of one) was added with ("" for one
    added before fingerprints were kept)."""
    return next((str(s.value or "") for s in task.environment_settings or [] if s.name == FINGERPRINT_ENV), "")


_STATES = {"active": TaskState.PENDING, "preparing": TaskState.PENDING, "running": TaskState.RUNNING}


@dataclass(frozen=True)
class JobFacts:
    """What result conversion needs to know about the job (from its stored document)."""

    has_required_outputs: bool = False
    resource_names: tuple[str, ...] = ()  # resource file targets (a missing one is staging_failed)
    job_completed: bool = False  # a terminated job never starts its active tasks: they are cancelled


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") if value else None


def failure_category(info: Any, exit_code: int | None, facts: JobFacts) -> str:
    """batchyard's category of a failed task from the SDK's ``failure_info``."""
    failure = None
    if info is not None:
        detail = " ".join(str(getattr(d, "value", "")) for d in getattr(info, "details", None) or [])
        failure = BatchFailure(code=str(getattr(info, "code", "") or ""),
                               category=enum_text(getattr(info, "category", None)),
                               message=str(getattr(info, "message", "") or ""), detail=detail)
    return category_of(failure, exit_code, checks_outputs=facts.has_required_outputs,
                       resource_names=facts.resource_names)


def sas_refused(info: Any) -> bool:
    """Whether a task failed because storage refused one of its SAS URLs (HTTP 403)."""
    if info is None:
        return False
    code = str(getattr(info, "code", "") or "")
    if code in SAS_DENIED_CODES:
        return True
    detail = " ".join(str(getattr(d, "value", "")) for d in getattr(info, "details", None) or [])
    return code.startswith("FileUpload") and bool(_DENIED_TEXT.search(detail))


def sas_refused_text(info: Any) -> str:
    """What a refused SAS URL means here: never the account key (the node holds none), but the URL itself."""
    return (f"a SAS URL was refused (HTTP 403, {info.code}): it expired or lacks a permission. Its lifetime is "
            "(max_task_retry_count + 1) x max_wall_clock_time + [azure] sas_margin from the submit, so a task that "
            "waited longer for a node outlives it; `batchyard run` again issues fresh URLs for the tasks it re-runs")


def failure_text(info: Any) -> str | None:
    if info is None:
        return None
    parts = [str(info.message or info.code or "the task failed")]
    for d in info.details or []:
        parts.append(f"{d.name}: {d.value}" if d.name else str(d.value))
    return redact("; ".join(parts))


def task_result(job_id: str, task: Any, facts: JobFacts, *, stderr_tail: str = "") -> TaskResult:
    """The result of ``task`` (an SDK ``BatchTask`` or a ``WireView`` of Batch's JSON for one)."""
    ex = task.execution_info
    raw_state = enum_text(task.state) or "active"
    retries = int(getattr(ex, "retry_count", 0) or 0)
    started = getattr(ex, "start_time", None)
    attempts = retries + (1 if started or raw_state in ("running", "completed") else 0)
    exit_code = getattr(ex, "exit_code", None)
    category = message = None
    if raw_state == "completed":
        if enum_text(getattr(ex, "result", None)) == "success":
            state = TaskState.SUCCEEDED
        else:
            state = TaskState.FAILED
            category = failure_category(ex.failure_info, exit_code, facts)
            message = failure_text(ex.failure_info)
            if category in ("staging_failed", "upload_failed") and sas_refused(ex.failure_info):
                message = sas_refused_text(ex.failure_info)
            elif category == "output_missing":
                found = _MISSING_RE.search(stderr_tail)
                pattern = found.group(1) if found else "?"
                message = f"output pattern {pattern!r} matched no file in the working dir"
            elif category == "exit_code" and exit_code is not None:
                message = f"command exited with code {exit_code}"
    elif facts.job_completed and raw_state in _STATES and raw_state != "running":
        category, message = "cancelled", "the job was cancelled (terminated on Azure Batch)"
    else:
        state = _STATES.get(raw_state, TaskState.PENDING)
    if category == "cancelled":  # ended by a user's request, or never started by its terminated job
        state = TaskState.CANCELLED
    node_id = task.node_info.node_id if task.node_info else None
    ended = _iso(getattr(ex, "end_time", None))
    record = attempt_record(attempts, started_at=_iso(started), ended_at=ended, exit_code=exit_code,
                            category=category, reason=message, node_id=node_id or "")
    return TaskResult(
        job_id=job_id, task_id=task.id, state=state, label=task.display_name or "", exit_code=exit_code,
        failure_category=category, failure_message=message, attempts=attempts, started_at=_iso(started),
        ended_at=ended, node_id=node_id, stderr_tail=stderr_tail,
        attempt_records=(record,) if attempts else (),
    )
