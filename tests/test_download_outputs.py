"""What ``download`` serves (:mod:`batchyard.backends.outputs`) costs one pass over the job's blobs,
whatever the number of tasks sharing an output prefix (issue #20: 100,000 tasks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import outputs
from batchyard.backends.base import TaskResult, TaskState
from batchyard.backends.documents import JobDocuments
from batchyard.core.job import job_from_dict


def make_job(folder: Path, path: str) -> Any:
    (folder / "t.csv").write_text("KEY\na\n", encoding="utf-8")
    return job_from_dict({"id": "dl", "command": "true {KEY}", "tasks": "t.csv",
                          "outputs": [{"pattern": "out-*.txt", "container": "outs", "path": path}]},
                         base_dir=folder)


class FakeStorage:
    def __init__(self, names: dict[tuple[str, str], list[str]]) -> None:
        self.names, self.listed = names, 0

    def list_blob_names(self, container: str, prefix: str) -> Iterator[str]:
        self.listed += 1
        yield from self.names.get((container, prefix), [])


class FakeDocuments:
    def __init__(self, rows: list[list[Any]]) -> None:
        self.rows = rows

    def manifest_rows(self, job_id: str) -> list[list[Any]]:
        return self.rows

    static_output_prefix = staticmethod(JobDocuments.static_output_prefix)


@pytest.mark.parametrize("path", ["{job_id}/", "{job_id}/{KEY}/"])
def test_tasks_sharing_or_not_a_prefix_read_each_name_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        path: str) -> None:
    n = 400
    job = make_job(tmp_path, path)
    keys = [f"k{i:04d}" for i in range(n)]
    per_task = "{KEY}" in path
    prefixes = [f"dl/{k}/" if per_task else "dl/" for k in keys]
    blobs = [*sorted(f"{p}out-{k}.txt" for p, k in zip(prefixes, keys, strict=True)), "dl/other.log"]
    storage = FakeStorage({("outs", "dl/"): blobs})
    rows: list[list[Any]] = [[f"t-{k}", k, [p]] for k, p in zip(keys, prefixes, strict=True)]
    results = [TaskResult(job_id="dl", task_id=f"t-{k}", state=TaskState.SUCCEEDED) for k in keys]
    results.append(TaskResult(job_id="dl", task_id="t-gone", state=TaskState.SUCCEEDED))  # not in the manifest
    examined = 0
    under = outputs._under

    def counting(names: list[str], prefix: str) -> Iterator[str]:
        nonlocal examined
        for name in under(names, prefix):
            examined += 1
            yield name

    monkeypatch.setattr(outputs, "_under", counting)
    served = list(outputs.current_outputs(storage, FakeDocuments(rows), job, results))  # type: ignore[arg-type]
    assert sorted(served) == [("outs", b) for b in blobs if not b.endswith(".log")]
    assert storage.listed == 1
    assert examined <= len(blobs)  # was n x n with a shared prefix


def test_a_failed_task_does_not_stand_for_the_shared_blobs_but_a_succeeded_one_does(tmp_path: Path) -> None:
    job = make_job(tmp_path, "{job_id}/")
    storage = FakeStorage({("outs", "dl/"): ["dl/out-a.txt", "dl/out-b.txt"]})
    rows: list[list[Any]] = [["t-a", "a", ["dl/"]], ["t-b", "b", ["dl/"]]]
    failed = [TaskResult(job_id="dl", task_id="t-a", state=TaskState.FAILED)]
    assert list(outputs.current_outputs(storage, FakeDocuments(rows), job, failed)) == []  # type: ignore[arg-type]
    mixed = [*failed, TaskResult(job_id="dl", task_id="t-b", state=TaskState.SUCCEEDED)]
    assert list(outputs.current_outputs(storage, FakeDocuments(rows), job, mixed)) == [  # type: ignore[arg-type]
        ("outs", "dl/out-a.txt"), ("outs", "dl/out-b.txt")]


def test_blobs_download_side_by_side_each_to_its_place(project: Any, tmp_path: Path) -> None:
    """``download`` copies several blobs at a time (real Azurite): every one lands whole at
    ``dest/<container>/<name>``, the paths come back in the listing's order."""
    from batchyard.storage.downloads import download_blobs

    outs = project.container("outputs")
    files = {f"dl/sub {i % 3}/out-{i:03d}.txt": f"blob {i}\n".encode() * (i + 1) for i in range(120)}
    project.put_inputs(outs, files)
    names = sorted(files)
    written = download_blobs(project.storage, ((outs, name) for name in names), tmp_path / "dest", concurrency=8)
    assert written == [tmp_path / "dest" / outs / name for name in names]
    assert all(path.read_bytes() == files[name] for path, name in zip(written, names, strict=True))


def test_a_blob_name_that_would_leave_dest_is_refused_before_it_is_written(project: Any, tmp_path: Path) -> None:
    from batchyard.core.errors import UnsafePathError
    from batchyard.storage.downloads import download_blobs

    outs = project.container("outputs")
    project.put_inputs(outs, {"fine.txt": b"ok"})
    with pytest.raises(UnsafePathError, match="output blob"):
        download_blobs(project.storage, [(outs, "fine.txt"), (outs, "../escaped.txt")], tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "dest" / "escaped.txt").exists()
