"""The rules ``batchyard plan`` checks a job against, each giving :class:`Finding` s with a fix.

Limits checked, and where they come from (docs/plan.md has the details):

- Task ids: at most 64 characters, unique ignoring case (Batch REST reference, "Add Task").
- Add-task-collection requests: at most 100 tasks and under 1 MB serialized (REST reference of
  ``BatchTaskGroup``: larger requests fail with ``RequestBodyTooLarge``).
- Environment: a task's environment and argv reach ``execve`` on a Linux node: one
  ``NAME=value`` string or argument over 128 KiB (``MAX_ARG_STRLEN``), or all together over
  2 MiB (the usual ``ARG_MAX``), make the task fail to start (E2BIG; see execve(2)).
- Active jobs and job schedules per Batch account: default quota 100-300 (MicrosoftDocs/azure-docs
  ``articles/batch/batch-quota-limit.md`` and ``includes/azure-batch-limits.md``).
- Concurrent tasks per node: at most 4 x the node's cores (same article, "Other limits").

The per-task rules are classes fed one task (or size) at a time, so a job of a million tasks
is checked without a list of its tasks; each reports its first offender and how many more.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import PurePosixPath

from batchyard.analysis.forecast import TASK_OVERHEAD_S, hms, run_timeline
from batchyard.core.config import Config, PoolSection
from batchyard.core.findings import Finding
from batchyard.core.job import Job, TaskDef
from batchyard.core.paths import fnmatch_name

MAX_ID = 64
CHUNK_TASKS = 100
CHUNK_BYTES = 1024 * 1024
MAX_ARG_STRLEN = 128 * 1024
ARG_MAX = 2 * 1024 * 1024
AZ_BATCH_ENV_ALLOWANCE = 4096  # the AZ_BATCH_* variables the node adds (paths, ids, URLs)
REQUIRED_SLOTS = 1  # the azure backend never sets requiredSlots, so Batch's default


# ---------------------------------------------------------------------------------------------- per task
def _more(count: int) -> str:
    return f" (and {count - 1} more)" if count > 1 else ""


class TaskIdCheck:
    """Ids over 64 characters. Fan-out already refuses two ids equal ignoring case (Batch compares
    them that way), so only :func:`check_task_ids` needs to remember ids."""

    def __init__(self) -> None:
        self.first: str | None = None
        self.count = 0

    def add(self, task_id: str) -> None:
        if len(task_id) > MAX_ID:
            self.count += 1
            self.first = self.first or task_id

    def findings(self) -> list[Finding]:
        if self.first is None:
            return []
        return [Finding("error", "task-id-too-long", f"task id {self.first!r} has {len(self.first)} characters; "
                        f"Azure Batch allows {MAX_ID}{_more(self.count)}", "shorten the job id or the inputs' names")]


def check_task_ids(task_ids: Iterable[str]) -> list[Finding]:
    """Every id rule, for a list of ids (remembers each id: for ids that did not come from fan-out)."""
    findings: list[Finding] = []
    seen: dict[str, str] = {}
    for task_id in task_ids:
        lengths = TaskIdCheck()
        lengths.add(task_id)
        findings += lengths.findings()
        key = task_id.lower()
        if key in seen and seen[key] != task_id:
            findings.append(Finding("error", "task-id-collision", f"task ids {seen[key]!r} and {task_id!r} differ "
                                    "only by case; Azure Batch compares ids case-insensitively",
                                    "rename one of the inputs (or rows)"))
        elif key in seen:
            findings.append(Finding("error", "task-id-collision", f"task id {task_id!r} appears twice",
                                    "remove the duplicate input or row"))
        seen.setdefault(key, task_id)
    return findings


class ChunkCheck:
    """Add-collection requests: ``add`` each task's serialized JSON size in submit order, ``chunk``
    tasks per request (only the open request's total is kept)."""

    def __init__(self, *, chunk: int = CHUNK_TASKS) -> None:
        self.chunk = chunk
        self._index = 0
        self._open_count = self._open_bytes = 0
        self._too_large: Finding | None = None
        self._task_too_large: Finding | None = None

    def add(self, size: int) -> None:
        self._index += 1
        if size > CHUNK_BYTES and self._task_too_large is None:
            self._task_too_large = Finding(
                "error", "task-too-large", f"task #{self._index} alone is about {size / 1024:.0f} KiB of JSON; "
                "Azure Batch refuses tasks over 1 MB",
                "move large values out of the environment/CSV into a resource file")
        self._open_count += 1
        self._open_bytes += size
        if self._open_count == self.chunk:
            self._close()

    def _close(self) -> None:
        total = self._open_bytes + self._open_count + 12  # commas and {"value":[...]}
        if self._open_count and total > CHUNK_BYTES and self._too_large is None:
            first = self._index - self._open_count + 1
            self._too_large = Finding(
                "warning", "chunk-too-large", f"tasks {first}-{self._index}: about {total / 1024:.0f} KiB in one "
                "add-collection request (limit 1 MB); batchyard halves such requests until they fit, at the cost "
                "of more requests", "fewer resource files or shorter environment values make submits faster")
        self._open_count = self._open_bytes = 0

    def findings(self) -> list[Finding]:
        self._close()
        found = []
        if self.chunk > CHUNK_TASKS:
            found.append(Finding("error", "chunk-too-many-tasks", f"add-collection requests of {self.chunk} tasks; "
                                 f"Azure Batch accepts at most {CHUNK_TASKS} per request",
                                 f"add at most {CHUNK_TASKS} tasks per request"))
        return found + [f for f in (self._too_large, self._task_too_large) if f is not None]


def check_chunks(sizes: Iterable[int], *, chunk: int = CHUNK_TASKS) -> list[Finding]:
    """``sizes``: each task's serialized JSON size, in submit order, added ``chunk`` per request."""
    check = ChunkCheck(chunk=chunk)
    for size in sizes:
        check.add(size)
    return check.findings()


class EnvironmentCheck:
    """What ``execve`` on a Linux node refuses: one ``NAME=value`` or argument over 128 KiB, or a
    task's environment and argv together over 2 MiB."""

    def __init__(self, job: Job, *, extra_env: dict[str, str] | None = None) -> None:
        self.job = job
        self.base = {**job.environment, **(extra_env or {})}
        self.base_bytes = sum(len(f"{k}={v}".encode()) + 1 for k, v in self.base.items()) + AZ_BATCH_ENV_ALLOWANCE
        self.worst_total, self.worst_task = 0, ""
        self.long_value: tuple[str, str] | None = None  # (task id, column) of the first one
        self.long_values = 0
        self.long_arg: str | None = None
        self.long_args = 0

    def add(self, task: TaskDef) -> None:
        variables = task.environment(self.job)  # the placeholders' (INPUT...) and the row's columns
        params = sum(len(f"{k}={v}".encode()) + 1 for k, v in variables)
        args = sum(len(a.encode()) + 1 for a in task.argv)
        column = next((name for name, value in variables if len(f"{name}={value}".encode()) > MAX_ARG_STRLEN), None)
        if column is not None:
            self.long_values += 1
            self.long_value = self.long_value or (task.task_id, column)
        if any(len(a.encode()) + 1 > MAX_ARG_STRLEN for a in task.argv):
            self.long_args += 1
            self.long_arg = self.long_arg or task.task_id
        total = self.base_bytes + params + args
        if total > self.worst_total:
            self.worst_total, self.worst_task = total, task.task_id

    def findings(self) -> list[Finding]:
        kib = MAX_ARG_STRLEN // 1024
        found = [Finding("error", "env-value-too-long", f"environment variable {name} is over {kib} KiB: a Linux "
                         "node cannot start a process with it (execve: E2BIG)",
                         "put the value in a resource file and pass its name")
                 for name, value in self.base.items() if len(f"{name}={value}".encode()) > MAX_ARG_STRLEN]
        if self.long_value is not None:
            task_id, column = self.long_value
            found.append(Finding("error", "env-value-too-long", f"task {task_id}: column {column} is over {kib} KiB "
                                 f"(execve: E2BIG){_more(self.long_values)}",
                                 "put the value in a file and pass its name"))
        if self.long_arg is not None:
            found.append(Finding("error", "argument-too-long", f"task {self.long_arg}: one argument is over {kib} KiB "
                                 f"(execve: E2BIG){_more(self.long_args)}", "pass long data through a file"))
        if self.worst_total > ARG_MAX:
            found.append(Finding("error", "environment-too-large", f"task {self.worst_task}: environment and "
                                 f"arguments total {self.worst_total / 1024:.0f} KiB, over the {ARG_MAX // 1024} KiB "
                                 "a Linux node usually allows (execve: E2BIG)", "pass bulky values through files"))
        return found


def check_environment(job: Job, tasks: Iterable[TaskDef], *, extra_env: dict[str, str] | None = None) -> list[Finding]:
    check = EnvironmentCheck(job, extra_env=extra_env)
    for task in tasks:
        check.add(task)
    return check.findings()


# ---------------------------------------------------------------------------------------------- per job
def check_sas(job: Job, *, lifetime: timedelta, warnings: Iterable[str], tasks: int, slots: int | None,
              durations: Sequence[float] | None = None, existing_pool: bool = False) -> list[Finding]:
    """SAS URLs live (retries + 1) x max_wall_clock_time + sas_margin from submit (``lifetime``, with the
    azure backend's ``warnings`` about it); the margin must also cover the time the last task waits for a
    slot, or its input/output URLs expire before it runs. That wait is the forecast's (the same timeline:
    node allocation, then waves of tasks each with Batch's overhead) from a previous run's ``durations``;
    without them, the worst case: every task runs for max_wall_clock_time."""
    findings = [Finding("warning", "sas-long-lived", w, "set [constraints] max_wall_clock_time (and a finite "
                        "max_task_retry_count)") for w in warnings]
    c = job.constraints
    if c.max_wall_clock_time is None or c.max_task_retry_count < 0 or not slots or tasks <= 0:
        return findings
    if durations:
        mean, longest = sum(durations) / len(durations), max(durations)
        basis = f"as forecast (mean task {hms(mean)} from the previous run + {hms(TASK_OVERHEAD_S)} Batch overhead)"
    else:
        mean = longest = float(c.max_wall_clock_time)
        basis = "at worst (no previous run: every task runs for max_wall_clock_time)"
    timeline = run_timeline(tasks=tasks, slots=slots, mean_s=mean, longest_s=longest, existing_pool=existing_pool)
    last_start = timeline["last_start_s"]
    runs_for = (c.max_task_retry_count + 1) * c.max_wall_clock_time
    if last_start + runs_for > lifetime.total_seconds():
        waves = math.ceil(tasks / slots)
        findings.append(Finding(
            "warning", "sas-expiry",
            f"SAS URLs live {hms(lifetime.total_seconds())} ((retries + 1) x max_wall_clock_time + sas_margin), "
            f"but {tasks} tasks on {slots} slot(s) run in {waves} waves: the last starts {hms(last_start)} after "
            f"submit {basis} and may then need {hms(runs_for)}; its input and output URLs could expire first",
            f"raise [azure] sas_margin to at least {hms(math.ceil(last_start))}, or add nodes/slots"))
    return findings


def _has_wildcard(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def check_outputs(job: Job, sample: TaskDef | None) -> list[Finding]:
    """Patterns that can never match (absolute and '..' are refused when the job file loads)."""
    findings: list[Finding] = []
    mentioned = " ".join(sample.argv) if sample else job.command
    staged = [rf.target for rf in job.resource_files]
    if sample is not None and sample.input_path:
        staged.append(sample.input_path)
    for i, out in enumerate(job.outputs):
        where = f"outputs.{i}.pattern {out.pattern!r}"
        if out.pattern.endswith("/") or PurePosixPath(out.pattern).name in (".", ""):
            findings.append(Finding("error", "output-directory", f"{where} names a directory: outputs are files, "
                                    "so it never matches", f"use '{out.pattern.rstrip('/')}/**' for its contents"))
            continue
        if "{" in out.pattern and "}" in out.pattern:
            findings.append(Finding("error", "output-placeholder", f"{where}: patterns are not substituted, so "
                                    "the braces are literal and match no file your command writes",
                                    "use a wildcard (e.g. '*.out.txt'); placeholders belong in outputs.path"))
            continue
        for name in staged:
            if fnmatch_name(name, out.pattern):
                findings.append(Finding("warning", "output-matches-input", f"{where} also matches the staged file "
                                        f"{name!r}, which would be uploaded as an output",
                                        "make the pattern more specific (e.g. '*.out.txt')"))
                break
        if not _has_wildcard(out.pattern):
            base = PurePosixPath(out.pattern).name
            if base not in mentioned:
                findings.append(Finding(
                    "info" if out.optional else "warning", "output-unmentioned",
                    f"{where} is a fixed file name that no argument of the command mentions: it matches only if "
                    "the program writes that exact name itself",
                    "fine if it does; otherwise pass the name in the command or use a wildcard"))
    return findings


def check_pool(config: Config, *, cores: int | None) -> list[Finding]:
    azure = config.azure
    if azure.pool_id:
        return [Finding("info", "pool-existing", f"tasks run on the existing pool {azure.pool_id!r}: its size and "
                        "slots are not checked by plan")]
    section = azure.pool or PoolSection()
    findings: list[Finding] = []
    nodes = section.dedicated_nodes + section.spot_nodes
    if not section.autoscale_formula and nodes * section.task_slots_per_node == 0:
        findings.append(Finding("error", "pool-no-slots", f"the pool has {section.dedicated_nodes} dedicated and "
                                f"{section.spot_nodes} spot nodes: no slot will ever run a task",
                                "set [azure.pool] dedicated_nodes (or spot_nodes) to at least 1"))
    if section.task_slots_per_node < REQUIRED_SLOTS:
        findings.append(Finding("error", "pool-slots-too-few", f"each task needs {REQUIRED_SLOTS} slots; nodes "
                                f"have {section.task_slots_per_node}", "raise [azure.pool] task_slots_per_node"))
    if cores and section.task_slots_per_node > 4 * cores:
        findings.append(Finding("error", "pool-slots-over-limit", f"task_slots_per_node = "
                                f"{section.task_slots_per_node} on {section.vm_size} ({cores} cores): Azure Batch "
                                f"allows at most 4 x cores = {4 * cores}", "lower it or pick a larger vm_size"))
    return findings


def check_quota(config: Config, *, active_jobs: int | None, job_exists: bool = False) -> list[Finding]:
    quota = config.azure.active_job_quota
    fix = ("`batchyard delete` finished jobs (a job stays active until all its tasks succeed), or ask "
           "Azure support to raise the quota and set [azure] active_job_quota")
    if active_jobs is None:
        if quota == 0:
            return [Finding("error", "job-quota", "[azure] active_job_quota is 0: Azure Batch would refuse the job "
                            "(ActiveJobAndScheduleQuotaReached)", fix)]
        return [Finding("info", "job-quota", f"active-job quota {quota} (from config); the number of active jobs "
                        "was not checked (no Batch account reachable)")]
    if not job_exists and active_jobs >= quota:
        return [Finding("error", "job-quota", f"{active_jobs} active jobs on the Batch account, quota {quota}: "
                        "creating this job fails with ActiveJobAndScheduleQuotaReached", fix)]
    if active_jobs >= 0.8 * quota:
        return [Finding("warning", "job-quota", f"{active_jobs} of {quota} active jobs in use", fix)]
    return []
