"""The job model: one command, many inputs, one task per input.

A job file (TOML) or ``batchyard.Job(...)`` builds the same frozen pydantic model. Fan-out
(:func:`tasks_from_blob_names`, :func:`tasks_from_table`) turns a job into :class:`TaskDef` s,
one per matching input blob (Azure Batch CLI's ``taskPerFile``) or per row of a CSV task table
(a parameter sweep).

Task ids are deterministic from the job id and the input, so a re-submit finds the same
tasks, and unique even compared case-insensitively (Batch compares them that way): a
readable slug of the input plus a hash of its exact name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import Field, StrictBool, ValidationError, ValidationInfo, field_validator, model_validator

from batchyard.core.durations import parse_duration
from batchyard.core.errors import JobValidationError, UnsafePathError
from batchyard.core.final_step import FinalStep
from batchyard.core.job_parts import (
    Constraints,
    Inputs,
    OutputSpec,
    ResourceFileSpec,
    _Model,
    checked_command,
)
from batchyard.core.paths import blob_name_problem, fnmatch_name, safe_relative_path
from batchyard.core.placeholders import (
    BUILTIN_PLACEHOLDERS,
    PLACEHOLDER_RE,
    reserved_variable_problem,
    split_command,
    static_prefix,
    substitute,
    substitute_command,
    variable_name,
)
from batchyard.core.task_table import (
    SeenIds,
    TaskTableError,
    environment_name_problem,
    iter_rows,
    read_header,
    repeated_row_problem,
)
from batchyard.core.toml_files import TomlFileError, read_toml

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
INPUT_PLACEHOLDERS = ("input", "input_name", "input_stem", "input_blob")
TASK_ID_HASH_LEN = 12
class Job(_Model):
    """A per-file batch job. ``base_dir`` resolves local paths (the job file's folder)."""

    id: str = Field(description="Job id: 1-64 chars, letters, digits, '-' and '_' (Azure Batch's rule).")
    command: str = Field(description="Split like a POSIX shell into argv; each placeholder value becomes exactly "
                         "one argument, or one shell-quoted word inside a shell script (`sh -c '...'`). No shell "
                         "runs unless the command starts one. At most 32,767 characters.")
    inputs: Inputs | None = Field(default=None, description="One task per matching blob.")
    tasks: str | None = Field(default=None, description="CSV task table (relative to the job file): one task "
                              "per row; columns become placeholders and environment variables.")
    resource_files: tuple[ResourceFileSpec, ...] = Field(default=(), description="Files staged into every task.")
    outputs: tuple[OutputSpec, ...] = Field(default=(), description="What to upload after each task.")
    constraints: Constraints = Field(default=Constraints(), description="Time limit and retries.")
    environment: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for "
                                        "every task (AZ_BATCH_*, BATCHYARD_* and the placeholders' INPUT, "
                                        "INPUT_NAME, INPUT_STEM, INPUT_BLOB, JOB_ID, TASK_ID are reserved).")
    container_image: str | None = Field(default=None, description="Run the command inside this image. Local "
                                        "backend and emulator: it must be on the Docker engine (never pulled); the "
                                        "node root is mounted at the same path, networking is disabled. Azure Batch "
                                        "pulls it; a private registry needs [[azure.container_registries]] "
                                        "(docs/configuration.md).")
    final: FinalStep | None = Field(default=None, description="One step after all the per-file tasks, "
                                    "given their outputs (see [final]).")
    elevated: StrictBool = Field(default=False, description="Run as an admin (Batch's admin auto-user): root in a "
                           "container_image on every backend, else a non-root user there (docs/azure.md).")
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ID_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid job id (1-64 chars: letters, digits, '-' and '_')")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: str) -> str:
        return checked_command(v)

    @field_validator("environment")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            problem = environment_name_problem(name)
            if problem:
                raise ValueError(problem)
            if not isinstance(value, str):
                raise ValueError(f"{name}: value must be a string")
        return v

    @model_validator(mode="after")
    def _shape(self, info: ValidationInfo) -> Job:
        if (self.inputs is None) == (self.tasks is None):
            raise ValueError("give exactly one of [inputs] (one task per blob) or tasks = 'table.csv'")
        if info.context and info.context.get("stored"):
            return self  # a stored job was checked at submit; its CSV stays on the submitter's disk
        problem = reserved_variable_problem(self.environment)
        if problem:
            raise ValueError(f"environment: {problem}")
        names = set(BUILTIN_PLACEHOLDERS)
        if self.tasks is not None:
            try:
                columns = read_header(self.base_dir / self.tasks, taken=BUILTIN_PLACEHOLDERS)
            except TaskTableError as exc:
                raise ValueError(f"tasks: {exc}") from None
            problem = reserved_variable_problem(columns)
            if problem:
                raise ValueError(f"tasks: column {problem}")
            names = (names | set(columns)) - set(INPUT_PLACEHOLDERS)
        substitute_command(self.command, dict.fromkeys(names, "x"))
        for i, out in enumerate(self.outputs):
            substitute(out.path, dict.fromkeys(names, ""), field_name=f"outputs.{i}.path")
        if self.final is not None:
            self.final.check_placeholders()
        return self

    @property
    def argv_template(self) -> list[str]:
        return list(split_command(self.command))

    def output_locations(self) -> list[tuple[str, str]]:
        """(container, blob prefix) pairs under which every output of this job lands: each output's
        path up to its first per-task placeholder."""
        return sorted({(out.container, static_prefix(out.path, self.id)) for out in self.outputs})

    def required_patterns(self) -> list[str]:
        """Output patterns every task must match (not optional, uploaded on success): its outputs check."""
        return [o.pattern for o in self.outputs if not o.optional and o.upload_on != "failure"]


