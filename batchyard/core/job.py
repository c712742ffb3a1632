"""The job model: one command, many inputs, one task per input.

A job file (TOML) or ``batchyard.Job(...)`` builds the same frozen pydantic model. Fan-out
(:func:`expand_tasks`) turns a job into :class:`TaskDef` s, one per matching input blob
(Azure Batch CLI's ``taskPerFile``) or per row of a CSV task table (a parameter sweep).

Task ids are deterministic from the job id and the input, so a re-submit finds the same
tasks, and unique even compared case-insensitively (Batch compares them that way): a
readable slug of the input plus a hash of its exact name.
"""

from __future__ import annotations

import csv
import hashlib
import re
import shlex
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from batchyard.core.errors import JobValidationError, UnsafePathError
from batchyard.core.paths import fnmatch_name, safe_relative_path

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CONTAINER_RE = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
PLACEHOLDER_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
BUILTIN_PLACEHOLDERS = ("input", "input_name", "input_stem", "input_blob", "job_id", "task_id")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TASK_ID_HASH_LEN = 12
_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*"
                          r"(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``"90s"``, ``"10m"``, ``"1h30m"``, ``"2d"`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '10m'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(value)
        if not value.strip() or not match or not any(match.groups()):
            raise ValueError(f"{value!r} is not a duration (use e.g. '90s', '10m', '1h30m', '2d')")
        d, h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = d * 86400 + h * 3600 + m * 60 + s
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def substitute(template: str, values: Mapping[str, str], *, field_name: str) -> str:
    """Replace ``{name}`` placeholders with values verbatim; ``{{``/``}}`` are literal braces.

    Only plain names are allowed (no attribute access or format specs), so a template can
    never reach into Python objects.
    """

    def repl(match: re.Match[str]) -> str:
        piece = match.group(0)
        if piece == "{{":
            return "{"
        if piece == "}}":
            return "}"
        name = match.group(1)
        if name is None:
            raise ValueError(f"{field_name}: unbalanced brace in {template!r} (write {{{{ or }}}} for a literal one)")
        if name not in values:
            allowed = ", ".join("{" + k + "}" for k in sorted(values))
            raise ValueError(f"{field_name}: unknown placeholder {{{name}}} (allowed: {allowed})")
        return values[name]

    return PLACEHOLDER_RE.sub(repl, template)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Inputs(_Model):
    """One task per blob in ``container`` whose name starts with ``prefix`` and, after the prefix,
    matches ``glob``. With ``local_dir``, those local files are uploaded there first."""

    container: str = Field(description="Container holding the inputs (3-63 chars: a-z, 0-9, single '-').")
    prefix: str = Field(default="", description="Only blobs whose name starts with this; `{input}` is the rest.")
    glob: str = Field(default="*", description="Glob matched on the name after the prefix (`*` also matches '/').")
    local_dir: str | None = Field(default=None, description="Local folder (relative to the job file) uploaded "
                                  "to container/prefix first; unchanged files (same MD5) are skipped.")

    @field_validator("container")
    @classmethod
    def _container(cls, v: str) -> str:
        if not CONTAINER_RE.match(v):
            raise ValueError(
                f"{v!r} is not a valid container name (3-63 chars: lowercase letters, digits, single hyphens)"
            )
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v.startswith("/") or "\\" in v or "\x00" in v or ".." in PurePosixPath(v).parts:
            raise ValueError(f"prefix {v!r} must be a relative blob prefix without '..' or backslashes")
        return v


class ResourceFileSpec(_Model):
    """A local file (relative to the job file) uploaded once and staged into every task's working dir."""

    source: str = Field(description="Local file, relative to the job file.")
    file_path: str | None = Field(default=None, description="Where it lands in the working dir "
                                  "(default: its file name). Relative, no '..'.")

    @model_validator(mode="after")
    def _paths(self) -> ResourceFileSpec:
        target = self.file_path or Path(self.source).name
        try:
            safe_relative_path(target, what="file_path")
        except UnsafePathError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def target(self) -> str:
        return self.file_path or Path(self.source).name


