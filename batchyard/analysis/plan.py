"""``batchyard plan``: what a job would do, checked against Azure Batch's limits, before anything runs.

Nothing is submitted, uploaded or created. The plan lists the tasks (from ``inputs.local_dir``
and the blobs already under the prefix, or the CSV table), the uploads and the output
locations; then runs the cloud preflight (each problem a :class:`Finding` with a severity and
a fix) and forecasts wall time and cost on Azure from a previous run's task durations.

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
- Container images from a private registry need its credentials (:mod:`batchyard.core.image_registries`).
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from batchyard.analysis.forecast import POOL_STARTUP_S, durations_from, forecast, hms, load_prices
from batchyard.core.config import Config, PoolSection
from batchyard.core.errors import BatchyardError, JobValidationError
from batchyard.core.findings import Finding
from batchyard.core.image_registries import check_registries
from batchyard.core.job import (
    Job,
    TaskDef,
    load_job,
    output_prefix,
    parse_duration,
    tasks_from_blob_names,
    tasks_from_table,
)
from batchyard.core.paths import fnmatch_name

MAX_ID = 64
CHUNK_TASKS = 100
CHUNK_BYTES = 1024 * 1024
MAX_ARG_STRLEN = 128 * 1024
ARG_MAX = 2 * 1024 * 1024
AZ_BATCH_ENV_ALLOWANCE = 4096  # the AZ_BATCH_* variables the node adds (paths, ids, URLs)
REQUIRED_SLOTS = 1  # the azure backend never sets requiredSlots, so Batch's default
DUMMY_KEY = "A" * 88  # a well-formed (base64) key: only the SAS token's length matters here
SEVERITIES = ("error", "warning", "info")


@dataclass
class Plan:
    job_file: str
    job_id: str | None
    backend: str
    tasks: int = 0
    sample: list[dict[str, Any]] = field(default_factory=list)
    uploads: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    forecast: dict[str, Any] = field(default_factory=dict)

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["findings"] = [asdict(f) for f in self.findings]
        return data


# ---------------------------------------------------------------------------------------------- checks
def check_task_ids(task_ids: Iterable[str]) -> list[Finding]:
    findings: list[Finding] = []
    seen: dict[str, str] = {}
    for task_id in task_ids:
        if len(task_id) > MAX_ID:
            findings.append(Finding("error", "task-id-too-long", f"task id {task_id!r} has {len(task_id)} "
                                    f"characters; Azure Batch allows {MAX_ID}",
                                    "shorten the job id or the inputs' names"))
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


def check_chunks(sizes: Sequence[int], *, chunk: int = CHUNK_TASKS) -> list[Finding]:
    """``sizes``: each task's serialized JSON size, in submit order, added ``chunk`` per request."""
    findings: list[Finding] = []
    if chunk > CHUNK_TASKS:
        findings.append(Finding("error", "chunk-too-many-tasks", f"add-collection requests of {chunk} tasks; "
                                f"Azure Batch accepts at most {CHUNK_TASKS} per request",
                                f"add at most {CHUNK_TASKS} tasks per request"))
    for i in range(0, len(sizes), chunk):
        part = sizes[i:i + chunk]
        total = sum(part) + len(part) + 12  # commas and {"value":[...]}
        if total <= CHUNK_BYTES:
            continue
        findings.append(Finding("warning", "chunk-too-large", f"tasks {i + 1}-{i + len(part)}: about "
                                f"{total / 1024:.0f} KiB in one add-collection request (limit 1 MB); batchyard "
                                "halves such requests until they fit, at the cost of more requests",
                                "fewer resource files or shorter environment values make submits faster"))
        break  # one is enough to make the point
    for index, size in enumerate(sizes):
        if size > CHUNK_BYTES:
            findings.append(Finding("error", "task-too-large", f"task #{index + 1} alone is about "
                                    f"{size / 1024:.0f} KiB of JSON; Azure Batch refuses tasks over 1 MB",
                                    "move large values out of the environment/CSV into a resource file"))
            break
    return findings


