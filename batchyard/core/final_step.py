"""The final step: one task after all the per-file tasks of a job, given their outputs.

``[final]`` in a job file (``Job(final=FinalStep(...))`` in Python). It runs once every per-file
task has succeeded (``run_when = "succeeded"``, the default) or ended in any way
(``"completed"``); never when the job was cancelled. Its working dir holds the job's resource
files, ``outputs.jsonl`` (one line per output blob of the job: container, name, a read URL and,
with ``stage_outputs``, the path it was staged at) written by :mod:`batchyard.node.output_listing`
just before the command runs, and with ``stage_outputs = true`` the blobs themselves under
``outputs/<container>/<blob name>``.

On Azure Batch it is a task with ``dependsOn``: Batch holds it ``active`` until its dependencies
are satisfied. One task may name at most ~64,000 characters of task ids, so a big job gets a tree
of trivial barrier tasks (:func:`dependency_tree`); 100,000 tasks of 64-character ids need 134
barriers under the final step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, StrictBool, field_validator

from batchyard.core.batch_semantics import DEPENDENCY_ID_BUDGET
from batchyard.core.job_parts import OutputSpec, _Model, checked_command
from batchyard.core.placeholders import substitute_command

# Per-file task ids end in '-' and 12 hex digits (core/job.py): these never do, so never collide.
FINAL_TASK_ID = "final-step"
BARRIER_PREFIX = "final-barrier-"
FINAL_PLACEHOLDERS = ("job_id", "task_id")
RunWhen = Literal["succeeded", "completed"]


class FinalStep(_Model):
    """One task that runs after all the per-file tasks, with their outputs listed (and optionally staged)."""

    command: str = Field(description="Its command, split like the job's; placeholders {job_id} and {task_id}. "
                         "Runs after `python3` wrote outputs.jsonl in its working dir (python3 must be on the node "
                         "or in the image).")
    run_when: RunWhen = Field(default="succeeded", description="'succeeded': only when every per-file task "
                              "succeeded; 'completed': when every one ended, failed or not (never after a cancel).")
    stage_outputs: StrictBool = Field(default=False, description="Also download every output blob to "
                                "outputs/<container>/<blob name> before the command (for small jobs; a big job "
                                "reads outputs.jsonl and fetches what it needs).")
    outputs: tuple[OutputSpec, ...] = Field(default=(), description="What to upload after it, as [[outputs]] "
                                            "(best outside the job's output paths: those are listed to it).")

    @field_validator("command")
    @classmethod
    def _command(cls, v: str) -> str:
        return checked_command(v)

    def check_placeholders(self) -> None:
        """Only {job_id} and {task_id}: the final step has no input and no table row."""
        substitute_command(self.command, dict.fromkeys(FINAL_PLACEHOLDERS, "x"))

    def fingerprint(self) -> str:
        """A hash of its definition: a change of it re-runs the final step."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def final_step_reruns(*, dependencies_reran: bool, recorded_fingerprint: str | None, fingerprint: str,
                      succeeded_before: bool) -> bool:
    """Whether a submit runs the final step again: whenever a task it depends on runs again
    (``dependencies_reran``: the change-aware re-run's answer, :meth:`batchyard.core.rerun.RerunPlan.any_rerun`),
    when its own definition changed, or when it has not succeeded yet."""
    return dependencies_reran or recorded_fingerprint != fingerprint or not succeeded_before


def without_final(rerun: str | Sequence[str] | None) -> tuple[str | Sequence[str] | None, bool]:
    """``--rerun``'s ids without the final step's, and whether it was named: ``--rerun final-step``
    runs the final step alone again (its id is no per-file task's, so the per-file decision never sees it)."""
    if rerun is None or rerun == "all" or (isinstance(rerun, str) and rerun.lower() != FINAL_TASK_ID):
        return rerun, False
    named = [rerun] if isinstance(rerun, str) else list(rerun)
    kept = [task_id for task_id in named if task_id.lower() != FINAL_TASK_ID]
    return (kept or None), len(kept) != len(named)


def is_final_or_barrier(task_id: str) -> bool:
    return task_id.lower() == FINAL_TASK_ID or task_id.lower().startswith(BARRIER_PREFIX)


@dataclass(frozen=True)
class Barrier:
    """A trivial task that succeeds once all of ``depends_on`` are satisfied."""

    task_id: str
    depends_on: tuple[str, ...]


@dataclass(frozen=True)
class DependencyTree:
    """The barriers to add (bottom level first) and the ids the final step itself depends on."""

    barriers: tuple[Barrier, ...]
    final_depends_on: tuple[str, ...]

    @property
    def levels(self) -> int:
        return 1 + len({b.task_id.split("-")[2] for b in self.barriers})


def _groups(ids: Sequence[str], budget: int) -> list[list[str]]:
    """``ids`` in order, cut into runs whose lengths add up to at most ``budget`` characters."""
    groups: list[list[str]] = [[]]
    used = 0
    for task_id in ids:
        if groups[-1] and used + len(task_id) > budget:
            groups.append([])
            used = 0
        groups[-1].append(task_id)
        used += len(task_id)
    return groups if groups[0] else []


def dependency_tree(task_ids: Sequence[str], *, budget: int = DEPENDENCY_ID_BUDGET) -> DependencyTree:
    """The final step's dependencies, each task naming at most ``budget`` characters of ids.

    Ids that fit are named directly; otherwise they are cut into groups, each behind one barrier
    (``final-barrier-<level>-<n>``), and the barriers in turn, until the top level fits.
    """
    barriers: list[Barrier] = []
    level_ids = list(task_ids)
    level = 1
    while sum(map(len, level_ids)) > budget:
        groups = _groups(level_ids, budget)
        made = [Barrier(f"{BARRIER_PREFIX}{level}-{n}", tuple(group)) for n, group in enumerate(groups)]
        barriers += made
        level_ids = [b.task_id for b in made]
        level += 1
    return DependencyTree(barriers=tuple(barriers), final_depends_on=tuple(level_ids))
