"""The azure backend's side of ``batchyard debug``: one task, read from Azure Batch itself.

Batch's task is the truth of what ran on the node: its command line (with batchyard's output
check around the command, when the job has required outputs), resource files, environment
settings and container image, under its job's common environment. The job document on the
storage account says what batchyard asked for at the last submit, which a re-submit may have
changed since; Batch keeps each task as it was added. So the definition comes from Batch, and
only the blobs' SAS URLs are turned back into (container, blob) on the user's storage account:
the replay reads them with the user's credentials, as the task's SAS may have expired.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from azure.batch import BatchClient
from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends.azure.tasks import JobFacts, batch_error, enum_text, task_result
from batchyard.backends.base import TaskReplay
from batchyard.backends.documents import JobDocuments
from batchyard.core.batch_semantics import split_command_line
from batchyard.core.config import Config
from batchyard.core.errors import BackendError, BatchyardError, JobNotFoundError, TaskNotFoundError
from batchyard.node.taskspec import NodeContext, ResourceFile, TaskSpec
from batchyard.storage.account import Storage

# Batch reports a task without a wall-clock limit with its largest duration (P10675199DT2H48M5.4775807S).
UNLIMITED = timedelta(days=10_675_199)


def replay_task(client: BatchClient, storage: Storage, config: Config, documents: JobDocuments, job_id: str,
                task_id: str, *, node_root: Path, batch_job_ids: list[str],
                facts: Callable[[str, str], JobFacts]) -> TaskReplay:
    """``task_id`` of ``job_id`` as Batch holds it (:meth:`batchyard.backends.base.Backend.replay_task`):
    from the newest of the job's Batch jobs (``batch_job_ids``, newest first: one per run) that has
    it; ``facts`` for its recorded result. ``documents`` say where the job's resource files live, so
    the other blob a task reads is known as its input."""
    found = None
    for batch_job_id in batch_job_ids or [job_id]:
        try:
            task = client.get_task(batch_job_id, task_id)
        except ResourceNotFoundError:
            continue
        except Exception as exc:
            raise batch_error(exc, f"reading task {task_id!r} of job {batch_job_id!r}") from None
        found = batch_job_id, task
        break
    if found is None:
        batch_job_id = (batch_job_ids or [job_id])[0]
        _read(lambda: client.get_job(batch_job_id), f"reading job {batch_job_id!r}",
              JobNotFoundError(f"job {job_id!r} not found on Azure Batch"))
        raise TaskNotFoundError(f"task {task_id!r} not found in job {job_id!r} on Azure Batch")
    batch_job_id, task = found
    batch_job = _read(lambda: client.get_job(batch_job_id), f"reading job {batch_job_id!r}",
                      JobNotFoundError(f"job {job_id!r} not found on Azure Batch"))
    try:
        argv = split_command_line(task.command_line or "")
    except ValueError as exc:
        raise BackendError(f"task {task_id!r} of job {job_id!r}: its command line {exc}") from None
    environment = {e.name: e.value or "" for e in batch_job.common_environment_settings or []}
    environment.update({e.name: e.value or "" for e in task.environment_settings or []})
    resources = tuple(_resource_file(rf, index, task_id, storage, documents.resource_blob(job_id, ""),
                                     documents.system_container)
                      for index, rf in enumerate(task.resource_files or []))
    wall_clock = getattr(task.constraints, "max_wall_clock_time", None)
    spec = TaskSpec(
        job_id=batch_job_id, task_id=task.id, argv=argv, environment=environment, resource_files=resources,
        max_wall_clock_seconds=wall_clock.total_seconds() if wall_clock and wall_clock < UNLIMITED else None,
        max_task_retry_count=0, keep_task_dir=True,
        container_image=getattr(task.container_settings, "image_name", None) or None,
        elevated=enum_text(getattr(getattr(task.user_identity, "auto_user", None), "elevation_level", None)) == "admin",
    )
    node_info = task.node_info
    pool_id = getattr(node_info, "pool_id", None) or getattr(batch_job.pool_info, "pool_id", None) or ""
    node = NodeContext(root=node_root, node_id=getattr(node_info, "node_id", None) or "", pool_id=pool_id,
                       account_name=config.azure.batch_account or "", account_url=config.azure.batch_url or "")
    return TaskReplay(spec=spec, node=node, result=task_result(job_id, task, facts(job_id, batch_job_id)),
                      source="its task and job on Azure Batch")


def _read(call: Callable[[], Any], what: str, missing: BatchyardError) -> Any:
    """One Batch read: ``missing`` when Batch has no such job or task, else a clear error naming ``what``."""
    try:
        return call()
    except ResourceNotFoundError:
        raise missing from None
    except Exception as exc:
        raise batch_error(exc, what) from None


def _resource_file(rf: Any, index: int, task_id: str, storage: Storage, resource_prefix: str,
                   system_container: str) -> ResourceFile:
    if not rf.http_url or not rf.file_path:
        raise BackendError(f"task {task_id!r}: resource file {index} is a container reference "
                           "(storageContainerUrl or autoStorageContainerName), which batchyard never adds; "
                           "`batchyard debug` replays the tasks batchyard submitted")
    reference = account_reference(rf.http_url, storage.account.blob_endpoint)
    if reference is None:  # not on the user's account: only its URL can read it
        return ResourceFile(file_path=rf.file_path, http_url=rf.http_url)
    container, blob = reference
    is_resource = container == system_container and blob.startswith(resource_prefix)
    return ResourceFile(file_path=rf.file_path, container=container, blob=blob, is_input=not is_resource)


def account_reference(url: str, blob_endpoint: str) -> tuple[str, str] | None:
    """(container, blob name) of a blob URL on the account whose blob endpoint is ``blob_endpoint``
    (host style, ``https://acct.blob.core.windows.net``, or path style, ``http://127.0.0.1:10000/acct``);
    None for a URL elsewhere. Its query (a SAS) is dropped."""
    blob, endpoint = urlsplit(url), urlsplit(blob_endpoint)
    if (blob.scheme.lower(), blob.netloc.lower()) != (endpoint.scheme.lower(), endpoint.netloc.lower()):
        return None
    base = endpoint.path.rstrip("/") + "/"
    if not blob.path.startswith(base):
        return None
    container, _, name = blob.path[len(base):].partition("/")
    return (container, unquote(name)) if container and name else None
