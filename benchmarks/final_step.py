"""The final step: what it adds to a job, and what its dependency design costs to compute.

- **end to end, local backend**: N tiny tasks (1 KiB, `up.py`), run as `batchyard run` runs them,
  without and with a `[final]` step that reads the listing (`wc -l outputs.jsonl`); the difference
  is the final step's cost: waiting for the last task, queueing it, listing N outputs, one task.
  Each repetition is a new job id (so both variants run every task).
- **dependency tree**: `dependency_tree` over 100,000 and 1,000,000 ids of 64 characters, the
  barriers it makes and the longest list any task names.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from batchyard.backends.local.backend import LocalBackend
from batchyard.core.final_step import dependency_tree
from batchyard.core.job import job_from_dict

from .common import UPPER_PY, isolated_config, median, storage_of, timed


def _job_seconds(conn: str, root: Path, container: str, n: int, workers: int, *, final: bool) -> float:
    config = isolated_config(root, conn, workers=workers)
    (root / "up.py").write_text(UPPER_PY, encoding="utf-8")
    data: dict[str, Any] = {
        "id": f"fin-{uuid.uuid4().hex[:6]}", "command": f"{sys.executable} up.py {{input}} {{input_stem}}.out",
        "inputs": {"container": container, "prefix": "in/"}, "resource_files": [{"source": "up.py"}],
        "outputs": [{"pattern": "*.out", "container": container, "path": "out/{job_id}/"}],
    }
    if final:
        data["final"] = {"command": "sh -c 'test $(wc -l < outputs.jsonl) -eq $N'"}
        data["environment"] = {"N": str(n)}
    job = job_from_dict(data, base_dir=root)
    backend = LocalBackend(config)

    def go() -> Any:
        backend.submit(job)
        return backend.run_to_end(job, workers=workers)

    seconds, counts = timed(go)
    assert counts.succeeded == n, counts
    if final:
        view = backend.final_step(job.id)
        assert view is not None and view.state == "succeeded", view
    backend.close()
    return seconds


def tree_figures() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for count in (100_000, 1_000_000):
        ids = [f"{i:064d}" for i in range(count)]
        seconds, tree = timed(lambda ids=ids: dependency_tree(ids))
        lists = [b.depends_on for b in tree.barriers] + [tree.final_depends_on]
        out[str(count)] = {"seconds": round(seconds, 3), "barriers": len(tree.barriers), "levels": tree.levels,
                           "longest_list_chars": max(sum(map(len, ids_)) for ids_ in lists)}
    return out


def run(conn: str, *, n: int = 500, workers: int = 2, reps: int = 3) -> dict[str, Any]:
    storage = storage_of(conn)
    container = f"fin-{uuid.uuid4().hex[:8]}"
    storage.ensure_container(container)
    payload = (b"hello batchyard " * 64)[:1024]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: storage.upload_bytes(container, f"in/f{i:05d}.txt", payload), range(n)))
    plain: list[float] = []
    with_final: list[float] = []
    with tempfile.TemporaryDirectory(prefix="by-bench-final-") as tmp:
        for rep in range(reps):
            for final, into in ((False, plain), (True, with_final)):
                root = Path(tmp) / f"{'final' if final else 'plain'}{rep}"
                root.mkdir()
                into.append(_job_seconds(conn, root, container, n, workers, final=final))
    result = {"tasks": n, "workers": workers, "without_final_s": round(median(plain), 2),
              "with_final_s": round(median(with_final), 2),
              "final_step_adds_s": round(median(with_final) - median(plain), 2), "tree": tree_figures()}
    print(f"  {n} tasks: {result['without_final_s']} s without a final step, {result['with_final_s']} s with "
          f"(+{result['final_step_adds_s']} s)")
    for count, figures in result["tree"].items():
        print(f"  dependency tree over {int(count):,} ids: {figures['barriers']} barriers, {figures['levels']} "
              f"level(s), longest list {figures['longest_list_chars']:,} chars, {figures['seconds']} s")
    return result
