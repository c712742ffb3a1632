"""Plumbing every ``batchyard`` subcommand module shares: consoles, logging, options, errors.

Kept apart from :mod:`batchyard.cli.main` so the command modules (plan, report, pool, emulator)
import it without importing the command group that imports them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from batchyard.backends import get_backend
from batchyard.backends.base import Backend
from batchyard.core.config import Config, load_config
from batchyard.core.errors import BatchyardError, ConfigError, JobValidationError
from batchyard.core.redact import install_log_filter, redact, redacting_filter

if TYPE_CHECKING:
    from rich.table import Table

# markup=False: text is never read as Rich markup, so a file name or an error holding "[/red]" prints as
# written instead of failing with a MarkupError. Styles are given as Text spans (:func:`styled`).
# Piped (CI logs, files) a console is not cut at Rich's 80 columns: 160 unless COLUMNS says otherwise.
def _piped_width(stream: Any) -> int | None:
    return None if stream.isatty() or os.environ.get("COLUMNS", "").isdigit() else 160


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader went away (`| head`): ended as SIGPIPE ends a process, not with a finding's exit code 1."""
        self.quiet = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(EXIT_PIPE_CLOSED)


console = _Console(stderr=True, soft_wrap=True, markup=False, width=_piped_width(sys.stderr))
out = _Console(width=_piped_width(sys.stdout), markup=False)


def for_any_task_spelling(be: Backend, job_id: str, task_id: str, call: Callable[[str], Any]) -> Any:
    """``call(task_id)``; when no task has that id as written, ``call`` with the id of the task that has it in
    another case (Azure Batch compares task ids without case). Only a miss reads the job's tasks."""
    from batchyard.core.errors import TaskNotFoundError
    from batchyard.core.final_step import FINAL_TASK_ID

    try:
        return call(task_id)
    except TaskNotFoundError:
        key = task_id.lower()
        found = FINAL_TASK_ID if key == FINAL_TASK_ID else next(
            (r.task_id for r in be.list_task_results(job_id, brief=True) if r.task_id.lower() == key), None)
        if found is None or found == task_id:
            raise
    return call(found)


def print_table(table: Table) -> None:
    """``table`` on stdout; piped, at the width its cells need, so no id, name or time is cut to fit."""
    from rich.measure import Measurement

    if out.is_terminal:
        out.print(table)
        return
    needed = Measurement.get(out, out.options.update_width(100_000), table).maximum
    width = out.width
    out.width = max(width, needed)
    try:
        out.print(table)
    finally:
        out.width = width
log = logging.getLogger("batchyard")
EXIT_FAILED_TASKS, EXIT_USAGE, EXIT_ERROR = 1, 2, 3
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, what a shell reports for a process a closed pipe ended