# ---------------------------------------------------------------------------------------------- loading
def _format_loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after", "function-before"))


# A TOML table written where the job file wants an array of tables, or the other way round.
_TABLES = {"outputs": "[[outputs]] (an array of tables, one per output)",
           "resource_files": "[[resource_files]] (an array of tables, one per file)"}
_TABLE = {"inputs": "[inputs] (one table)", "constraints": "[constraints] (one table)", "final": "[final] (one table)"}


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The field names the model accepts where ``loc`` points (for "did you mean")."""
    parents = [p for p in loc[:-1] if isinstance(p, str)]
    model: Any = {(): Job, ("inputs",): Inputs, ("outputs",): OutputSpec, ("resource_files",): ResourceFileSpec,
                  ("constraints",): Constraints, ("final",): FinalStep,
                  ("final", "outputs"): OutputSpec}.get(tuple(parents))
    return [name for name in model.model_fields if name != "base_dir"] if model is not None else []


def _problem_text(err: Any) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ")
    loc, given = tuple(err["loc"]), err.get("input")
    if err["type"] == "extra_forbidden":
        import difflib

        near = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1, cutoff=0.75)
        return "unknown field" + (f": did you mean {near[0]!r}?" if near else "") + \
            " (check the spelling; see docs/job-file.md)"
    name = loc[-1] if loc else ""
    if name in _TABLES and len(loc) <= 2 and isinstance(given, dict):
        return f"write {_TABLES[str(name)]}, not [{name}]"
    if name in _TABLE and len(loc) == 1 and isinstance(given, list):
        return f"write {_TABLE[str(name)]}, not [[{name}]]"
    return msg


def job_from_dict(data: Mapping[str, Any], *, source: str = "job", base_dir: Path | None = None,
                  stored: bool = False) -> Job:
    """Validate a job from a mapping; ``stored`` for a job read back from storage (already checked)."""
    try:
        return Job.model_validate({**data, "base_dir": base_dir or Path.cwd()}, context={"stored": stored})
    except ValidationError as exc:
        problems = [(_format_loc(err["loc"]), _problem_text(err)) for err in exc.errors()]
        # "command: Field required" beside "comand: ... did you mean 'command'?" says the same twice.
        meant = {where.rsplit(".", 1)[0] + "." + text.split("'")[1] if "." in where else text.split("'")[1]
                 for where, text in problems if "did you mean" in text}
        problems = [(where, text) for where, text in problems if not (text == "Field required" and where in meant)]
        raise JobValidationError(source, problems) from None
    except (ValueError, OSError) as exc:
        raise JobValidationError(source, [("", str(exc))]) from None


def load_job(path: str | Path) -> Job:
    """Read and validate a TOML job file; errors name the file and the field."""
    path = Path(path)
    try:
        data = read_toml(path)
    except FileNotFoundError:
        raise JobValidationError(str(path), [("", "file not found")]) from None
    except TomlFileError as exc:
        raise JobValidationError(str(path), [("", str(exc))]) from None
    return job_from_dict(data, source=str(path), base_dir=path.resolve().parent)


# ---------------------------------------------------------------------------------------------- fan-out
@dataclass(frozen=True, slots=True)  # slots: a submit may hold a million of them
class TaskDef:
    """One task of a job: its id, the blob it reads (if any), its argv and extra environment."""

    task_id: str
    argv: tuple[str, ...]
    input_container: str | None = None
    input_blob: str | None = None
    input_path: str | None = None  # staged path, relative to the working dir
    params: tuple[tuple[str, str], ...] = ()
    # What decides its result, hashed part by part (core/rerun.py); "" where it is not known.
    fingerprint: str = ""

    def with_fingerprint(self, fingerprint: str) -> TaskDef:
        """This task carrying ``fingerprint`` (``dataclasses.replace``, at a fifth of its cost: a fan-out
        makes one per task)."""
        return TaskDef(self.task_id, self.argv, self.input_container, self.input_blob, self.input_path,
                       self.params, fingerprint)

    def as_row(self) -> tuple[Any, ...]:
        """Its fields as a tuple, in order (``TaskDef(*row)`` makes it again): cheap to pickle."""
        return (self.task_id, self.argv, self.input_container, self.input_blob, self.input_path, self.params,
                self.fingerprint)

    @property
    def label(self) -> str:
        """What the task is about, for people: the input blob or the row's values."""
        if self.input_blob is not None:
            return self.input_blob
        return ", ".join(f"{k}={v}" for k, v in self.params)

    def values(self, job: Job) -> dict[str, str]:
        return placeholder_values(job, self.task_id, self.input_path, self.input_blob, dict(self.params))

    def environment(self, job: Job) -> tuple[tuple[str, str], ...]:
        """The variables this task adds to the job's environment: each built-in placeholder's value
        under its name in capitals (``INPUT``, ``INPUT_STEM``...), then the columns of its row."""
        values = self.values(job)
        builtin = tuple((variable_name(name), values[name]) for name in BUILTIN_PLACEHOLDERS if name in values)
        return builtin + self.params


