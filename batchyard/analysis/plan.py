"""``batchyard plan``: what a job would do, checked against Azure Batch's limits, before anything runs.

Nothing is submitted, uploaded or created. The plan lists the tasks (from ``inputs.local_dir``
and the blobs already under the prefix, or the CSV table), the uploads and the output
locations; then runs the cloud preflight (each problem a :class:`Finding` with a severity and
a fix; the rules are in :mod:`batchyard.analysis.plan_checks`) and forecasts wall time and cost
on Azure from a previous run's task durations.

Tasks are checked as they are fanned out, one at a time: a CSV table of a million rows is
streamed, never held (docs/plan.md gives the memory it takes). What the azure backend would
send (SAS lifetimes, request sizes) comes from the backend itself, reached through the registry.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, cast

from batchyard.analysis.autoscale_sim import autoscale_forecast
from batchyard.analysis.forecast import durations_from, forecast, load_prices
from batchyard.analysis.plan_checks import (
    ChunkCheck,
    EnvironmentCheck,
    TaskIdCheck,
    check_chunks,
    check_environment,
    check_outputs,
    check_pool,
    check_quota,
    check_sas,
    check_task_ids,
)
from batchyard.backends import get_backend, get_backend_class
from batchyard.core.config import Config, PoolSection
from batchyard.core.errors import BatchyardError, JobValidationError
from batchyard.core.final_step import FINAL_TASK_ID, dependency_tree, without_final
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
from batchyard.core.output_names import OutputCollisions
from batchyard.core.placeholders import substitute_command
from batchyard.core.rerun import Decider, PriorTask, RerunOption, blob_identity, with_fingerprints
from batchyard.node.docker import image_findings
from batchyard.storage.account import file_md5

SEVERITIES = ("error", "warning", "info")
# Rules both plan and the azure backend's preflight check (plan from the config alone, the backend against
# the account): when the backend answered one, its findings stand and plan's own are dropped, so no rule
# shows twice.
ANSWERED_BY_BACKEND = frozenset({"pool-slots-over-limit", "pool-slots-too-few", "pool-no-slots", "job-quota",
                                 "image-needs-sh"})
LONGEST_ACCOUNT_URL = "https://" + "a" * 24 + ".blob.core.windows.net"  # the longest real account name


class SubmitPreview(Protocol):
    """What the azure backend's ``preview_submit`` answers (backends/azure/preview.py)."""

    lifetime: timedelta
    lifetime_warnings: list[str]
    required: list[str]

    @property
    def extra_env(self) -> dict[str, str]: ...

    def request_size(self, task: TaskDef) -> int: ...


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
    final_step: dict[str, Any] | None = None  # [final]: its command and its dependencies on Batch
    rerun: dict[str, Any] | None = None  # which tasks a run would run and why (None: no records to compare)

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["findings"] = [asdict(f) for f in self.findings]
        return data


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
        return get_backend(None, replace(self.config, storage_connection_string=self.conn))


def _local_files(job: Job) -> list[tuple[Path, str]]:
    assert job.inputs is not None and job.inputs.local_dir is not None
    folder = (job.base_dir / job.inputs.local_dir).resolve()
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return [(p, job.inputs.prefix + p.relative_to(folder).as_posix()) for p in files]


def _preview(job: Job, config: Config, ctx: _Context, findings: list[Finding]) -> SubmitPreview | None:
    """The azure backend's preview of the submit, or None (with a finding) when it cannot say."""
    account_url = LONGEST_ACCOUNT_URL
    if ctx.conn and "blob.core.windows.net" in ctx.conn.lower() and ctx.storage is not None:
        account_url = ctx.storage.account.blob_endpoint
    try:
        azure = get_backend_class("azure")
        return cast(SubmitPreview, azure.preview_submit(  # type: ignore[attr-defined]
            job, sas_margin=timedelta(seconds=parse_duration(config.azure.sas_margin)), account_url=account_url,
            system_container=config.storage.system_container, log_container=config.storage.log_container))
    except JobValidationError as exc:
        findings.extend(Finding("error", "job-invalid", f"{w}: {p}") for w, p in exc.problems)
    except BatchyardError as exc:  # azure-batch not installed: the local backend works without it
        findings.append(Finding("info", "azure-not-checked", f"request sizes and SAS lifetimes not checked: {exc}"))
    return None


