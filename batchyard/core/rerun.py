"""Change-aware re-runs: what decides a task's result (its fingerprint), and which tasks a run re-runs, and why.

A task's **fingerprint** hashes, part by part, everything that decides its result:

- ``input``: the input blob (container, name) and its identity: its content MD5 (its ETag when
  the service keeps no MD5) and its size;
- ``command``: the argv after substitution;
- ``resources``: each resource file's target and content MD5;
- ``image``: the container image;
- ``environment``: the job's ``[environment]`` and the task's own variables (placeholders, columns);
- ``outputs``: the outputs spec (patterns, containers, paths, ``upload_on``, ``optional``).

Each part is a short hash, so two fingerprints tell which parts changed. The constraints (time
limit, retries) are not part of it: they decide whether a task may finish, not what it produces.

:func:`decide` compares a job's tasks with the records of their previous runs: a task that
succeeded with the same fingerprint is kept; one whose fingerprint changed, one that failed, was
cancelled, never finished or has no record runs (again); one running now is left alone. The
answer, a :class:`RerunPlan`, says for every task that runs why it does: ``batchyard run`` prints
it before anything starts, ``batchyard plan`` without running anything, and it is the hook for
anything that depends on the tasks (:meth:`RerunPlan.any_rerun`: a step after all the per-file
tasks runs again whenever one of them does).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from batchyard.core.errors import JobValidationError
from batchyard.core.final_step import is_final_or_barrier

if TYPE_CHECKING:
    from batchyard.core.job import Job, TaskDef

VERSION = "1"
PART_CODES = {"input": "i", "command": "c", "resources": "r", "image": "m", "environment": "e", "outputs": "o"}
PARTS = tuple(PART_CODES)
# Why a task runs besides a changed part, in the order the summary names them.
OTHER_REASONS = ("failed", "cancelled", "unfinished", "new", "requested")
DIGEST_CHARS = 12

RerunOption = Literal["all"] | Sequence[str] | None


# What json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False) gives, without
# a new encoder per call (a fan-out hashes two values per task).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(value: Any) -> str:
    return hashlib.sha256(_CANONICAL.encode(value).encode()).hexdigest()[:DIGEST_CHARS]


def blob_identity(*, md5: bytes | None, etag: str | None, size: int) -> str:
    """An input blob's identity: its content MD5 when the service keeps one (the same content
    uploaded again keeps it), else its ETag (which any write changes); and its size."""
    if md5:
        return f"md5:{md5.hex()}:{size}"
    tag = (etag or "").strip('"')
    return f"etag:{tag}:{size}"


def task_fingerprint(job: Job, task: TaskDef, *, resources: Mapping[str, str], input_identity: str | None) -> str:
    """``task``'s fingerprint: ``resources`` maps each resource file's target to its content MD5
    (hex); ``input_identity`` is :func:`blob_identity` of its input blob (None without one)."""
    return _Fingerprints(job, resources)(task, input_identity)


class _Fingerprints:
    """Fingerprints of one job's tasks: the parts every task shares (resources, image, outputs, and
    no input) are hashed once, the others per task."""

    def __init__(self, job: Job, resources: Mapping[str, str]) -> None:
        self.job = job
        shared = {
            "resources": _digest(sorted(resources.items())),
            "image": _digest(job.container_image or ""),
            "outputs": _digest([out.model_dump(mode="json") for out in job.outputs]),
        }
        self.no_input = _digest([None, None, None])
        # The fingerprint's text, the shared digests in place and a {slot} for each of the others.
        self.template = f"{VERSION}:" + ",".join(
            f"{PART_CODES[name]}={shared.get(name, '{' + name + '}')}" for name in PARTS)

    def __call__(self, task: TaskDef, input_identity: str | None) -> str:
        job = self.job
        environment = {**job.environment, **dict(task.environment(job))}
        no_input = task.input_container is None and task.input_blob is None and input_identity is None
        return self.template.format(
            input=self.no_input if no_input else _digest([task.input_container, task.input_blob, input_identity]),
            command=_digest(list(task.argv)), environment=_digest(sorted(environment.items())))


def with_fingerprints(job: Job, tasks: Iterable[TaskDef], *, resources: Mapping[str, str],
                      identities: Mapping[str, str]) -> list[TaskDef]:
    """``tasks``, each carrying its fingerprint; ``identities``: each input blob's :func:`blob_identity`
    by name (a blob missing from it has none: it changed or vanished since it was listed)."""
    return list(iter_with_fingerprints(job, tasks, resources=resources, identities=identities))


def iter_with_fingerprints(job: Job, tasks: Iterable[TaskDef], *, resources: Mapping[str, str],
                           identities: Mapping[str, str]) -> Iterator[TaskDef]:
    """:func:`with_fingerprints` one task at a time, as ``tasks`` yields them."""
    fingerprint = _Fingerprints(job, resources)
    for task in tasks:
        yield task.with_fingerprint(fingerprint(
            task, identities.get(task.input_blob) if task.input_blob is not None else None))


def resource_digests(job: Job, digests: Sequence[str]) -> dict[str, str]:
    """Each resource file's target -> its content MD5 (hex), from the digests in the job's order."""
    return dict(zip((rf.target for rf in job.resource_files), digests, strict=True))


def _parts(fingerprint: str) -> dict[str, str] | None:
    version, _, body = fingerprint.partition(":")
    if version != VERSION or not body:
        return None
    pairs = dict(item.partition("=")[::2] for item in body.split(","))
    return {name: pairs.get(code, "") for name, code in PART_CODES.items()}


def changed_parts(old: str, new: str) -> tuple[str, ...]:
    """The parts (:data:`PARTS`) in which fingerprint ``new`` differs from ``old``; every part when
    ``old`` cannot be read (written by another version)."""
    before, after = _parts(old), _parts(new)
    if after is None:
        raise ValueError(f"not a fingerprint of this version: {new!r}")
    if before is None:
        return PARTS
    return tuple(name for name in PARTS if before[name] != after[name])


@dataclass(frozen=True)
class PriorTask:
    """What the records say of a task's previous run: ``state`` (pending, running, succeeded,
    failed, cancelled), the fingerprint it ran with ("" when none was recorded) and whether it
    is running now (``live``: a live claim, or an unfinished task of an open Batch job)."""

    state: str
    fingerprint: str = ""
    live: bool = False


@dataclass
class RerunPlan:
    """Which tasks of a job this run runs, and why (see the module's docstring).

    ``reasons`` maps the id of every task that runs to why: changed parts (:data:`PARTS`) or one
    of :data:`OTHER_REASONS`; a task that is kept or left running is not in it.
    """

    job_id: str
    total: int = 0
    kept: int = 0
    running: int = 0  # running now: left alone
    unverified: int = 0  # kept, but their record has no fingerprint (run before fingerprints were kept)
    reasons: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Tasks the records have and this submission has not (a row edited away, a narrower glob), ids
    # without case: no longer part of the job, so no count, table or download shows them again.
    dropped: tuple[str, ...] = ()

    @property
    def rerun_ids(self) -> list[str]:
        return list(self.reasons)

    def reruns(self, task_id: str) -> tuple[str, ...]:
        """Why ``task_id`` runs in this run; () when it is kept (or running already)."""
        return self.reasons.get(task_id, ())

    def any_rerun(self, task_ids: Iterable[str] | None = None) -> bool:
        """Whether any of ``task_ids`` (every task when None) runs in this run: what a step that
        depends on them asks to know whether it must run again."""
        if task_ids is None:
            return bool(self.reasons)
        return any(task_id in self.reasons for task_id in task_ids)

    @property
    def changed(self) -> int:
        return sum(1 for why in self.reasons.values() if why[0] in PART_CODES)

    def counts(self) -> dict[str, int]:
        """How many tasks run for each reason (a task whose fingerprint changed in two parts counts
        under both), every part and reason present, in the summary's order."""
        tally = Counter(reason for why in self.reasons.values() for reason in why)
        return {reason: tally[reason] for reason in (*PARTS, *OTHER_REASONS)}

    def summary(self) -> str:
        """``27 kept, 3 changed: input 2, command 1; 1 failed, 2 new``: what this run does, by reason."""
        counts = self.counts()
        head = [f"{self.kept} kept"] if self.kept or not self.reasons else []
        if self.changed:
            detail = ", ".join(f"{name} {counts[name]}" for name in PARTS if counts[name])
            head.append(f"{self.changed} changed: {detail}")
        rest = [f"{counts[reason]} {reason}" for reason in OTHER_REASONS if counts[reason]]
        if self.running:
            rest.append(f"{self.running} running (left alone)")
        # After the changed parts' list a semicolon, so the counts that follow are not read as parts.
        glue = "; " if self.changed else ", "
        text = glue.join(part for part in (", ".join(head), ", ".join(rest)) if part)
        if self.dropped:
            text += f"; {len(self.dropped)} dropped (no longer in the job)"
        if self.unverified:
            text += (f" ({self.unverified} kept without a recorded fingerprint: they ran before batchyard "
                     "recorded one; --rerun all runs them again)")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "kept": self.kept, "running": self.running, "unverified": self.unverified,
                "rerun": len(self.reasons), "changed": self.changed, "dropped": len(self.dropped),
                "counts": self.counts(),
                "summary": self.summary(), "tasks": {task_id: list(why) for task_id, why in self.reasons.items()}}