def make_task_id(job_id: str, key: str, readable: str) -> str:
    """``<slug>-<hash>``: the slug helps people, the hash of the exact key makes it unique."""
    digest = hashlib.sha256(f"{job_id}\x00{key}".encode()).hexdigest()[:TASK_ID_HASH_LEN]
    slug = re.sub(r"[^a-z0-9]+", "-", readable.lower()).strip("-")
    room = 64 - TASK_ID_HASH_LEN - 1
    slug = slug[:room].rstrip("-")
    return f"{slug}-{digest}" if slug else f"t-{digest}"


def placeholder_values(job: Job, task_id: str, input_path: str | None, input_blob: str | None,
                       params: Mapping[str, str]) -> dict[str, str]:
    values = {"job_id": job.id, "task_id": task_id, **params}
    if input_path is not None:
        name = PurePosixPath(input_path).name
        values.update({
            "input": input_path, "input_name": name,
            "input_stem": name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name,
            "input_blob": input_blob or "",
        })
    return values


def _task_from_values(job: Job, task_id: str, values: Mapping[str, str], **fields: Any) -> TaskDef:
    return TaskDef(task_id=task_id, argv=substitute_command(job.command, values), **fields)


def _unsafe_output(job: Job, values: Mapping[str, str]) -> tuple[int, str, str] | None:
    """The first output whose path, with these values, would not land where it says:
    (its index, the substituted path, the problem); None when every output is in place."""
    for index, out in enumerate(job.outputs):
        prefix = substitute(out.path, values, field_name=f"outputs.{index}.path")
        problem = blob_name_problem(prefix)
        if problem:
            return index, prefix, problem
    return None


def tasks_from_blob_names(job: Job, names: Iterable[str]) -> Iterator[TaskDef]:
    """One task per blob name that matches the job's prefix and glob (names in any order)."""
    assert job.inputs is not None
    prefix, pattern = job.inputs.prefix, job.inputs.glob
    seen: dict[str, str] = {}
    for name in names:
        if not name.startswith(prefix):
            continue
        rel = name[len(prefix):].lstrip("/")
        if not rel or not fnmatch_name(rel, pattern):
            continue
        try:
            staged = safe_relative_path(rel, what=f"input blob {name!r}")
        except UnsafePathError:
            # A blob whose name would land outside the working dir is refused, never staged.
            raise JobValidationError("inputs", [("inputs", f"blob {name!r} would be staged outside the "
                                                           "working dir ('..', '\\' or absolute)")]) from None
        task_id = make_task_id(job.id, name, PurePosixPath(rel).stem)
        lowered = task_id.lower()
        if lowered in seen:
            raise JobValidationError("inputs", [("inputs", f"blobs {seen[lowered]!r} and {name!r} give the "
                                                           f"same task id {task_id!r}")])
        seen[lowered] = name
        values = placeholder_values(job, task_id, staged.as_posix(), name, {})
        unsafe = _unsafe_output(job, values)
        if unsafe is not None:
            index, path, problem = unsafe
            raise JobValidationError("inputs", [(f"outputs.{index}.path", f"blob {name!r}: "
                                                 f"{job.outputs[index].path!r} becomes {path!r}, which {problem}")])
        yield _task_from_values(job, task_id, values, input_container=job.inputs.container,
                                input_blob=name, input_path=staged.as_posix())


