"""Many tasks' add-collection bodies without an SDK model each.

Building a task as an SDK model (:func:`~batchyard.backends.azure.tasks.build_task`) costs
about 1.5 ms of CPU: most of a 100,000-task submit. So one task of each shape (which optional
fields it has) is built as a model and turned into its JSON; another task of that shape is that
JSON with its own strings put in (id, display name, command line, input file, output paths, log
path, environment with the fingerprint), the fields that differ from task to task as ``preview.py`` lists them.
tests/test_task_bodies.py holds every body equal to its model's JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from batchyard.backends.azure.tasks import (
    FINGERPRINT_ENV,
    MAX_DISPLAY_NAME,
    REQUIRED_OUTPUTS_ENV,
    TaskUrls,
    batch_output_path,
    build_task,
    command_line,
)
from batchyard.core.batch_semantics import log_prefix
from batchyard.core.job import Job, TaskDef, output_prefix

Shape = tuple[bool, bool, tuple[bool, ...], int, bool]


class TaskBodies:
    """The add-collection JSON of a job's tasks for one submit (its SAS URLs are shared)."""

    def __init__(self, job: Job, *, urls: TaskUrls, required: Sequence[str], registry: Any = None) -> None:
        self.job, self.urls, self.required, self.registry = job, urls, list(required), registry
        self._templates: dict[Shape, dict[str, Any]] = {}

    def body(self, task: TaskDef, *, input_url: str | None) -> dict[str, Any]:
        has_input = input_url is not None and task.input_path is not None
        display = task.label[:MAX_DISPLAY_NAME]
        paths = [batch_output_path(out.pattern, output_prefix(self.job, out, task)) for out in self.job.outputs]
        variables = task.environment(self.job)
        shape: Shape = (bool(display), has_input, tuple(p is None for p in paths), len(variables),
                        bool(task.fingerprint))
        template = self._templates.get(shape)
        if template is None:
            model = build_task(self.job, task, urls=self.urls, input_url=input_url, required=self.required,
                               registry=self.registry)
            self._templates[shape] = template = model.as_dict(exclude_readonly=True)
            return template
        body = dict(template)
        body["id"] = task.task_id
        if display:
            body["displayName"] = display
        body["commandLine"] = command_line(task.argv, self.required)
        if has_input:
            body["resourceFiles"] = [{"httpUrl": input_url, "filePath": task.input_path},
                                     *template["resourceFiles"][1:]]
        outputs = []
        for reference, path in zip(template["outputFiles"], [*paths, log_prefix(self.job.id, task.task_id)],
                                   strict=True):
            destination = {**reference["destination"]["container"]}
            if path is not None:
                destination["path"] = path
            outputs.append({**reference, "destination": {**reference["destination"], "container": destination}})
        body["outputFiles"] = outputs
        if variables or self.required or task.fingerprint:
            env = [{"name": name, "value": value} for name, value in variables]
            if self.required:
                env.append({"name": REQUIRED_OUTPUTS_ENV, "value": "\n".join(self.required)})
            if task.fingerprint:  # in build_task's order
                env.append({"name": FINGERPRINT_ENV, "value": task.fingerprint})
            body["environmentSettings"] = env
        return body


__all__ = ["TaskBodies"]