def check_environment(job: Job, tasks: Sequence[TaskDef], *, extra_env: dict[str, str] | None = None) -> list[Finding]:
    findings: list[Finding] = []
    base = {**job.environment, **(extra_env or {})}
    base_bytes = sum(len(f"{k}={v}".encode()) + 1 for k, v in base.items()) + AZ_BATCH_ENV_ALLOWANCE
    for name, value in base.items():
        if len(f"{name}={value}".encode()) > MAX_ARG_STRLEN:
            findings.append(Finding("error", "env-value-too-long", f"environment variable {name} is over "
                                    f"{MAX_ARG_STRLEN // 1024} KiB: a Linux node cannot start a process with it "
                                    "(execve: E2BIG)", "put the value in a resource file and pass its name"))
    worst_total, worst_task = 0, None
    for task in tasks:
        for name, value in task.params:
            if len(f"{name}={value}".encode()) > MAX_ARG_STRLEN:
                findings.append(Finding("error", "env-value-too-long", f"task {task.task_id}: column {name} is over "
                                        f"{MAX_ARG_STRLEN // 1024} KiB (execve: E2BIG)",
                                        "put the value in a file and pass its name"))
                break
        for arg in task.argv:
            if len(arg.encode()) + 1 > MAX_ARG_STRLEN:
                findings.append(Finding("error", "argument-too-long", f"task {task.task_id}: one argument is over "
                                        f"{MAX_ARG_STRLEN // 1024} KiB (execve: E2BIG)",
                                        "pass long data through a file"))
                break
        total = (base_bytes + sum(len(f"{k}={v}".encode()) + 1 for k, v in task.params)
                 + sum(len(a.encode()) + 1 for a in task.argv))
        if total > worst_total:
            worst_total, worst_task = total, task.task_id
    if worst_total > ARG_MAX:
        findings.append(Finding("error", "environment-too-large", f"task {worst_task}: environment and arguments "
                                f"total {worst_total / 1024:.0f} KiB, over the {ARG_MAX // 1024} KiB a Linux node "
                                "usually allows (execve: E2BIG)", "pass bulky values through files"))
    return findings


def check_sas(job: Job, *, margin_s: float, tasks: int, slots: int | None) -> list[Finding]:
    """SAS URLs live (retries + 1) x max_wall_clock_time + sas_margin from submit; the margin must also
    cover the time a task waits for a slot, or its input/output URLs expire before it runs."""
    from batchyard.backends.azure.tasks import sas_lifetime

    lifetime, warnings = sas_lifetime(job, margin=timedelta(seconds=margin_s))
    findings = [Finding("warning", "sas-long-lived", w, "set [constraints] max_wall_clock_time (and a finite "
                        "max_task_retry_count)") for w in warnings]
    c = job.constraints
    if c.max_wall_clock_time is None or c.max_task_retry_count < 0 or not slots or tasks <= 0:
        return findings
    waves = math.ceil(tasks / slots)
    # Tasks ahead of the last one each hold a slot for at most max_wall_clock_time (retries of failures aside).
    worst_wait = (waves - 1) * c.max_wall_clock_time + POOL_STARTUP_S
    needed = worst_wait + (c.max_task_retry_count + 1) * c.max_wall_clock_time
    if needed > lifetime.total_seconds():
        findings.append(Finding(
            "warning", "sas-expiry",
            f"SAS URLs live {hms(lifetime.total_seconds())} ((retries + 1) x max_wall_clock_time + sas_margin), "
            f"but {tasks} tasks on {slots} slot(s) run in {waves} waves: the last may start after "
            f"{hms(worst_wait)} and then need {hms((c.max_task_retry_count + 1) * c.max_wall_clock_time)}; "
            "its input and output URLs could expire first",
            f"raise [azure] sas_margin to at least {hms(worst_wait)}, or add nodes/slots"))
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


# ---------------------------------------------------------------------------------------------- sizes
def task_json_sizes(job: Job, tasks: Sequence[TaskDef], *, account_url: str, system_container: str,
                    log_container: str, lifetime: timedelta) -> list[int]:
    """Each task's add-request JSON size, built exactly as the azure backend builds it (real SAS lengths)."""
    from azure.batch._utils.model_base import SdkJSONEncoder
    from azure.storage.blob import (
        BlobClient,
        BlobSasPermissions,
        ContainerSasPermissions,
        generate_blob_sas,
        generate_container_sas,
    )

    from batchyard.backends.azure.tasks import TaskUrls, build_task, required_patterns

    account = account_url.split("//", 1)[-1].split(".", 1)[0].split("/", 1)[0] or "account"
    now = datetime.now().astimezone()

    def blob_url(container: str, name: str) -> str:
        token = generate_blob_sas(account, container, name, account_key=DUMMY_KEY,
                                  permission=BlobSasPermissions(read=True), expiry=now + lifetime,
                                  start=now - timedelta(minutes=5))
        return f"{BlobClient(account_url, container, name).url}?{token}"

    def container_url(container: str) -> str:
        token = generate_container_sas(account, container, account_key=DUMMY_KEY,
                                       permission=ContainerSasPermissions(create=True, write=True),
                                       expiry=now + lifetime, start=now - timedelta(minutes=5))
        return f"{account_url.rstrip('/')}/{container}?{token}"

    urls = TaskUrls(
        resource_files=tuple((rf.target, blob_url(system_container, f"jobs/{job.id}/resources/{rf.target}"))
                             for rf in job.resource_files),
        output_containers={o.container: container_url(o.container) for o in job.outputs},
        log_container_url=container_url(log_container))
    required = required_patterns(job)
    sizes = []
    for task in tasks:
        input_url = (blob_url(task.input_container, task.input_blob)
                     if task.input_blob is not None and task.input_container is not None else None)
        options = build_task(job, task, urls=urls, input_url=input_url, required=required)
        sizes.append(len(json.dumps(options, cls=SdkJSONEncoder, exclude_readonly=True).encode()))
    return sizes


