"""The node roots ``batchyard debug`` keeps under ``$BATCHYARD_HOME/debug``, and their removal by ``delete``.

Each root ``debug`` makes holds a marker naming the job and the backend it replayed; ``batchyard
delete JOB`` removes the roots whose marker names that job on that backend (ids compared without
case, as Batch compares them). A root given with ``--dir``, or one without a marker, is the user's
and is never removed. The marker is read as data: a root whose marker does not parse is left alone.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

MARKER = ".batchyard-replay.json"


def new_replay_root(home: Path, job_id: str, backend: str) -> Path:
    """A fresh node root for one replay of a task of ``job_id``: private (0700), never reused, marked."""
    parent = home / "debug"
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=parent))
    (root / MARKER).write_text(json.dumps({"job_id": job_id, "backend": backend}), encoding="utf-8")
    return root


def discard_empty_root(root: Path) -> None:
    """Remove a root nothing was staged into (the task could not be replayed): its marker and itself."""
    (root / MARKER).unlink(missing_ok=True)
    root.rmdir()


def replay_roots(home: Path, job_id: str, backend: str) -> list[Path]:
    """The kept roots of replays of ``job_id``'s tasks on ``backend``."""
    parent = home / "debug"
    if not parent.is_dir():
        return []
    found = []
    for root in sorted(parent.iterdir()):
        try:
            marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(marker, dict):
            continue
        if str(marker.get("job_id", "")).lower() == job_id.lower() and marker.get("backend") == backend:
            found.append(root)
    return found


def remove_replays(home: Path, job_id: str, backend: str) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Remove the kept replay roots of ``job_id`` on ``backend``: (removed, [(kept, the first error)])."""
    removed: list[Path] = []
    kept: list[tuple[Path, str]] = []
    for root in replay_roots(home, job_id, backend):
        problems = _remove_tree(root)
        if root.exists():
            kept.append((root, problems[0] if problems else "not removed"))
        else:
            removed.append(root)
    return removed, kept


def _remove_tree(root: Path) -> list[str]:
    """Remove what can be removed under ``root``; what could not, as "path: reason"."""
    problems: list[str] = []

    def note(_func: object, path: str, exc_info: tuple[type, BaseException, object]) -> None:
        error = exc_info[1]
        problems.append(f"{path}: {getattr(error, 'strerror', None) or error}")

    shutil.rmtree(root, onerror=note)  # onerror: Python 3.11 has no onexc
    return problems
