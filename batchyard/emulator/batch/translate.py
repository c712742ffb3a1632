"""Batch task JSON <-> the shared runner's :class:`TaskSpec`, and runner records -> Batch's failureInfo
(the mapping itself is :mod:`batchyard.core.batch_semantics`).

Validation happens when a task is added (a bad task is a per-task ``clientError``, like
Azure); resource-file expansion (listing a container) happens on the node, just before
the task runs, because that is when Batch does it and when its failures belong to the task.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from batchyard.core import batch_semantics
from batchyard.core.batch_semantics import (
    DEPENDENCY_LIST_TOO_LONG,
    MAX_DEPENDENCY_ID_CHARS,
    TASK_DEPENDENCIES_NOT_ON_JOB,
    BatchFailure,
    batch_exit_code,
    batch_failure,
    staging_code,
)
from batchyard.core.errors import BatchyardError
from batchyard.core.paths import safe_relative_path
from batchyard.emulator.batch.common import BatchApiError, check_id, invalid, parse_duration, require, unsupported
from batchyard.node.taskspec import AttemptRecord, OutputFile, ResourceFile, TaskSpec
from batchyard.storage.account import Storage
from batchyard.storage.transfer import BlobTransfer

UPLOAD_CONDITIONS = {"tasksuccess": "success", "taskfailure": "failure", "taskcompletion": "completion"}
# Fields Azure honours that an emulated node cannot: refused so nobody gets a silent wrong answer.
REFUSED_TASK_FIELDS = {
    "multiInstanceSettings": "multi-instance (MPI) tasks",
    "applicationPackageReferences": "application packages",
    "authenticationTokenSettings": "task authentication tokens",
}


class StagingError(Exception):
    """Resource-file expansion failed on the node: carries Batch's failureInfo."""

    def __init__(self, failure: BatchFailure) -> None:
        super().__init__(failure.detail or failure.message)
        self.failure = failure


def split_command_line(command_line: str, prop: str = "commandLine") -> tuple[str, ...]:
    """The argv of a command line (see :func:`batchyard.core.batch_semantics.split_command_line`:
    no shell runs; use ``/bin/sh -c '...'`` for shell features); a bad one is a 400 naming ``prop``."""
    try:
        return batch_semantics.split_command_line(command_line)
    except ValueError as exc:
        raise invalid(f"{prop} {exc}", prop) from None


def _check_resource_file(rf: Any, prop: str) -> None:
    if not isinstance(rf, dict):
        raise invalid(f"{prop} must be an object", prop)
    sources = [k for k in ("httpUrl", "storageContainerUrl", "autoStorageContainerName") if rf.get(k)]
    if len(sources) != 1:
        raise invalid(f"{prop}: exactly one of httpUrl, storageContainerUrl, autoStorageContainerName "
                      "must be given", prop)
    if rf.get("identityReference"):
        raise unsupported("managed identities on resource files", f"{prop}.identityReference")
    if sources[0] == "httpUrl":
        require(rf, "filePath")
    if rf.get("filePath"):
        try:
            safe_relative_path(rf["filePath"], what=prop)
        except BatchyardError as exc:
            raise invalid(str(exc), f"{prop}.filePath") from None


def _check_output_file(of: Any, prop: str) -> None:
    if not isinstance(of, dict):
        raise invalid(f"{prop} must be an object", prop)
    require(of, "filePattern")
    dest = require(of, "destination", dict)
    container = require(dest, "container", dict)
    require(container, "containerUrl")
    if container.get("identityReference"):
        raise unsupported("managed identities on output files", f"{prop}.destination.container.identityReference")
    options = require(of, "uploadOptions", dict)
    condition = str(require(options, "uploadCondition")).lower()
    if condition not in UPLOAD_CONDITIONS:
        raise invalid(f"{prop}.uploadOptions.uploadCondition must be one of {', '.join(UPLOAD_CONDITIONS)}",
                      f"{prop}.uploadOptions.uploadCondition")


def check_registry(reg: Any, prop: str) -> None:
    """A ContainerRegistryReference: username and password, or identityReference (accepted, never used:
    the emulator runs images already on the local Docker engine and never pulls)."""
    if not isinstance(reg, dict):
        raise invalid(f"{prop} must be an object", prop)
    for key in ("registryServer", "username", "password"):
        if reg.get(key) is not None and not isinstance(reg[key], str):
            raise invalid(f"{prop}.{key} must be a string", f"{prop}.{key}")
    identity = reg.get("identityReference")
    if identity is not None:
        if not isinstance(identity, dict) or not isinstance(identity.get("resourceId"), str):
            raise invalid(f"{prop}.identityReference needs a resourceId", f"{prop}.identityReference.resourceId")
    elif not reg.get("username") or not reg.get("password"):
        # Never the value itself in the message: it may be a password.
        missing = "password" if reg.get("username") else "username"
        raise invalid(f"{prop} needs username and password, or identityReference", f"{prop}.{missing}")


