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


def test_many_small_files_and_a_big_one_land_whole_and_are_then_kept(project: Any) -> None:
    # More files than one burst holds, and one too big for a burst (it goes alone, in blocks).
    folder = project.dir / "many"
    folder.mkdir()
    for i in range(21):
        (folder / f"f{i:02d}.txt").write_bytes(bytes([97 + i]) * (i * 100))
    (folder / "big.bin").write_bytes(b"z" * (1024 * 1024 + 7))
    container = project.container("inputs")
    job = job_from_dict({"id": "syncmany", "command": "cat {input}", "inputs": {"container": container,
                                                                                "local_dir": "many"}},
                        source="test", base_dir=project.dir)
    assert sync_local_dir(project.storage, job) == 22
    for path in folder.iterdir():
        assert project.storage.download_bytes(container, path.name) == path.read_bytes(), path.name
    assert sync_local_dir(project.storage, job) == 0  # each stored with its MD5: nothing changed