def _row_task_id(job: Job, row: Mapping[str, str]) -> str:
    key = "\x1f".join(f"{k}={v}" for k, v in row.items())
    return make_task_id(job.id, key, next(iter(row.values()), ""))


def tasks_from_table(job: Job) -> Iterator[TaskDef]:
    """One task per row of the job's CSV table, read as the tasks are consumed (never the whole table).

    Every output path is checked with the row's values (a value is data: it cannot move an output
    out of its prefix); errors name the line and the column. A repeated row is found when the
    table has been read to its end (the ids seen are kept as 8-byte hashes), before the last
    task is handed out, so a caller that consumes every task never acts on a table with one.
    """
    assert job.tasks is not None
    source = str(job.tasks)
    path = job.base_dir / job.tasks
    seen = SeenIds()
    previous: TaskDef | None = None
    try:
        for line, row in iter_rows(path, taken=BUILTIN_PLACEHOLDERS):
            task_id = _row_task_id(job, row)
            values = placeholder_values(job, task_id, None, None, row)
            unsafe = _unsafe_output(job, values)
            if unsafe is not None:
                raise JobValidationError(source, [_misplaced_row(job, path.name, line, row, values, unsafe)])
            task = _task_from_values(job, task_id, values, params=tuple(row.items()))
            if previous is not None:  # handed out once the next row is known to be readable
                yield previous
            seen.add(task_id)
            previous = task
        repeated = repeated_row_problem(path, seen, lambda row: _row_task_id(job, row), taken=BUILTIN_PLACEHOLDERS)
    except TaskTableError as exc:
        raise JobValidationError(source, [("tasks", str(exc))]) from None
    if repeated:
        raise JobValidationError(source, [("tasks", repeated)])
    if previous is None:  # as an [inputs] listing that matches nothing: the user's mistake, named
        raise JobValidationError(source, [("tasks", f"{path.name} has a header and no rows: a job needs at "
                                                    "least one task (one row per task)")])
    yield previous


def _misplaced_row(job: Job, table: str, line: int, row: Mapping[str, str], values: Mapping[str, str],
                   unsafe: tuple[int, str, str]) -> tuple[str, str]:
    """The problem of a row whose values move an output, naming the column(s) to blame: those whose
    value, replaced by a plain one, puts the output back in place (all the path's columns if none does)."""
    index, path, problem = unsafe
    template = job.outputs[index].path
    used = [m.group(1) for m in PLACEHOLDER_RE.finditer(template) if m.group(1) in row]
    blamed = [name for name in used if _unsafe_output(job, {**values, name: "x"}) is None] or used
    columns = ", ".join(f"{name} = {row[name]!r}" for name in dict.fromkeys(blamed))
    return (f"outputs.{index}.path", f"{table} line {line}, column {columns}: {template!r} becomes {path!r}, "
            f"which {problem}")


def output_prefix(job: Job, output: OutputSpec, task: TaskDef) -> str:
    """The blob prefix of ``output`` for ``task``; UnsafePathError if the task's values would move it
    (fan-out refuses such tasks; this guards whatever builds a task some other way)."""
    prefix = substitute(output.path, task.values(job), field_name="outputs.path")
    problem = blob_name_problem(prefix)
    if problem:
        raise UnsafePathError(f"task {task.task_id}: output path {output.path!r} becomes {prefix!r}, which {problem}")
    return prefix


# The job's parts and the duration parser are part of this module's interface (`from batchyard.core.job import ...`).
__all__ = ["Constraints", "FinalStep", "Inputs", "Job", "OutputSpec", "ResourceFileSpec", "TaskDef", "job_from_dict",
           "load_job", "output_prefix", "parse_duration", "tasks_from_blob_names", "tasks_from_table"]