def check_container_settings(settings: Any, prop: str = "containerSettings") -> None:
    if not isinstance(settings, dict):
        raise invalid(f"{prop} must be an object", prop)
    if not isinstance(settings.get("imageName"), str) or not settings["imageName"]:
        raise invalid(f"{prop}.imageName is required", f"{prop}.imageName")
    if settings.get("registry") is not None:
        check_registry(settings["registry"], f"{prop}.registry")


def _check_dependencies(body: dict[str, Any], *, uses_dependencies: bool) -> None:
    """dependsOn and exitConditions' dependencyAction as Azure checks them when a task is added."""
    depends_on = body.get("dependsOn")
    if depends_on:
        if not uses_dependencies:
            raise BatchApiError(400, TASK_DEPENDENCIES_NOT_ON_JOB,
                                "The specified task has dependencies but the job does not set "
                                "usesTaskDependencies to true.", [("TaskId", body["id"])])
        if not isinstance(depends_on, dict):
            raise invalid("dependsOn must be an object", "dependsOn")
        ids = depends_on.get("taskIds") or []
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise invalid("dependsOn.taskIds must be a list of task ids", "dependsOn.taskIds")
        if sum(map(len, ids)) > MAX_DEPENDENCY_ID_CHARS:
            raise BatchApiError(400, DEPENDENCY_LIST_TOO_LONG,
                                "The task's dependency list is too long to be stored: its task ids add up to "
                                f"{sum(map(len, ids)):,} characters, at most {MAX_DEPENDENCY_ID_CHARS:,}. "
                                "Consider task id ranges instead.", [("TaskId", body["id"])])
        for rng in depends_on.get("taskIdRanges") or []:
            if not isinstance(rng, dict) or not isinstance(rng.get("start"), int) \
                    or not isinstance(rng.get("end"), int):
                raise invalid("taskIdRanges entries need integer start and end", "dependsOn.taskIdRanges")
    conditions = body.get("exitConditions") or {}
    options = [conditions.get(k) for k in ("preProcessingError", "fileUploadError", "default")]
    options += [(e or {}).get("exitOptions") for e in (conditions.get("exitCodes") or [])]
    options += [(e or {}).get("exitOptions") for e in (conditions.get("exitCodeRanges") or [])]
    for option in options:
        action = (option or {}).get("dependencyAction") if isinstance(option, dict) else None
        if action is None:
            continue
        if not uses_dependencies:  # Azure: an invalid property value when the job has no dependencies
            raise invalid("dependencyAction needs a job with usesTaskDependencies set to true",
                          "exitConditions.dependencyAction")
        if action not in ("satisfy", "block"):
            raise invalid("dependencyAction must be satisfy or block", "exitConditions.dependencyAction")


def validate_task(body: Any, *, uses_dependencies: bool) -> dict[str, Any]:
    """Check a task body as Batch would on add; returns it (the stored spec)."""
    if not isinstance(body, dict):
        raise invalid("A task must be a JSON object.", "value")
    check_id(require(body, "id"))
    split_command_line(require(body, "commandLine"))
    for name, what in REFUSED_TASK_FIELDS.items():
        if body.get(name):
            raise unsupported(what, name)
    if body.get("containerSettings") is not None:
        check_container_settings(body["containerSettings"])
    for i, rf in enumerate(body.get("resourceFiles") or []):
        _check_resource_file(rf, f"resourceFiles[{i}]")
    for i, of in enumerate(body.get("outputFiles") or []):
        _check_output_file(of, f"outputFiles[{i}]")
    for i, env in enumerate(body.get("environmentSettings") or []):
        if not isinstance(env, dict) or not isinstance(env.get("name"), str):
            raise invalid("environmentSettings entries need a name", f"environmentSettings[{i}].name")
    constraints = body.get("constraints") or {}
    parse_duration(constraints.get("maxWallClockTime"), "constraints.maxWallClockTime")
    parse_duration(constraints.get("retentionTime"), "constraints.retentionTime")
    retries = constraints.get("maxTaskRetryCount", 0)
    if not isinstance(retries, int) or retries < -1:
        raise invalid("constraints.maxTaskRetryCount must be an integer >= -1", "constraints.maxTaskRetryCount")
    slots = body.get("requiredSlots", 1)
    if not isinstance(slots, int) or slots < 1:
        raise invalid("requiredSlots must be a positive integer", "requiredSlots")
    _check_dependencies(body, uses_dependencies=uses_dependencies)
    return body