# ---------------------------------------------------------------------------------------------- plan
class _Context:
    """Storage and backend access for the plan, only where it needs no start-up (never starts Azurite)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.conn = config.storage_connection_string
        if not self.conn:
            from batchyard.emulator.azurite import Azurite

            instance = Azurite(home=config.home).status()
            self.conn = instance.connection_string() if instance is not None else None
        self._storage: Any = None

    @property
    def storage(self) -> Any:
        if self._storage is None and self.conn:
            from batchyard.storage.account import Storage

            self._storage = Storage.from_connection_string(self.conn)
        return self._storage

    def backend(self) -> Any:
        if not self.conn:
            return None
        from dataclasses import replace

        from batchyard.backends import get_backend

        return get_backend(None, replace(self.config, storage_connection_string=self.conn))


def _local_files(job: Job) -> list[tuple[Path, str]]:
    assert job.inputs is not None and job.inputs.local_dir is not None
    folder = (job.base_dir / job.inputs.local_dir).resolve()
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return [(p, job.inputs.prefix + p.relative_to(folder).as_posix()) for p in files]


def make_plan(job_file: str | Path, config: Config, *, show: int = 5, active_jobs: int | None = None,
              durations: Sequence[float] | None = None) -> Plan:
    """The plan for ``job_file``. ``active_jobs``/``durations`` override what the backend would say (tests)."""
    plan = Plan(job_file=str(job_file), job_id=None, backend=config.backend)
    try:
        job = load_job(job_file)
    except JobValidationError as exc:
        for where, problem in exc.problems:
            plan.findings.append(Finding("error", "job-invalid", f"{where}: {problem}" if where else problem,
                                         "fix the job file (docs/job-file.md)"))
        return plan
    plan.job_id = job.id
    ctx = _Context(config)
    findings = plan.findings

    # --- tasks and uploads
    tasks: list[TaskDef] = []
    local: list[tuple[Path, str]] = []
    try:
        if job.tasks is not None:
            tasks = list(tasks_from_table(job))
        else:
            assert job.inputs is not None
            names: set[str] = set()
            if job.inputs.local_dir:
                local = _local_files(job)
                if not local:
                    findings.append(Finding("error", "local-dir-missing", f"inputs.local_dir: "
                                            f"{(job.base_dir / job.inputs.local_dir).resolve()} has no files",
                                            "check the folder (relative to the job file)"))
                names.update(name for _, name in local)
            listed = _list_blobs(ctx, job, findings)
            names.update(listed)
            tasks = list(tasks_from_blob_names(job, sorted(names)))
            if not tasks:
                findings.append(Finding("error", "no-inputs", f"no input in container {job.inputs.container!r} "
                                        f"under prefix {job.inputs.prefix!r} matches glob {job.inputs.glob!r}",
                                        "check prefix and glob, or set inputs.local_dir"))
    except JobValidationError as exc:
        for where, problem in exc.problems:
            code = "task-id-collision" if "same task id" in problem else "job-invalid"
            findings.append(Finding("error", code, f"{where}: {problem}", "rename the inputs (or rows) involved"))
    plan.tasks = len(tasks)
    for task in tasks[:show]:
        plan.sample.append({"task_id": task.task_id, "label": task.label, "argv": list(task.argv),
                            "command_line": _command_line(job, task)})
    resource_rows = []
    for i, rf in enumerate(job.resource_files):
        path = (job.base_dir / rf.source).resolve()
        if not path.is_file():
            findings.append(Finding("error", "resource-missing", f"resource_files.{i}.source: {path} not found",
                                    "fix the path (relative to the job file)"))
        resource_rows.append({"source": str(path), "bytes": path.stat().st_size if path.is_file() else None,
                              "container": config.storage.system_container,
                              "blob": f"jobs/{job.id}/resources/{rf.target}", "file_path": rf.target})
    plan.uploads = {
        "local_dir": {"container": job.inputs.container if job.inputs else None, "files": len(local),
                      "bytes": sum(p.stat().st_size for p, _ in local),
                      "first": [{"path": str(p), "blob": b} for p, b in local[:show]],
                      "note": "unchanged files (same MD5) are skipped at submit"} if local else None,
        "resource_files": resource_rows,
    }
    sample = tasks[0] if tasks else None
    for out in job.outputs:
        prefix = output_prefix(job, out, sample) if sample else out.path
        plan.outputs.append({"pattern": out.pattern, "container": out.container, "path": out.path,
                             "first_task_prefix": prefix, "upload_on": out.upload_on, "optional": out.optional})

    # --- cloud preflight
    findings.extend(check_task_ids(t.task_id for t in tasks))
    from batchyard.backends.azure.tasks import REQUIRED_OUTPUTS_ENV, required_patterns, sas_lifetime

    margin = parse_duration(config.azure.sas_margin)
    lifetime, _ = sas_lifetime(job, margin=timedelta(seconds=margin))
    account_url = "https://" + "a" * 24 + ".blob.core.windows.net"  # the longest real account name
    if ctx.conn and "blob.core.windows.net" in ctx.conn.lower() and ctx.storage is not None:
        account_url = ctx.storage.account.blob_endpoint
    try:
        required = required_patterns(job)
        findings.extend(check_chunks(task_json_sizes(job, tasks, account_url=account_url,
                                                     system_container=config.storage.system_container,
                                                     log_container=config.storage.log_container, lifetime=lifetime)))
    except JobValidationError as exc:
        required = []
        findings.extend(Finding("error", "job-invalid", f"{w}: {p}") for w, p in exc.problems)
    extra = {REQUIRED_OUTPUTS_ENV: "\n".join(required)} if required else {}
    findings.extend(check_environment(job, tasks, extra_env=extra))
    section = config.azure.pool or PoolSection()
    sizes, _ = load_prices(config)
    cores = sizes.get(section.vm_size.lower(), {}).get("cores")
    slots = (section.dedicated_nodes + section.spot_nodes) * section.task_slots_per_node
    findings.extend(check_sas(job, margin_s=margin, tasks=len(tasks), slots=slots or None))
    findings.extend(check_outputs(job, sample))
    findings.extend(check_pool(config, cores=int(cores) if cores else None))
    findings.extend(check_registries(job, config))

    # --- what the backend knows: a previous run, active jobs
    previous = "no previous run"
    job_exists = False
    if durations is None or active_jobs is None:
        be = None
        try:
            be = ctx.backend()
            if be is not None:
                with be:
                    findings.extend(be.preflight_findings(job))
                    if durations is None:
                        results = list(be.list_task_results(job.id))
                        durations = durations_from(results)
                        done = sum(str(r.state) == "succeeded" for r in results)
                        previous = (f"previous run of {job.id} on {be.name}: {len(results)} tasks, {done} succeeded"
                                    if results else previous)
                        job_exists = bool(results)
                    if active_jobs is None and be.name == "azure":
                        active_jobs = sum(1 for _ in be.client.list_jobs(filter="state eq 'active'", select=["id"]))
        except BatchyardError as exc:
            previous = f"no previous run ({str(exc).splitlines()[0]})" if durations is None else previous
        except Exception as exc:  # a plan never fails on what it cannot ask
            previous = f"no previous run ({type(exc).__name__})" if durations is None else previous
    elif durations:
        previous = f"given durations of {len(durations)} tasks"
    findings.extend(check_quota(config, active_jobs=active_jobs, job_exists=job_exists))
    plan.forecast = forecast(config, tasks=len(tasks), durations=durations or None, previous=previous)
    plan.findings.sort(key=lambda f: SEVERITIES.index(f.severity))
    return plan


def _list_blobs(ctx: _Context, job: Job, findings: list[Finding]) -> list[str]:
    assert job.inputs is not None
    if ctx.storage is None:
        findings.append(Finding("info", "inputs-not-listed", "no storage configured or running: only "
                                "inputs.local_dir files are counted", "set AZURE_STORAGE_CONNECTION_STRING "
                                "(or `batchyard emulator start`) to count blobs already uploaded"))
        return []
    try:
        return list(ctx.storage.list_blob_names(job.inputs.container, job.inputs.prefix))
    except BatchyardError as exc:
        if "does not exist" not in str(exc):
            findings.append(Finding("warning", "inputs-not-listed", f"could not list the inputs: {exc}",
                                    "check the storage account settings"))
        return []


def _command_line(job: Job, task: TaskDef) -> str:
    """The command as a shell would show it (on Azure, wrapped in the output check when outputs are required)."""
    return shlex.join(task.argv)


__all__ = ["Finding", "Plan", "check_chunks", "check_environment", "check_outputs", "check_pool", "check_quota",
           "check_sas", "check_task_ids", "forecast", "make_plan"]
