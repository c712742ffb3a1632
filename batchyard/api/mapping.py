"""Inline Python jobs: run a Python function once per input blob, on any backend.

>>> from batchyard import map_lines
>>> run = map_lines(lambda line: line.upper(), inputs="input-data/*.txt",
...                 outputs="output-data/{job_id}/", job_id="upper")
>>> run.succeeded, run.outputs()

:func:`map_files` and :func:`map_lines` build an ordinary :class:`~batchyard.core.job.Job`: the
function is serialized once with dill into ``batchyard_fn.pkl`` (a small JSON header with
the Python and dill versions, then the pickle), shipped as a resource file together with a
launcher (``batchyard_inline.py``) and the source of the user's local modules the function
needs (``batchyard_modules.zip``, put on ``sys.path``), and every task runs
``python3 batchyard_inline.py {files|lines} batchyard_fn.pkl {input} batchyard_out``
(:mod:`batchyard.node.inline`). Whatever the function writes to ``batchyard_out/`` is uploaded.
So ``batchyard status``, ``logs``, retries and timeouts work as for a command job.
See docs/inline.md.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from batchyard.api.shipping import (  # noqa: F401  (re-exported: the submitter-side API of inline jobs)
    InlineError,
    Serialized,
    _function_name,
    is_local_module,
    local_modules_for,
    serialize_function,
    write_modules_zip,
)
from batchyard.backends import get_backend, get_backend_class
from batchyard.backends.base import Backend, SubmitResult, TaskCounts
from batchyard.core.config import Config, load_config
from batchyard.core.job import FinalStep, Inputs, Job, OutputSpec, ResourceFileSpec, job_from_dict
from batchyard.core.rerun import RerunOption
from batchyard.core.version import __version__
from batchyard.node.inline import (
    AZURE_ADVICE,
    LAUNCHER_NAME,
    MODULES_ZIP,
    OUT_DIR,
    PAYLOAD_NAME,
    launcher_source,
)

__all__ = ["InlineError", "MapRun", "map_files", "map_lines"]

GLOB_CHARS = "*?["
# Never shipped as source: the node must have these installed (shipping would shadow them).
POLL_INTERVAL = 0.5


def parse_inputs(spec: str | Inputs) -> Inputs:
    """``"container/prefix/*.txt"`` -> Inputs(container, prefix="prefix/", glob="*.txt").

    The container is the first segment. Of the rest, the part up to the last '/' before the
    first glob character is the prefix and the remainder the glob; with no glob character the
    rest is the prefix and the glob is ``*``.
    """
    if isinstance(spec, Inputs):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"inputs must be 'container/prefix-or-glob' or a batchyard.core.job.Inputs, "
                        f"not {type(spec).__name__}")
    container, _, rest = spec.partition("/")
    first = min((i for i in (rest.find(c) for c in GLOB_CHARS) if i >= 0), default=-1)
    if first < 0:
        prefix, glob = rest, "*"
    else:
        cut = rest.rfind("/", 0, first) + 1
        prefix, glob = rest[:cut], rest[cut:]
    return _validated(Inputs, {"container": container, "prefix": prefix, "glob": glob}, "inputs", spec)


def parse_outputs(spec: str | OutputSpec) -> OutputSpec:
    """``"container/path-template"`` -> where the function's output files go.

    The files the function writes (``out_dir`` for map_files, the transformed file for
    map_lines) keep their path relative to the output dir, under the path template
    (default ``{job_id}/``). An :class:`OutputSpec`'s ``pattern`` is read relative to the
    output dir (``**/*`` for everything).
    """
    if isinstance(spec, OutputSpec):
        pattern = spec.pattern if spec.pattern.startswith(f"{OUT_DIR}/") else f"{OUT_DIR}/{spec.pattern}"
        return spec.model_copy(update={"pattern": pattern})
    if not isinstance(spec, str):
        raise TypeError(f"outputs must be 'container/path-template' or a batchyard.core.job.OutputSpec, "
                        f"not {type(spec).__name__}")
    container, _, path = spec.partition("/")
    # The function may legitimately write nothing (map_files); map_lines always writes its file.
    data = {"container": container, "pattern": f"{OUT_DIR}/**/*", "optional": True}
    if path:
        data["path"] = path
    return _validated(OutputSpec, data, "outputs", spec)


def _validated(model: type[Any], data: dict[str, Any], field: str, given: str) -> Any:
    from pydantic import ValidationError

    from batchyard.core.errors import JobValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [(f"{field}", f"{given!r}: {str(e['msg']).removeprefix('Value error, ')}") for e in exc.errors()]
        raise JobValidationError(field, problems) from None


# ---------------------------------------------------------------------------------------------- shipping
def _check_signature(fn: Callable[..., Any], kind: str) -> None:
    if not callable(fn):
        raise TypeError(f"map_{kind}: fn must be callable, not {type(fn).__name__}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    args: tuple[Any, ...] = (Path("src"), Path("out")) if kind == "files" else ("line",)
    try:
        signature.bind(*args)
    except TypeError as exc:
        shape = "fn(src: Path, out_dir: Path)" if kind == "files" else "fn(line: str) -> str"
        raise TypeError(f"map_{kind}: {_function_name(fn)} must be callable as {shape}: {exc}") from None


# ---------------------------------------------------------------------------------------------- the run
class MapRun:
    """A submitted inline job. Task failures are results, never exceptions."""

    def __init__(self, job: Job, config: Config, submitted: SubmitResult, *, workers: int | None = None) -> None:
        self.job = job
        self.job_id = job.id
        self.config = config
        self.backend_name = config.backend
        self.submitted = submitted
        self.workers = workers

    def __repr__(self) -> str:
        return f"MapRun(job_id={self.job_id!r}, backend={self.backend_name!r})"

    def _backend(self) -> Backend:
        return get_backend(self.backend_name, self.config)

    def results(self) -> list[dict[str, Any]]:
        """Every task's result, as ``batchyard status --json`` prints them."""
        with self._backend() as be:
            return [r.to_dict() for r in be.list_task_results(self.job_id)]

    def counts(self) -> TaskCounts:
        with self._backend() as be:
            return be.task_counts(self.job_id)

    def wait(self, timeout: float | None = None) -> TaskCounts:
        """Run the job to the end (local: with worker processes of this process) or until ``timeout``."""
        with self._backend() as be:
            return be.run_to_end(self.job, workers=self.workers, timeout=timeout, poll_interval=POLL_INTERVAL)

    @property
    def succeeded(self) -> bool:
        """Every task finished and succeeded (none failed or was cancelled)."""
        counts = self.counts()
        return counts.total > 0 and counts.succeeded == counts.total

    def final_step(self) -> dict[str, Any] | None:
        """The final step (``final=``) as ``batchyard status --json`` shows it; None without one."""
        with self._backend() as be:
            view = be.final_step(self.job_id)
        return view.to_dict() if view is not None else None

    def output_locations(self) -> list[tuple[str, str]]:
        """(container, blob prefix) pairs where the outputs land."""
        locations = {(out.container, out.path.replace("{job_id}", self.job_id).split("{", 1)[0])
                     for out in self.job.outputs}
        return sorted(locations)

    def outputs(self) -> list[str]:
        """Names of the output blobs (everything under the output prefixes)."""
        names: list[str] = []
        with self._backend() as be:  # its storage: the local backend's may be the Azurite it started
            for container, prefix in self.output_locations():
                names.extend(be.storage.list_blob_names(container, prefix))
        return sorted(names)


# ---------------------------------------------------------------------------------------------- building
ResourceLike = str | os.PathLike[str] | ResourceFileSpec | Mapping[str, str]


def _resource_spec(item: ResourceLike) -> dict[str, str]:
    if isinstance(item, ResourceFileSpec):
        source, target = item.source, item.target
    elif isinstance(item, Mapping):
        source = str(item["source"])
        target = item.get("file_path") or Path(source).name
    else:
        source = os.fspath(item)
        target = Path(source).name
    return {"source": str(Path(source).expanduser().resolve()), "file_path": str(target)}


def _default_job_id(kind: str, fn: Callable[..., Any], serialized: Serialized, inputs: Inputs,
                    outputs: Sequence[OutputSpec]) -> str:
    """Same function (and shipped module sources), inputs and outputs: same id, so a re-run resumes."""
    digest = hashlib.sha256(serialized.payload)
    for rel, source in sorted(serialized.modules.items()):
        digest.update(rel.encode() + b"\0" + Path(source).read_bytes())
    digest.update(inputs.model_dump_json().encode())
    for out in outputs:
        digest.update(out.model_dump_json().encode())
    name = re.sub(r"[^A-Za-z0-9]+", "-", str(getattr(fn, "__name__", "fn"))).strip("-").lower() or "fn"
    return f"{kind}-{name[:40]}-{digest.hexdigest()[:10]}"


def build_job(kind: str, fn: Callable[..., Any], inputs: str | Inputs,
              outputs: str | OutputSpec | Sequence[str | OutputSpec], *, job_id: str | None, folder: Path,
              max_wall_clock_time: str | float | None = None, max_task_retry_count: int | None = None,
              environment: Mapping[str, str] | None = None, resource_files: Iterable[ResourceLike] = (),
              python: str = "python3", advice: str = AZURE_ADVICE,
              final: FinalStep | Mapping[str, Any] | None = None) -> Job:
    """The ordinary job that runs ``fn``; its payload, launcher and modules are written into ``folder``.

    ``advice``: what a task's error says to do when ``python`` cannot import batchyard. Relative
    paths (``inputs.local_dir``, resource files) are the caller's: resolved against the working dir.
    """
    _check_signature(fn, kind)
    ins = parse_inputs(inputs)
    if ins.local_dir is not None:  # the job's base_dir is `folder`, a temporary one: never the caller's
        ins = ins.model_copy(update={"local_dir": str(Path(ins.local_dir).expanduser().resolve())})
    out_list = [outputs] if isinstance(outputs, str | OutputSpec) else list(outputs)
    outs = [parse_outputs(o) for o in out_list]
    serialized = serialize_function(fn, kind)
    (folder / PAYLOAD_NAME).write_bytes(serialized.payload)
    (folder / LAUNCHER_NAME).write_text(launcher_source(advice).replace("{version}", __version__),
                                        encoding="utf-8")
    files = [{"source": PAYLOAD_NAME}, {"source": LAUNCHER_NAME}]
    if serialized.modules:
        write_modules_zip(folder / MODULES_ZIP, serialized.modules)
        files.append({"source": MODULES_ZIP})
    files += [_resource_spec(item) for item in resource_files]
    constraints: dict[str, Any] = {}
    if max_wall_clock_time is not None:
        constraints["max_wall_clock_time"] = max_wall_clock_time
    if max_task_retry_count is not None:
        constraints["max_task_retry_count"] = max_task_retry_count
    command = shlex.join([python, LAUNCHER_NAME, kind, PAYLOAD_NAME]) + f" {{input}} {OUT_DIR}"
    data = {
        "id": job_id or _default_job_id(kind, fn, serialized, ins, outs),
        "command": command,
        "inputs": ins.model_dump(exclude_none=True),
        "outputs": [o.model_dump() for o in outs],
        "resource_files": files,
        "constraints": constraints,
        "environment": dict(environment or {}),
    }
    if final is not None:  # a command after all the tasks, given their outputs (docs/job-file.md, [final])
        data["final"] = final.model_dump() if isinstance(final, FinalStep) else dict(final)
    return job_from_dict(data, source=f"map_{kind}({serialized.function_name})", base_dir=folder)


def _runs_here(config: Config) -> bool:
    """Whether tasks run on this machine: the local backend's workers, or the Batch emulator's nodes."""
    return get_backend_class(config.backend).runs_tasks_here(config)


@functools.cache
def _imports_this_batchyard(executable: str) -> bool:
    """Whether ``executable`` imports this very batchyard and dill, as a task would (-P: not from the
    working dir, which a task's launcher drops from sys.path too)."""
    import dill

    probe = "import batchyard, dill; print(batchyard.__version__, dill.__version__)"
    try:
        done = subprocess.run([executable, "-P", "-c", probe], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.split() == [__version__, str(dill.__version__)]


def task_python(config: Config, python: str | None) -> str:
    """The interpreter command inline tasks run: ``python`` if given; on the local backend and the
    emulator (tasks run on this machine) the submitting interpreter, when it can import batchyard;
    else ``python3`` from the node's PATH (a Batch node's, which the pool check prepares)."""
    if python is not None:
        return python
    if _runs_here(config) and sys.executable and _imports_this_batchyard(sys.executable):
        return sys.executable
    return "python3"


def missing_batchyard_advice(config: Config, python: str) -> str:
    """What a task's error says when ``python`` cannot import batchyard, for the backend in use."""
    if not _runs_here(config):
        return AZURE_ADVICE
    where = "the local backend's workers" if config.backend == "local" else "the Batch emulator's nodes"
    return (f"Tasks run on this machine ({where}) with {python!r}: install batchyard there "
            f"({shlex.quote(python)} -m pip install batchyard=={{version}}), or pass map_files/map_lines "
            "python= an interpreter that has it (by default, the one that submitted the job when it can "
            "import batchyard).")


def node_install_step(wheel_name: str, dill_version: str) -> str:
    """The start-task step that installs the submitter's batchyard wheel (staged into the start task's
    working dir) and dill: pip from the image, or apt's where it lacks; dependencies from the node's
    package index. The wheel is installed again without its dependencies, so an image holding another
    batchyard of the same version number runs the submitter's. pip's settings as environment variables,
    which a pip too old to know them ignores."""
    pip = "PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore python3 -m pip"
    wheel = shlex.quote(f"./{wheel_name}")
    return ("(python3 -m pip --version >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq "
            f"python3-pip)) && {pip} install --quiet {wheel} {shlex.quote(f'dill=={dill_version}')} && "
            f"{pip} install --quiet --force-reinstall --no-deps {wheel}")


def _with_node_install(config: Config, *, folder: Path, python: str = "python3") -> Config:
    """On Azure, a pool batchyard creates installs the submitter's batchyard (a wheel built here and
    written into ``folder``, staged into the start task) and dill at start-up (an existing pool, or
    ``install_batchyard = false``, is left alone). Not when tasks run another interpreter than the
    node's python3 (the emulator's default: the submitting one)."""
    from dataclasses import replace

    import dill

    from batchyard.api.node_wheel import build_node_wheel
    from batchyard.core.config import PoolSection

    pool = config.azure.pool
    if config.backend != "azure" or (pool is None and config.azure.pool_id) or (pool and not pool.install_batchyard):
        return config
    if python != "python3":
        return config
    wheel = build_node_wheel(folder)
    pool = pool or PoolSection()
    step = node_install_step(wheel.filename, str(dill.__version__))
    start = f"{pool.start_task} && {step}" if pool.start_task else step
    pool = pool.model_copy(update={"start_task": start})
    return replace(config, azure=config.azure.model_copy(update={"pool": pool}),
                   pool_start_files=(*config.pool_start_files, wheel.path))


def _map(kind: str, fn: Callable[..., Any], inputs: str | Inputs,
         outputs: str | OutputSpec | Sequence[str | OutputSpec], *, job_id: str | None, backend: str | None,
         wait: bool, config: Config | None, workers: int | None, timeout: float | None,
         rerun: RerunOption = None, **job_options: Any) -> MapRun:
    config = (config or load_config()).with_backend(backend)
    python = task_python(config, job_options.pop("python", None))
    folder = Path(tempfile.mkdtemp(prefix="batchyard-inline-"))
    try:
        wheel_folder = folder / "wheel"
        wheel_folder.mkdir()
        config = _with_node_install(config, python=python, folder=wheel_folder)
        job = build_job(kind, fn, inputs, outputs, job_id=job_id, folder=folder, python=python,
                        advice=missing_batchyard_advice(config, python), **job_options)
        be = get_backend(None, config)
        with be:
            be.preflight()
            submitted = be.submit(job, rerun=rerun)
            run = MapRun(job, config, submitted, workers=workers)
            if wait:
                be.run_to_end(job, workers=workers, timeout=timeout, poll_interval=POLL_INTERVAL)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return run


def map_files(fn: Callable[[Path, Path], Any], inputs: str | Inputs,
              outputs: str | OutputSpec | Sequence[str | OutputSpec], *,
              job_id: str | None = None, backend: str | None = None, wait: bool = True,
              config: Config | None = None, workers: int | None = None,
              max_wall_clock_time: str | float | None = None, max_task_retry_count: int | None = None,
              environment: Mapping[str, str] | None = None, resource_files: Iterable[ResourceLike] = (),
              python: str | None = None, timeout: float | None = None, rerun: RerunOption = None,
              final: FinalStep | Mapping[str, Any] | None = None) -> MapRun:
    """Run ``fn(src, out_dir)`` once per input blob, as a task on ``backend``.

    ``src`` is the staged input (a :class:`~pathlib.Path`), ``out_dir`` an empty folder: every
    file written there (subfolders too) is uploaded to ``outputs`` keeping its relative path.

    ``inputs`` is ``"container/prefix-or-glob"`` (or an :class:`~batchyard.core.job.Inputs`),
    ``outputs`` ``"container/path-template"`` (or an :class:`~batchyard.core.job.OutputSpec`).
    ``backend``/``config`` default to what the CLI would use (``batchyard.toml``, environment).
    ``wait=True`` runs it to the end like ``batchyard run`` (local: worker processes of this
    process; ``workers`` of them); ``wait=False`` only submits (see :meth:`MapRun.wait`).
    ``max_wall_clock_time``/``max_task_retry_count`` are the job's ``[constraints]``;
    ``python`` is the interpreter command tasks run (default: this interpreter on the local
    backend and the emulator when it can import batchyard, else ``python3``: :func:`task_python`).
    Relative paths (an ``Inputs``' ``local_dir``, ``resource_files``) are relative to the working dir.
    Run again with the same ``job_id``, a task that succeeded with the same fingerprint (same input,
    function, options) is kept; ``rerun="all"`` or ``rerun=[task ids]`` runs those again anyway.
    ``final`` (a :class:`~batchyard.core.final_step.FinalStep` or its fields) is one command run after
    every task, given their outputs, as a job file's ``[final]``; :meth:`MapRun.final_step` shows it.
    """
    return _map("files", fn, inputs, outputs, job_id=job_id, backend=backend, wait=wait, config=config,
                workers=workers, timeout=timeout, rerun=rerun, max_wall_clock_time=max_wall_clock_time,
                max_task_retry_count=max_task_retry_count, environment=environment,
                resource_files=resource_files, python=python, final=final)


def map_lines(fn: Callable[[str], str | None], inputs: str | Inputs,
              outputs: str | OutputSpec | Sequence[str | OutputSpec], *,
              job_id: str | None = None, backend: str | None = None, wait: bool = True,
              config: Config | None = None, workers: int | None = None,
              max_wall_clock_time: str | float | None = None, max_task_retry_count: int | None = None,
              environment: Mapping[str, str] | None = None, resource_files: Iterable[ResourceLike] = (),
              python: str | None = None, timeout: float | None = None, rerun: RerunOption = None,
              final: FinalStep | Mapping[str, Any] | None = None) -> MapRun:
    """Run ``fn(line) -> str`` on every line of every input blob; one output file per input.

    Lines are given without their ending and the output keeps the input's endings (``\\n``
    or ``\\r\\n``; a last line without one stays without). ``None`` drops the line. Each output
    has the input's name (its path relative to the input prefix). Text is UTF-8; undecodable
    bytes pass through unchanged. Other arguments as :func:`map_files`.
    """
    return _map("lines", fn, inputs, outputs, job_id=job_id, backend=backend, wait=wait, config=config,
                workers=workers, timeout=timeout, rerun=rerun, max_wall_clock_time=max_wall_clock_time,
                max_task_retry_count=max_task_retry_count, environment=environment,
                resource_files=resource_files, python=python, final=final)