def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.DEBUG if verbose > 1 else logging.INFO
    handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
    handler.addFilter(redacting_filter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("batchyard").setLevel(level)
    # The Azure SDKs log every request at INFO; only -vv shows them (secrets are filtered anyway).
    logging.getLogger("azure").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
    install_log_filter()


def styled(*parts: str | tuple[str, str]) -> Text:
    """One line from plain strings and ``(text, style)`` pairs; nothing in it is read as markup."""
    return Text.assemble(*parts)


def print_error(message: str) -> None:
    """``error: <message>`` on stderr, with secrets masked."""
    console.print(styled(("error:", "red"), " ", redact(message)), highlight=False, soft_wrap=True)


_BACKEND_NOTE: list[str] = []  # why this command asks another backend than the configured one, if it does


def terminate_as_interrupt() -> None:
    """SIGTERM (``kill PID``, a supervisor, ``docker stop``) ends a long command as Ctrl-C does: workers
    stop after their running tasks, a run on Azure is ended, nothing is left running unowned. Without
    it the process died at once and its worker processes served on with no parent. Both signals are
    held back while worker processes are forked (core/interrupts.py)."""
    from batchyard.core import interrupts

    interrupts.install()


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn batchyard errors into one clear message and an exit code, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
            sys.stdout.flush()  # here, where a closed pipe is told apart (below), not at the exit
            return result
        except (JobValidationError, ConfigError) as exc:
            print_error(str(exc) + "".join(f"\n({note})" for note in _BACKEND_NOTE if isinstance(exc, ConfigError)))
            sys.exit(EXIT_USAGE)
        except BatchyardError as exc:
            print_error(str(exc))
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            console.print("interrupted")
            sys.exit(130)
        except BrokenPipeError:  # the reader went away (`| head`): as a process SIGPIPE ends, not a finding's 1
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            sys.exit(EXIT_PIPE_CLOSED)

    return wrapper


verbose_option = click.option("-v", "--verbose", count=True, help="Debug logs (-vv: also Azure SDK requests).")
config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                             help="batchyard.toml to use (default: the nearest one above the working dir).")
backend_option = click.option("--backend", default=None, help="Backend to use: local or azure (default: config).")
rerun_option = click.option(
    "--rerun", "rerun", multiple=True, metavar="TASK_ID|all",
    help="Run this task again whatever its record says (repeatable), or `all` of them. Without it, a task that "
         "succeeded with the same fingerprint is kept. The [final] step is `final-step`.")


def rerun_choice(values: tuple[str, ...]) -> str | tuple[str, ...] | None:
    """``--rerun``'s values as the backends take them: None, ``"all"``, or task ids."""
    if not values:
        return None
    if "all" in values:
        if len(values) > 1:
            raise click.BadParameter("`all` runs every task again: give it alone, or give task ids",
                                     param_hint="'--rerun'")
        return "all"
    return values


def backend_context(verbose: int, config_path: str | None, backend: str | None,
                    job_id: str | None = None) -> tuple[Config, Backend]:
    """The config and the backend to use: ``--backend``, else (for a command about ``job_id``) the backend
    the job last ran on, as its job document records it, else the configured one."""
    setup_logging(verbose)
    _BACKEND_NOTE.clear()
    config = load_config(config_path, backend=backend)
    if backend is None and job_id is not None:
        recorded = recorded_backend(config, job_id)
        if recorded is not None and recorded != config.backend:
            log.info("job %s ran on the %s backend (its job document says so)", job_id, recorded)
            # Said with any configuration error that follows (the backend reads its settings lazily).
            _BACKEND_NOTE[:] = [f"job {job_id} last ran on the {recorded} backend (its job document says so); "
                                f"--backend {config.backend} asks the {config.backend} backend instead"]
            config = config.with_backend(recorded)
    return config, get_backend(None, config)


def recorded_backend(config: Config, job_id: str) -> str | None:
    """The backend recorded in the job's document on the configured storage (or the local Azurite if it
    runs); None when there is no document or no storage to read it from (the configured backend then)."""
    from batchyard.backends.documents import JobDocuments
    from batchyard.storage.account import Storage

    conn = config.storage_connection_string
    if not conn:
        from batchyard.emulator.azurite import Azurite

        instance = Azurite(home=config.home).status()
        conn = instance.connection_string() if instance is not None else None
    if not conn:
        return None
    try:
        return JobDocuments(Storage.from_connection_string(conn), config).recorded_backend(job_id)
    except Exception:  # unreadable here: the configured backend answers, with its own clear error
        return None


def backend_flag(config_path: str | None, name: str) -> str:
    """`` --backend NAME`` for a hint, when a command without the flag would start from another backend."""
    config_log = logging.getLogger("batchyard.core.config")
    quiet, config_log.disabled = config_log.disabled, True  # its warnings were shown once already
    try:
        default = load_config(config_path).backend
    finally:
        config_log.disabled = quiet
    return "" if default == name else f" --backend {name}"



# Old private names, kept for modules written against them.
_setup_logging = setup_logging
_context = backend_context