@dataclass
class _Scan:
    """Everything the plan keeps of the tasks: a count, a few samples, the per-task rules' state."""

    environment: EnvironmentCheck
    ids: TaskIdCheck = field(default_factory=TaskIdCheck)
    chunks: ChunkCheck = field(default_factory=ChunkCheck)
    count: int = 0
    sample: list[TaskDef] = field(default_factory=list)
    task_ids: list[str] | None = None  # kept for a job with a final step: its dependency tree

    def add(self, task: TaskDef, preview: SubmitPreview | None, show: int) -> None:
        self.count += 1
        if self.task_ids is not None:
            self.task_ids.append(task.task_id)
        if len(self.sample) < max(show, 1):
            self.sample.append(task)
        self.ids.add(task.task_id)
        if preview is not None:
            self.chunks.add(preview.request_size(task))
        self.environment.add(task)


def _tasks(job: Job, ctx: _Context, findings: list[Finding], local: list[tuple[Path, str]]) -> Iterator[TaskDef]:
    """The job's tasks, each with the fingerprint it would be submitted with (local files as they would
    be uploaded, the rest as listed)."""
    resources = {rf.target: file_md5(job.base_dir / rf.source).hex() for rf in job.resource_files
                 if (job.base_dir / rf.source).is_file()}
    if job.tasks is not None:
        return (fingerprinted for task in tasks_from_table(job)
                for fingerprinted in with_fingerprints(job, [task], resources=resources, identities={}))
    assert job.inputs is not None
    identities = _list_blobs(ctx, job, findings)
    identities.update({name: blob_identity(md5=file_md5(path), etag=None, size=path.stat().st_size)
                       for path, name in local})
    return iter(with_fingerprints(job, tasks_from_blob_names(job, sorted(identities)), resources=resources,
                                  identities=identities))


