"""A job's preparation and release tasks as a request states them: checked, with Azure's defaults.

From the REST reference of Add Job (``jobPreparationTask`` / ``jobReleaseTask``) and the SDK's
recorded ``test_batch_jobs``: the ids default to ``jobpreparation`` and ``jobrelease``; a release
task needs a preparation task; its ``maxWallClockTime`` defaults to, and may not exceed, 15
minutes; the preparation task waits for success and reruns after a reboot unless told otherwise.
A job GET echoes those defaults, so they are stored with the job.
"""

from __future__ import annotations

from typing import Any

from batchyard.emulator.batch.common import INFINITE_DURATION, BatchApiError, invalid, parse_duration
from batchyard.emulator.batch.translate import validate_task

PREP, RELEASE = "jobPreparationTask", "jobReleaseTask"
PREP_ID, RELEASE_ID = "jobpreparation", "jobrelease"
RELEASE_MAX_WALL_S = 15 * 60.0
AUTO_USER = {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}}


def _check(task: Any, prop: str, default_id: str, constraints: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(task, dict):
        raise invalid(f"{prop} must be an object", prop)
    body = {**task, "id": task.get("id", default_id), "constraints": constraints}
    try:
        validate_task(body, uses_dependencies=False)
    except BatchApiError as exc:  # name the property inside the job
        exc.values = [(k, f"{prop}.{v}" if k == "PropertyName" else v) for k, v in exc.values]
        raise
    for flag in ("waitForSuccess", "rerunOnNodeRebootAfterSuccess"):
        if flag in task and not isinstance(task[flag], bool):
            raise invalid(f"{prop}.{flag} must be true or false", f"{prop}.{flag}")
    return body


def check_prep_release(job: dict[str, Any]) -> None:
    """Check a job body's (or job specification's) preparation and release tasks; fill in Azure's defaults."""
    prep, release = job.get(PREP), job.get(RELEASE)
    if release is not None and prep is None:
        raise BatchApiError(400, "MissingRequiredProperty", "A Job Release Task cannot be specified without also "
                            "specifying a Job Preparation Task for the Job.", [("PropertyName", PREP)])
    if prep is not None:
        constraints = prep.get("constraints") if isinstance(prep, dict) else None
        checked = _check(prep, PREP, PREP_ID, dict(constraints or {}))
        limits = dict(checked["constraints"])
        limits.setdefault("maxWallClockTime", INFINITE_DURATION)
        limits.setdefault("retentionTime", "P7D")
        limits.setdefault("maxTaskRetryCount", 0)
        job[PREP] = {**checked, "constraints": limits, "userIdentity": prep.get("userIdentity") or AUTO_USER,
                     "waitForSuccess": prep.get("waitForSuccess", True),
                     "rerunOnNodeRebootAfterSuccess": prep.get("rerunOnNodeRebootAfterSuccess", True)}
    if release is not None:
        if not isinstance(release, dict):
            raise invalid(f"{RELEASE} must be an object", RELEASE)
        wall = parse_duration(release.get("maxWallClockTime", "PT15M"), f"{RELEASE}.maxWallClockTime")
        if wall is None or wall > RELEASE_MAX_WALL_S:
            raise invalid(f"{RELEASE}.maxWallClockTime may not exceed 15 minutes", f"{RELEASE}.maxWallClockTime")
        parse_duration(release.get("retentionTime"), f"{RELEASE}.retentionTime")
        checked = _check(release, RELEASE, RELEASE_ID, {"maxWallClockTime": release.get("maxWallClockTime", "PT15M")})
        checked.pop("constraints")
        job[RELEASE] = {**checked, "maxWallClockTime": release.get("maxWallClockTime", "PT15M"),
                        "retentionTime": release.get("retentionTime", "P7D"),
                        "userIdentity": release.get("userIdentity") or AUTO_USER}
        if job[RELEASE]["id"].lower() == job[PREP]["id"].lower():
            raise invalid(f"{RELEASE}.id must differ from {PREP}.id", f"{RELEASE}.id")


def reserved_task_id(job: dict[str, Any], task_id: str) -> BatchApiError | None:
    """The 409 Azure answers when a task takes the id of the job's preparation or release task."""
    for key, code in ((PREP, "TaskIdSameAsJobPreparationTask"), (RELEASE, "TaskIdSameAsJobReleaseTask")):
        special = job.get(key)
        if special and str(special.get("id", "")).lower() == task_id.lower():
            return BatchApiError(409, code, f"The specified task id is the same as the job's {key}.",
                                 [("TaskId", task_id)])
    return None
