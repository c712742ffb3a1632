"""The final step where both backends keep it: its task, its files, its state, how ``status`` shows it.

Its files, in the system container under ``jobs/<job id>/final/``: the lister
(:mod:`batchyard.node.output_listing`) and ``locations.json``, which names each output location
of the job with a read+list SAS URL (a file on the storage account, never in a task record). Its
state (``final.json``, a backend state document): the fingerprint of the definition it last
ran with, whether this submission runs it, and why it did not run when it did not.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from batchyard.backends.base import FinalStepView, TaskCounts, TaskResult, dumps
from batchyard.backends.documents import JobDocuments
from batchyard.core.final_step import FINAL_TASK_ID, final_step_reruns
from batchyard.core.job import Job, TaskDef
from batchyard.core.placeholders import substitute_command

LISTER_TARGET = ".batchyard/output_listing.py"
LOCATIONS_TARGET = ".batchyard/locations.json"
STATE_NAME = "final.json"
FINAL_LABEL = "final step"


def final_task_def(job: Job) -> TaskDef:
    """The final step as a task: the lister, then the command (placeholders {job_id}, {task_id})."""
    assert job.final is not None
    argv = substitute_command(job.final.command, {"job_id": job.id, "task_id": FINAL_TASK_ID})
    return TaskDef(task_id=FINAL_TASK_ID, argv=("python3", LISTER_TARGET, LOCATIONS_TARGET, "--", *argv))


def final_as_job(job: Job) -> Job:
    """The job with the final step's outputs in place of the per-file ones (what builds its spec)."""
    assert job.final is not None
    return job.model_copy(update={"outputs": job.final.outputs})


def final_blob(job_id: str, target: str) -> str:
    return f"jobs/{job_id}/final/{Path(target).name}"


def upload_final_files(documents: JobDocuments, job: Job, *, lifetime: timedelta) -> list[tuple[str, str]]:
    """Upload the lister and the locations (SAS URLs valid for ``lifetime``); (target, blob) pairs
    in the system container."""
    assert job.final is not None
    from batchyard.node import output_listing

    storage = documents.storage
    locations = [{"container": container, "prefix": prefix,
                  "url": storage.container_sas_url(container, expiry=lifetime, permission="rl")}
                 for container, prefix in job.output_locations()]
    body = json.dumps({"stage": job.final.stage_outputs, "locations": locations}).encode()
    files = [(LISTER_TARGET, Path(output_listing.__file__).read_bytes()), (LOCATIONS_TARGET, body)]
    for target, data in files:
        storage.upload_bytes(documents.system_container, final_blob(job.id, target), data)
    return [(target, final_blob(job.id, target)) for target, _ in files]


# ------------------------------------------------------------------------------------------------ state
def load_state(documents: JobDocuments, job_id: str) -> dict[str, Any]:
    data = documents.load_backend_state(job_id, STATE_NAME)
    return json.loads(data) if data else {}


def save_state(documents: JobDocuments, job_id: str, state: dict[str, Any]) -> None:
    documents.save_backend_state(job_id, STATE_NAME, dumps(state).encode())


def plan_submission(documents: JobDocuments, job: Job, *, dependencies_reran: bool,
                    succeeded_before: bool) -> bool:
    """Decide (and record) whether this submission runs the final step."""
    assert job.final is not None
    state = load_state(documents, job.id)
    fingerprint = job.final.fingerprint()
    due = final_step_reruns(dependencies_reran=dependencies_reran, recorded_fingerprint=state.get("fingerprint"),
                            fingerprint=fingerprint, succeeded_before=succeeded_before)
    save_state(documents, job.id, {"fingerprint": fingerprint, "due": due})
    return due


def skip_reason(job: Job, counts: TaskCounts) -> str | None:
    """Why the final step does not run after these per-file counts (None: it runs)."""
    assert job.final is not None
    if counts.cancelled:
        return f"{counts.cancelled} task(s) cancelled"
    if job.final.run_when == "succeeded" and counts.failed:
        return f"{counts.failed} task(s) failed (run_when = 'succeeded')"
    return None


def view_of(job: Job, state: dict[str, Any], result: TaskResult | None, counts: TaskCounts) -> FinalStepView:
    assert job.final is not None
    run_when = job.final.run_when
    if state.get("skipped"):
        return FinalStepView("skipped", run_when, reason=state["skipped"], result=result)
    if not state.get("due", True):
        return FinalStepView("unchanged", run_when, reason="it succeeded before and nothing it depends on re-ran",
                             result=result)
    if result is not None and result.state != "pending":
        return FinalStepView(str(result.state), run_when, result=result)
    if counts.finished:
        reason = skip_reason(job, counts)
        if reason:
            return FinalStepView("skipped", run_when, reason=reason, result=result)
        return FinalStepView("pending", run_when, result=result)
    return FinalStepView("waiting", run_when, reason=f"{counts.total - counts.done} per-file task(s) not done",
                         result=result)