def make_plan(job_file: str | Path, config: Config, *, show: int = 5, active_jobs: int | None = None,
              durations: Sequence[float] | None = None, rerun: RerunOption = None) -> Plan:
    """The plan for ``job_file``. ``active_jobs``/``durations`` override what the backend would say (tests);
    ``rerun`` as ``batchyard run --rerun`` takes it."""
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

    # --- tasks and uploads, checked one task at a time
    local: list[tuple[Path, str]] = []
    if job.inputs is not None and job.inputs.local_dir:
        local = _local_files(job)
        if not local:
            findings.append(Finding("error", "local-dir-missing", f"inputs.local_dir: "
                                    f"{(job.base_dir / job.inputs.local_dir).resolve()} has no files",
                                    "check the folder (relative to the job file)"))
    preview = _preview(job, config, ctx, findings)
    scan = _Scan(environment=EnvironmentCheck(job, extra_env=preview.extra_env if preview else {}),
                 task_ids=[] if job.final is not None else None)
    prior = _prior(ctx, job, findings)
    decider = Decider(job.id, prior or {}, rerun=without_final(rerun)[0])
    collisions = OutputCollisions(job)
    try:
        for task in _tasks(job, ctx, findings, local):
            scan.add(task, preview, show)
            decider.add(task)
            collisions.add(task)
        clash = collisions.problem()
        if clash is not None:
            findings.append(Finding("error", "output-collision", f"{clash[0]}: {clash[1]}",
                                    "give each task its own output blob (docs/job-file.md, [[outputs]])"))
        if prior is not None or rerun is not None:
            plan.rerun = decider.finish().to_dict()
        if job.inputs is not None and not scan.count:
            findings.append(Finding("error", "no-inputs", f"no input in container {job.inputs.container!r} "
                                    f"under prefix {job.inputs.prefix!r} matches glob {job.inputs.glob!r}",
                                    "check prefix and glob, or set inputs.local_dir"))
    except JobValidationError as exc:
        for where, problem in exc.problems:
            code = "task-id-collision" if "same task id" in problem else "rerun-unknown-task" if where == "--rerun" \
                else "job-invalid"
            fix = ("give --rerun ids of the job's tasks (`batchyard status JOB` lists them), or `all`"
                   if code == "rerun-unknown-task" else "fix the inputs (or rows) involved")
            findings.append(Finding("error", code, f"{where}: {problem}", fix))
    plan.tasks = scan.count
    for task in scan.sample[:show]:
        plan.sample.append({"task_id": task.task_id, "label": task.label, "argv": list(task.argv),
                            "command_line": shlex.join(task.argv)})
    plan.uploads = _uploads(job, config, local, findings, show)
    sample = scan.sample[0] if scan.sample else None
    for out in job.outputs:
        prefix = output_prefix(job, out, sample) if sample else out.path
        plan.outputs.append({"pattern": out.pattern, "container": out.container, "path": out.path,
                             "first_task_prefix": prefix, "upload_on": out.upload_on, "optional": out.optional})

    if job.final is not None:
        plan.final_step = final_step_plan(job, scan.task_ids or [])

    # --- cloud preflight
    findings.extend(scan.ids.findings())
    findings.extend(scan.chunks.findings() if preview is not None else [])
    findings.extend(scan.environment.findings())
    section = config.azure.pool or PoolSection()
    sizes, _ = load_prices(config)
    cores = sizes.get(section.vm_size.lower(), {}).get("cores")
    slots = (section.dedicated_nodes + section.spot_nodes) * section.task_slots_per_node
    findings.extend(check_outputs(job, sample))
    findings.extend(check_pool(config, cores=int(cores) if cores else None))
    findings.extend(check_registries(job, config))
    findings.extend(image_findings(job))  # the output check's /bin/sh in the image, as Azure Batch needs it

    # --- what the backend knows: a previous run, active jobs
    backend_findings: list[Finding] = []
    if "job-id-case" in {f.code for f in findings} and durations is None:
        durations = []  # the runs Batch would find under this id are the other job's
    durations, active_jobs, job_exists, previous = _backend_facts(ctx, job, durations, active_jobs,
                                                                  backend_findings)
    findings.extend(check_quota(config, active_jobs=active_jobs, job_exists=job_exists))
    # The backend's own preflight checked some rules against the live account: its word replaces plan's.
    answered = {f.code for f in backend_findings if f.code in ANSWERED_BY_BACKEND}
    findings[:] = [f for f in findings if f.code not in answered] + backend_findings
    # On Azure Batch a re-run adds only the tasks its records do not keep; another backend's records
    # say nothing of what Batch holds, so there the forecast is of the whole job (docs/plan.md).
    to_run = scan.count
    if config.backend == "azure" and plan.rerun is not None:
        to_run = int(plan.rerun["rerun"])
    if preview is not None:  # after the backend facts: the expiry advice follows the forecast's timeline
        findings.extend(check_sas(job, lifetime=preview.lifetime, warnings=preview.lifetime_warnings,
                                  tasks=to_run, slots=slots or None, durations=durations or None,
                                  existing_pool=bool(config.azure.pool_id)))
    plan.forecast = forecast(config, tasks=to_run, total=scan.count, durations=durations or None, previous=previous,
                             final_step=job.final is not None)
    autoscale, problems = autoscale_forecast(config, tasks=to_run, durations=durations or None) if to_run \
        else (None, [])
    if autoscale is not None:  # the pool's formula run over a simulated job (analysis/autoscale_sim.py)
        plan.forecast["autoscale"] = autoscale
    findings.extend(problems)
    plan.findings.sort(key=lambda f: SEVERITIES.index(f.severity))
    return plan


