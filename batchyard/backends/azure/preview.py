"""What the azure backend would send for a job, without sending anything (``batchyard plan``).

Reached through :meth:`AzureBackend.preview_submit`, so the plan needs nothing of this package
but the registry. Sizes are exact: they are the bytes of each task in an add-collection
request as the SDK serializes it, with SAS URLs as long as real ones. Building every task as
an SDK model costs about a millisecond, too much for a million tasks, so one task of each
shape (which optional fields it has) is built and serialized; another task of that shape
differs from it only in the strings that vary per task, and JSON encodes each string on its
own, so its size is the reference's plus the difference of those strings' encoded lengths.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from json.encoder import encode_basestring_ascii

from azure.storage.blob import (
    BlobClient,
    BlobSasPermissions,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)

from batchyard.backends.azure.tasks import (
    MAX_DISPLAY_NAME,
    REQUIRED_OUTPUTS_ENV,
    TaskUrls,
    batch_output_path,
    build_task,
    command_line,
    required_patterns,
    sas_lifetime,
)
from batchyard.core.job import Job, TaskDef, output_prefix

DUMMY_KEY = "A" * 88  # a well-formed (base64) key: only the SAS token's length matters here

Shape = tuple[bool, bool, tuple[bool, ...], int, bool]


@dataclass
class SubmitPreview:
    """The SAS lifetime submit would choose, the output patterns its wrapper checks, and each task's size."""

    job: Job
    lifetime: timedelta
    lifetime_warnings: list[str]
    required: list[str]
    urls: TaskUrls = field(repr=False)
    blob_url: Callable[[str, str], str] = field(repr=False)
    _references: dict[Shape, tuple[int, list[int]]] = field(default_factory=dict, repr=False)

    @property
    def extra_env(self) -> dict[str, str]:
        """Variables submit adds to every task's environment."""
        return {REQUIRED_OUTPUTS_ENV: "\n".join(self.required)} if self.required else {}

    def request_size(self, task: TaskDef) -> int:
        """Bytes of ``task`` in an add-collection request (UTF-8 JSON, as the SDK sends it)."""
        input_url = (self.blob_url(task.input_container, task.input_blob)
                     if task.input_blob is not None and task.input_container is not None else None)
        shape, strings = self._varying(task, input_url)
        # The SDK's json.dumps keeps ensure_ascii: a string is encoded by this function, its length in bytes.
        lengths = [len(encode_basestring_ascii(s)) for s in strings]
        reference = self._references.get(shape)
        if reference is None:
            options = build_task(self.job, task, urls=self.urls, input_url=input_url, required=self.required)
            reference = (len(json.dumps(options.as_dict(exclude_readonly=True)).encode()), lengths)
            self._references[shape] = reference
        size, reference_lengths = reference
        return size + sum(lengths) - sum(reference_lengths)

    def _varying(self, task: TaskDef, input_url: str | None) -> tuple[Shape, list[str]]:
        """The strings of build_task's result that change from task to task, and the task's shape."""
        display = task.label[:MAX_DISPLAY_NAME]
        paths = [batch_output_path(out.pattern, output_prefix(self.job, out, task)) for out in self.job.outputs]
        strings = [task.task_id, display, command_line(task.argv, self.required), f"{self.job.id}/{task.task_id}"]
        if input_url is not None and task.input_path is not None:
            strings += [input_url, task.input_path]
        strings += [p for p in paths if p is not None]
        variables = task.environment(self.job)
        strings += [piece for pair in variables for piece in pair]
        if task.fingerprint:
            strings.append(task.fingerprint)
        shape = (bool(display), input_url is not None and task.input_path is not None,
                 tuple(p is None for p in paths), len(variables), bool(task.fingerprint))
        return shape, strings


def preview_submit(job: Job, *, sas_margin: timedelta, account_url: str, system_container: str,
                   log_container: str) -> SubmitPreview:
    """The preview of submitting ``job`` to an account whose blob endpoint is ``account_url``.
    JobValidationError if submit would refuse the job's outputs (as submit does)."""
    lifetime, warnings = sas_lifetime(job, margin=sas_margin)
    account = account_url.split("//", 1)[-1].split(".", 1)[0].split("/", 1)[0] or "account"
    now = datetime.now().astimezone()

    def blob_url(container: str, name: str) -> str:
        token = generate_blob_sas(account, container, name, account_key=DUMMY_KEY,
                                  permission=BlobSasPermissions(read=True), expiry=now + lifetime,
                                  start=now - timedelta(minutes=5))
        return f"{BlobClient(account_url, container, name).url}?{token}"

    def container_url(container: str) -> str:
        token = generate_container_sas(account, container, account_key=DUMMY_KEY,
                                       permission=ContainerSasPermissions(create=True, write=True),
                                       expiry=now + lifetime, start=now - timedelta(minutes=5))
        return f"{account_url.rstrip('/')}/{container}?{token}"

    urls = TaskUrls(
        resource_files=tuple((rf.target, blob_url(system_container, f"jobs/{job.id}/resources/{rf.target}"))
                             for rf in job.resource_files),
        output_containers={o.container: container_url(o.container) for o in job.outputs},
        log_container_url=container_url(log_container))
    return SubmitPreview(job=job, lifetime=lifetime, lifetime_warnings=warnings, required=required_patterns(job),
                         urls=urls, blob_url=blob_url)
