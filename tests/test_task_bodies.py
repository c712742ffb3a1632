"""Every task body submit sends without building a model is the JSON the SDK's model would send."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from azure.batch import models as bm
from azure.batch._utils.model_base import SdkJSONEncoder

from batchyard.backends import get_backend_class
from batchyard.backends.azure.task_bodies import TaskBodies
from batchyard.backends.azure.tasks import build_task
from batchyard.core.job import Job, job_from_dict, tasks_from_blob_names, tasks_from_table


def _preview(job: Job) -> Any:
    return get_backend_class("azure").preview_submit(  # type: ignore[attr-defined]
        job, sas_margin=timedelta(hours=1), account_url="https://" + "a" * 24 + ".blob.core.windows.net",
        system_container="batchyard", log_container="batchyard-logs")


def _assert_bodies_are_the_models(job: Job, tasks: list[Any], *, registry: Any = None) -> None:
    preview = _preview(job)
    bodies = TaskBodies(job, urls=preview.urls, required=preview.required, registry=registry)
    for task in tasks:
        input_url = preview.blob_url(task.input_container, task.input_blob) if task.input_blob is not None else None
        model = build_task(job, task, urls=preview.urls, input_url=input_url, required=preview.required,
                           registry=registry)
        body = bodies.body(task, input_url=input_url)
        assert body == model.as_dict(exclude_readonly=True), task.task_id
        assert json.dumps({"value": [body]}, cls=SdkJSONEncoder, exclude_readonly=True) == json.dumps(
            bm.BatchTaskGroup(task_values=[model]), cls=SdkJSONEncoder, exclude_readonly=True)


def test_table_tasks_of_every_shape(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text(
        "a,b\n1,plain\n2,\n,empty first\n3,ünïcödé 日本 🚀\n4,\x01 control\n5,plain again\n" + f"6,{'long' * 300}\n",
        encoding="utf-8")
    outputs = [{"pattern": "*.out", "container": "out-data", "path": "{job_id}/{a}/"},
               {"pattern": "summary.json", "container": "out-data", "path": "{job_id}/"},
               {"pattern": "*.log", "container": "logs-data", "path": "", "optional": True}]
    job = job_from_dict({"id": "sweep", "command": "run {a} {b}", "tasks": "rows.csv", "outputs": outputs,
                         "environment": {"FIXED": "x"}, "constraints": {"max_wall_clock_time": "5m",
                                                                        "max_task_retry_count": 2}},
                        base_dir=tmp_path)
    tasks = list(tasks_from_table(job))
    assert len(tasks) == 7
    _assert_bodies_are_the_models(job, tasks)


def test_blob_tasks_with_resources_and_an_image(tmp_path: Path) -> None:
    (tmp_path / "tool.py").write_text("print(1)\n", encoding="utf-8")
    job = job_from_dict({"id": "blobs", "command": "cat {input}", "inputs": {"container": "in-data"},
                         "resource_files": [{"source": "tool.py"}], "container_image": "example/tool:1",
                         "outputs": [{"pattern": "{input_stem}.out", "container": "out-data"}]}, base_dir=tmp_path)
    names = ["a.txt", "dir/ünï code.txt", "q?=&%.txt", "x" * 300 + ".txt", "b.txt"]
    registry = bm.ContainerRegistryReference(registry_server="example.azurecr.io", username="u", password="p")
    _assert_bodies_are_the_models(job, list(tasks_from_blob_names(job, names)), registry=registry)


def test_a_job_with_no_outputs_and_no_environment(tmp_path: Path) -> None:
    (tmp_path / "keys.csv").write_text("KEY\n" + "".join(f"k{i}\n" for i in range(5)), encoding="utf-8")
    job = job_from_dict({"id": "bare", "command": "true {KEY}", "tasks": "keys.csv"}, base_dir=tmp_path)
    _assert_bodies_are_the_models(job, list(tasks_from_table(job)))


def test_fingerprinted_tasks_carry_their_own_fingerprint(tmp_path: Path) -> None:
    """A re-run reads each Batch task's fingerprint back (BATCHYARD_FINGERPRINT): the bodies put in each its own."""
    from batchyard.core.rerun import with_fingerprints

    (tmp_path / "keys.csv").write_text("KEY\n" + "".join(f"k{i}\n" for i in range(5)), encoding="utf-8")
    job = job_from_dict({"id": "prints", "command": "true {KEY}", "tasks": "keys.csv"}, base_dir=tmp_path)
    tasks = with_fingerprints(job, tasks_from_table(job), resources={}, identities={})
    assert len({t.fingerprint for t in tasks}) == 5
    _assert_bodies_are_the_models(job, [*tasks, *tasks_from_table(job)])
