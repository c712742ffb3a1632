"""Backends by name, imported lazily (fsspec's registry pattern).

``get_backend("local", config)`` imports only what that backend needs; an unknown name
is answered with the known ones and a "did you mean", and a missing optional dependency
with the pip command that installs it.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchyard.core.errors import BackendNotFoundError, MissingDependencyError

if TYPE_CHECKING:
    from batchyard.backends.base import Backend
    from batchyard.core.config import Config


@dataclass(frozen=True)
class _Entry:
    module: str
    cls: str
    extra_hint: str


_REGISTRY: dict[str, _Entry] = {
    "local": _Entry("batchyard.backends.local.backend", "LocalBackend", "pip install batchyard"),
    "azure": _Entry("batchyard.backends.azure.backend", "AzureBackend", "pip install 'azure-batch>=15.1,<16'"),
}


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def register_backend(name: str, module: str, cls: str, *, install_hint: str = "", clobber: bool = False) -> None:
    """Make a third-party backend available under ``name`` (imported on first use)."""
    if name in _REGISTRY and not clobber:
        raise ValueError(f"a backend named {name!r} is already registered")
    _REGISTRY[name] = _Entry(module, cls, install_hint or f"pip install {module.split('.')[0]}")


def unregister_backend(name: str) -> None:
    """Forget the backend registered as ``name`` (a test's fake, once the test is done); no error if unknown."""
    _REGISTRY.pop(name, None)


def get_backend_class(name: str) -> type[Backend]:
    entry = _REGISTRY.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise BackendNotFoundError(
            f"unknown backend {name!r}; known backends: {', '.join(available_backends())}.{hint}"
        )
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as exc:
        missing = exc.name or "a dependency"
        raise MissingDependencyError(
            f"backend {name!r} needs {missing!r}, which is not installed: {entry.extra_hint}"
        ) from None
    return getattr(module, entry.cls)


def get_backend(name: str | None, config: Config) -> Backend:
    """An instance of the backend ``name`` (default: the one the config chose)."""
    chosen = name or config.backend
    return get_backend_class(chosen)(config.with_backend(chosen))