def output_files(body: dict[str, Any]) -> tuple[OutputFile, ...]:
    out = []
    for of in body.get("outputFiles") or []:
        container = of["destination"]["container"]
        out.append(OutputFile(
            pattern=of["filePattern"], path=container.get("path") or "",
            upload_on=UPLOAD_CONDITIONS[str(of["uploadOptions"]["uploadCondition"]).lower()],  # type: ignore[arg-type]
            # Azure Batch uploads what matches and never fails a task for a pattern that matched
            # nothing; batchyard's azure backend adds its own check for required outputs.
            optional=True, container_url=container["containerUrl"],
        ))
    return tuple(out)


def _blob_url(container_url: str, name: str) -> str:
    parts = urlsplit(container_url)
    path = parts.path.rstrip("/") + "/" + quote(name, safe="/")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _joined(directory: str | None, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}" if directory else name


def expand_resource_files(body: dict[str, Any], transfer: BlobTransfer,
                          storage: Storage | None) -> tuple[ResourceFile, ...]:
    """Resolve container references to one :class:`ResourceFile` per blob (node side)."""
    out: list[ResourceFile] = []
    for rf in body.get("resourceFiles") or []:
        if rf.get("httpUrl"):
            out.append(ResourceFile(file_path=rf["filePath"], http_url=rf["httpUrl"]))
            continue
        prefix = rf.get("blobPrefix") or ""
        try:
            if rf.get("storageContainerUrl"):
                url = rf["storageContainerUrl"]
                names = transfer.list_names(url, prefix)
                out += [ResourceFile(file_path=_joined(rf.get("filePath"), n), http_url=_blob_url(url, n))
                        for n in names]
            else:
                container = rf["autoStorageContainerName"]
                if storage is None:
                    raise StagingError(batch_failure(
                        "staging_failed", code="ResourceContainerAccessDenied",
                        detail="no storage account is linked to the emulator (autoStorageContainerName)"))
                names = list(storage.list_blob_names(container, prefix))
                out += [ResourceFile(file_path=_joined(rf.get("filePath"), n), container=container, blob=n)
                        for n in names]
        except BatchyardError as exc:
            raise StagingError(batch_failure("staging_failed", code=staging_code(exc, listing=True),
                                             detail=str(exc))) from None
    return tuple(out)


def task_spec(job_id: str, body: dict[str, Any], resource_files: tuple[ResourceFile, ...],
              job_retry_default: int = 0) -> TaskSpec:
    constraints = body.get("constraints") or {}
    env = {e["name"]: str(e.get("value") or "") for e in body.get("environmentSettings") or []}
    return TaskSpec(
        job_id=job_id, task_id=body["id"], argv=split_command_line(body["commandLine"]),
        environment=env, resource_files=resource_files, output_files=output_files(body),
        max_wall_clock_seconds=parse_duration(constraints.get("maxWallClockTime"), "constraints.maxWallClockTime"),
        max_task_retry_count=int(constraints.get("maxTaskRetryCount", job_retry_default)),
        keep_task_dir=True,  # Batch keeps it for retentionTime; we keep it until the job is deleted
        # Runs in the image on the local Docker engine (registry and run options ignored: never pulled).
        container_image=(body.get("containerSettings") or {}).get("imageName") or None,
        elevated=_elevation(body) == "admin",
    )


def _elevation(body: dict[str, Any]) -> str:
    """The task user's elevationLevel (Batch's default: a non-admin auto-user)."""
    identity = body.get("userIdentity") or {}
    return str((identity.get("autoUser") or {}).get("elevationLevel") or "nonadmin").lower()


def failure_info(record: AttemptRecord) -> dict[str, Any] | None:
    """The attempt's failure as Batch's failureInfo JSON (None when it succeeded)."""
    if record.failure_category is None:
        return None
    return batch_failure(record.failure_category, code=record.batch_code, detail=record.failure_message).to_json()


def exit_code(record: AttemptRecord) -> int | None:
    return batch_exit_code(record.exit_code)
