"""inputs.local_dir is uploaded as it changes: what storage holds already (same MD5) is kept (real Azurite)."""

from __future__ import annotations

from typing import Any

from batchyard.backends.documents import sync_local_dir
from batchyard.core.job import job_from_dict


def test_only_new_and_changed_files_are_uploaded(project: Any) -> None:
    folder = project.dir / "in"
    (folder / "sub").mkdir(parents=True)
    for name, text in (("a.txt", "a"), ("b.txt", "b"), ("sub/c.txt", "c")):
        (folder / name).write_text(text, encoding="utf-8")
    container = project.container("inputs")
    job = job_from_dict({"id": "sync", "command": "cat {input}",
                         "inputs": {"container": container, "local_dir": "in", "prefix": "p/"}},
                        source="test", base_dir=project.dir)
    assert sync_local_dir(project.storage, job) == 3
    assert sync_local_dir(project.storage, job) == 0
    (folder / "b.txt").write_text("changed", encoding="utf-8")
    (folder / "d.txt").write_text("new", encoding="utf-8")
    assert sync_local_dir(project.storage, job) == 2
    assert sorted(project.storage.list_blob_names(container, "p/")) == ["p/a.txt", "p/b.txt", "p/d.txt", "p/sub/c.txt"]
    assert project.storage.download_bytes(container, "p/b.txt") == b"changed"