class Decider:
    """:func:`decide` one task at a time, for a caller that streams its tasks (``plan`` over a table
    of a million rows): :meth:`add` each, then :meth:`finish`."""

    def __init__(self, job_id: str, prior: Mapping[str, PriorTask], *, rerun: RerunOption = None) -> None:
        self.plan = RerunPlan(job_id=job_id)
        self.prior = prior
        self.every = rerun == "all"
        named = [] if rerun is None or rerun == "all" else [rerun] if isinstance(rerun, str) else list(rerun)
        self.named = {task_id.lower(): task_id for task_id in named}
        self.found: set[str] = set()
        self.matched: set[str] = set()  # the prior records this submission's tasks have

    def add(self, task: TaskDef) -> None:
        plan, key = self.plan, task.task_id.lower()
        plan.total += 1
        record = self.prior.get(key)
        if record is not None:
            self.matched.add(key)
        if key in self.named:
            self.found.add(key)
        if record is not None and record.live:
            plan.running += 1
        elif self.every or key in self.named:
            plan.reasons[task.task_id] = ("requested",)
        elif record is None:
            plan.reasons[task.task_id] = ("new",)
        elif record.state == "succeeded":
            changed = changed_parts(record.fingerprint, task.fingerprint) if record.fingerprint and task.fingerprint \
                else ()
            if changed:
                plan.reasons[task.task_id] = changed
            else:
                plan.kept += 1
                plan.unverified += not record.fingerprint
        elif record.state in ("failed", "cancelled"):  # and what changed since, if anything did
            changed = changed_parts(record.fingerprint, task.fingerprint) if record.fingerprint and task.fingerprint \
                else ()
            plan.reasons[task.task_id] = (*changed, record.state)
        else:
            plan.reasons[task.task_id] = ("unfinished",)

    def finish(self) -> RerunPlan:
        """The plan; an id ``rerun`` named that is not a task of the job is refused, naming it (ids are
        compared without case, as Batch compares them)."""
        unknown = [given for key, given in self.named.items() if key not in self.found]
        if unknown:
            job_id = self.plan.job_id
            raise JobValidationError(f"job {job_id}", [("--rerun", f"{given!r} is not a task of job {job_id!r} "
                                                                   f"(`batchyard status {job_id}` lists its tasks)")
                                                       for given in unknown])
        if len(self.matched) < len(self.prior):
            self.plan.dropped = tuple(sorted(key for key in self.prior
                                             if key not in self.matched and not is_final_or_barrier(key)))
        return self.plan


def decide(job_id: str, tasks: Iterable[TaskDef], prior: Mapping[str, PriorTask], *,
           rerun: RerunOption = None) -> RerunPlan:
    """Which of ``tasks`` (each with its new fingerprint) run, given ``prior``: the records of their
    previous runs by lower-cased task id. A task running now is left alone; ``rerun``: ``"all"`` or
    task ids to run again whatever their records say (an unknown id is refused, naming it)."""
    decider = Decider(job_id, prior, rerun=rerun)
    for task in tasks:
        decider.add(task)
    return decider.finish()


__all__ = ["PARTS", "Decider", "PriorTask", "RerunOption", "RerunPlan", "blob_identity", "changed_parts", "decide",
           "iter_with_fingerprints", "resource_digests", "task_fingerprint", "with_fingerprints"]