class OutputSpec(_Model):
    """Files matching ``pattern`` (relative to the working dir) go to ``container`` under ``path``."""

    pattern: str = Field(description="Glob relative to the working dir (`**` for subfolders). No '..', not absolute.")
    container: str = Field(description="Destination container.")
    path: str = Field(default="{job_id}/", description="Blob prefix (placeholders allowed); with a pattern "
                      "without wildcards and no trailing '/', the blob name itself.")
    upload_on: Literal["success", "failure", "completion"] = Field(
        default="success", description="Upload after a successful, a failed, or any attempt.")
    optional: bool = Field(default=False, description="If false, a pattern matching no file fails the task "
                           "(`output_missing`).")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            safe_relative_path(v, what="pattern")
        except UnsafePathError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("container")
    @classmethod
    def _container(cls, v: str) -> str:
        return Inputs._container(v)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if v.startswith("/") or "\\" in v or ".." in PurePosixPath(v).parts or "\x00" in v:
            raise ValueError(f"path {v!r} must be a relative blob prefix without '..' or backslashes")
        return v


Duration = Annotated[float, Field(gt=0)]


class Constraints(_Model):
    """Mirrors Batch's task constraints. Timeouts are not retried (Batch terminates the task)."""

    max_wall_clock_time: Duration | None = Field(
        default=None, description="Per attempt: '90s', '10m', '1h30m', '2d' or seconds. The command and all its "
        "descendants are killed (`timeout`, not retried).")
    max_task_retry_count: int = Field(default=0, ge=-1, le=100, description="Retries after a non-zero exit "
                                      "(-1: no limit, as in Batch).")
    retention_time: Duration | None = Field(default=None, description="How long Batch keeps the task dir "
                                            "(azure backend only).")

    @field_validator("max_wall_clock_time", "retention_time", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)


class Job(_Model):
    """A per-file batch job. ``base_dir`` resolves local paths (the job file's folder)."""

    id: str = Field(description="Job id: 1-64 chars, letters, digits, '-' and '_' (Azure Batch's rule).")
    command: str = Field(description="Split like a POSIX shell into argv; each placeholder value becomes exactly "
                         "one argument. No shell runs unless the command starts one.")
    inputs: Inputs | None = Field(default=None, description="One task per matching blob.")
    tasks: str | None = Field(default=None, description="CSV task table (relative to the job file): one task "
                              "per row; columns become placeholders and environment variables.")
    resource_files: tuple[ResourceFileSpec, ...] = Field(default=(), description="Files staged into every task.")
    outputs: tuple[OutputSpec, ...] = Field(default=(), description="What to upload after each task.")
    constraints: Constraints = Field(default=Constraints(), description="Time limit and retries.")
    environment: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for "
                                        "every task (AZ_BATCH_* are reserved).")
    container_image: str | None = Field(default=None, description="Run the command inside this image. Local "
                                        "backend and emulator: it must be on the Docker engine (never pulled); the "
                                        "node root is mounted at the same path, networking is disabled. Azure Batch "
                                        "pulls it; a private registry needs [[azure.container_registries]] "
                                        "(docs/configuration.md).")
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ID_RE.match(v):
            raise ValueError(f"{v!r} is not a valid job id (1-64 chars: letters, digits, '-' and '_')")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: str) -> str:
        try:
            argv = shlex.split(v)
        except ValueError as exc:
            raise ValueError(f"cannot be split into arguments: {exc}") from None
        if not argv:
            raise ValueError("must not be empty")
        return v

    @field_validator("environment")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not ENV_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if name.startswith("AZ_BATCH_"):
                raise ValueError(f"{name!r}: AZ_BATCH_* variables are set by the node, not the job")
            if not isinstance(value, str):
                raise ValueError(f"{name}: value must be a string")
        return v

    @model_validator(mode="after")
    def _shape(self, info: ValidationInfo) -> Job:
        if (self.inputs is None) == (self.tasks is None):
            raise ValueError("give exactly one of [inputs] (one task per blob) or tasks = 'table.csv'")
        if info.context and info.context.get("stored"):
            return self  # a stored job was checked at submit; its CSV stays on the submitter's disk
        names = set(BUILTIN_PLACEHOLDERS)
        if self.tasks is not None:
            names |= set(read_task_table(self.base_dir / self.tasks, check_only=True))
            names -= {"input", "input_name", "input_stem", "input_blob"}
        for piece in shlex.split(self.command):
            substitute(piece, dict.fromkeys(names, ""), field_name="command")
        for i, out in enumerate(self.outputs):
            substitute(out.path, dict.fromkeys(names, ""), field_name=f"outputs.{i}.path")
        return self

    @property
    def argv_template(self) -> list[str]:
        return shlex.split(self.command)

    def output_locations(self) -> list[tuple[str, str]]:
        """(container, blob prefix) pairs under which every output of this job lands: each output's
        path up to its first per-task placeholder."""
        return sorted({(out.container, out.path.replace("{job_id}", self.id).split("{", 1)[0])
                       for out in self.outputs})