def final_step_plan(job: Job, task_ids: list[str]) -> dict[str, Any]:
    """The final step as the plan shows it: its argv, when it runs, and its dependencies on Azure Batch."""
    assert job.final is not None
    argv = substitute_command(job.final.command, {"job_id": job.id, "task_id": FINAL_TASK_ID})
    tree = dependency_tree(task_ids)
    return {"task_id": FINAL_TASK_ID, "argv": list(argv), "command_line": shlex.join(argv),
            "run_when": job.final.run_when, "stage_outputs": job.final.stage_outputs,
            "outputs": [o.model_dump(mode="json") for o in job.final.outputs],
            "depends_on": {"tasks": len(task_ids), "barriers": len(tree.barriers),
                           "final_step_names": len(tree.final_depends_on),
                           "final_step_id_chars": sum(map(len, tree.final_depends_on))}}


def _uploads(job: Job, config: Config, local: list[tuple[Path, str]], findings: list[Finding],
             show: int) -> dict[str, Any]:
    resource_rows = []
    for i, rf in enumerate(job.resource_files):
        path = (job.base_dir / rf.source).resolve()
        if not path.is_file():
            findings.append(Finding("error", "resource-missing", f"resource_files.{i}.source: {path} not found",
                                    "fix the path (relative to the job file)"))
        resource_rows.append({"source": str(path), "bytes": path.stat().st_size if path.is_file() else None,
                              "container": config.storage.system_container,
                              "blob": f"jobs/{job.id}/resources/{rf.target}", "file_path": rf.target})
    return {
        "local_dir": {"container": job.inputs.container if job.inputs else None, "files": len(local),
                      "bytes": sum(p.stat().st_size for p, _ in local),
                      "first": [{"path": str(p), "blob": b} for p, b in local[:show]],
                      "note": "unchanged files (same MD5) are skipped at submit"} if local else None,
        "resource_files": resource_rows,
    }


def _backend_facts(ctx: _Context, job: Job, durations: Sequence[float] | None, active_jobs: int | None,
                   findings: list[Finding]) -> tuple[Sequence[float] | None, int | None, bool, str]:
    """(durations, active jobs, whether the job exists, what the previous run was), asking the backend
    only what the caller did not give; what the backend finds would stop the job goes to ``findings``."""
    previous = "no previous run"
    job_exists = False
    if durations is not None and active_jobs is not None:
        return durations, active_jobs, job_exists, (f"given durations of {len(durations)} tasks" if durations
                                                    else previous)
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
    return durations, active_jobs, job_exists, previous


def _prior(ctx: _Context, job: Job, findings: list[Finding]) -> dict[str, PriorTask] | None:
    """The records of the job's previous runs (core/rerun.py); None when there is nothing to ask, or when
    `run` would refuse the id (another job's in another case: a finding says so, and its records are not
    this job's)."""
    try:
        be = ctx.backend()
        if be is None:
            return None
        with be:
            try:
                be.refuse_other_spelling(job.id)
            except JobValidationError as exc:
                findings.extend(Finding("error", "job-id-case", f"{where}: {problem}", "use the existing job's id, "
                                        "or another id") for where, problem in exc.problems)
                return None
            return be.prior_tasks(job.id)
    except Exception:  # a plan never fails on what it cannot ask; the forecast says why the backend is out of reach
        return None


def _list_blobs(ctx: _Context, job: Job, findings: list[Finding]) -> dict[str, str]:
    """Each input blob's identity (core/rerun.py) by name."""
    assert job.inputs is not None
    if ctx.storage is None:
        findings.append(Finding("info", "inputs-not-listed", "no storage configured or running: only "
                                "inputs.local_dir files are counted", "set AZURE_STORAGE_CONNECTION_STRING "
                                "(or `batchyard emulator start`) to count blobs already uploaded"))
        return {}
    try:
        return {name: blob_identity(md5=md5, etag=etag, size=size)
                for name, md5, etag, size in ctx.storage.list_blob_identities(job.inputs.container, job.inputs.prefix)}
    except BatchyardError as exc:
        if "does not exist" not in str(exc):
            findings.append(Finding("warning", "inputs-not-listed", f"could not list the inputs: {exc}",
                                    "check the storage account settings"))
        return {}


__all__ = ["Finding", "Plan", "check_chunks", "check_environment", "check_outputs", "check_pool", "check_quota",
           "check_sas", "check_task_ids", "forecast", "make_plan"]
