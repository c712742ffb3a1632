"""The small error hierarchy every batchyard module raises from.

Messages are written for the person at the terminal: they name the file, field or
setting at fault and what is allowed. None of them ever carries a secret: callers
pass any text that came from outside (SDK errors, server bodies) through
:func:`batchyard.core.redact.redact` first.
"""

from __future__ import annotations


class BatchyardError(Exception):
    """Base class of every error batchyard raises on purpose."""


class ConfigError(BatchyardError):
    """``batchyard.toml`` or the environment is wrong (names the setting)."""


class JobValidationError(BatchyardError):
    """A job file or ``Job(...)`` call is invalid.

    ``problems`` holds one ``(location, message)`` pair per problem, where location is
    a dotted field path such as ``outputs.0.pattern``.
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s)"]
        lines += [f"  {loc}: {msg}" if loc else f"  {msg}" for loc, msg in problems]
        super().__init__("\n".join(lines))


class StorageError(BatchyardError):
    """Azure Storage (or Azurite) failed in a way retries did not fix."""


class SourceMissingError(StorageError):
    """The blob to stage does not exist (a permanent failure for the task)."""


class AuthenticationError(BatchyardError):
    """Credentials were refused (storage key, Batch key, token). No secret is shown."""


class EmulatorError(BatchyardError):
    """Azurite or the Batch API emulator could not be installed, started or reached."""


class BackendError(BatchyardError):
    """A backend could not do what was asked (submit, wait, cancel...)."""


class BackendNotFoundError(BackendError):
    """No backend has that name."""


class MissingDependencyError(BackendError):
    """An optional dependency a backend needs is not installed (message holds the pip hint)."""


class JobNotFoundError(BackendError):
    """No job with that id is known to the backend."""


class TaskNotFoundError(BackendError):
    """No task with that id in that job."""


class UnsafePathError(BatchyardError):
    """A path or blob name would escape the task working directory."""