# ---------------------------------------------------------------------------------------------- loading
def _format_loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after", "function-before"))


def job_from_dict(data: Mapping[str, Any], *, source: str = "job", base_dir: Path | None = None,
                  stored: bool = False) -> Job:
    """Validate a job from a mapping; ``stored`` for a job read back from storage (already checked)."""
    try:
        return Job.model_validate({**data, "base_dir": base_dir or Path.cwd()}, context={"stored": stored})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field (check the spelling; see docs/job-file.md)"
            problems.append((_format_loc(err["loc"]), msg))
        raise JobValidationError(source, problems) from None
    except (ValueError, OSError) as exc:
        raise JobValidationError(source, [("", str(exc))]) from None


def load_job(path: str | Path) -> Job:
    """Read and validate a TOML job file; errors name the file and the field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobValidationError(str(path), [("", "file not found")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise JobValidationError(str(path), [("", f"not valid TOML: {exc}")]) from None
    return job_from_dict(data, source=str(path), base_dir=path.resolve().parent)


# ---------------------------------------------------------------------------------------------- fan-out
@dataclass(frozen=True)
class TaskDef:
    """One task of a job: its id, the blob it reads (if any), its argv and extra environment."""

    task_id: str
    argv: tuple[str, ...]
    input_container: str | None = None
    input_blob: str | None = None
    input_path: str | None = None  # staged path, relative to the working dir
    params: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """What the task is about, for people: the input blob or the row's values."""
        if self.input_blob is not None:
            return self.input_blob
        return ", ".join(f"{k}={v}" for k, v in self.params)

    def values(self, job: Job) -> dict[str, str]:
        return placeholder_values(job, self.task_id, self.input_path, self.input_blob, dict(self.params))


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


def read_task_table(path: Path, *, check_only: bool = False) -> list[str] | list[dict[str, str]]:
    """The CSV task table: header row of column names, one task per following row."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise ValueError(f"tasks: file {str(path)!r} not found") from None
    if not rows or not rows[0]:
        raise ValueError(f"tasks: {path.name} is empty (it needs a header row)")
    header = [h.strip() for h in rows[0]]
    for name in header:
        if not ENV_NAME_RE.match(name):
            raise ValueError(f"tasks: column {name!r} is not a valid name (letters, digits, '_')")
        if name in BUILTIN_PLACEHOLDERS:
            raise ValueError(f"tasks: column {name!r} would shadow the built-in placeholder {{{name}}}")
    if len(set(header)) != len(header):
        raise ValueError(f"tasks: duplicate column names in {path.name}")
    if check_only:
        return header
    table: list[dict[str, str]] = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"tasks: {path.name} line {lineno} has {len(row)} values, header has {len(header)}")
        table.append(dict(zip(header, row, strict=True)))
    return table


def _task_from_values(job: Job, task_id: str, values: Mapping[str, str], **fields: Any) -> TaskDef:
    argv = tuple(substitute(piece, values, field_name="command") for piece in job.argv_template)
    return TaskDef(task_id=task_id, argv=argv, **fields)


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
        yield _task_from_values(job, task_id, values, input_container=job.inputs.container,
                                input_blob=name, input_path=staged.as_posix())


def tasks_from_table(job: Job) -> Iterator[TaskDef]:
    assert job.tasks is not None
    try:
        rows = read_task_table(job.base_dir / job.tasks)
    except ValueError as exc:
        raise JobValidationError(str(job.tasks), [("tasks", str(exc))]) from None
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        assert isinstance(row, dict)
        key = "\x1f".join(f"{k}={v}" for k, v in row.items())
        first_value = next(iter(row.values()), "")
        task_id = make_task_id(job.id, key, first_value)
        if task_id.lower() in seen:
            first = seen[task_id.lower()] + 2
            raise JobValidationError(str(job.tasks), [("tasks", f"row {index + 2} repeats row {first}")])
        seen[task_id.lower()] = index
        values = placeholder_values(job, task_id, None, None, row)
        yield _task_from_values(job, task_id, values, params=tuple(row.items()))


def output_prefix(job: Job, output: OutputSpec, task: TaskDef) -> str:
    return substitute(output.path, task.values(job), field_name="outputs.path")
