"""What an inline job ships to its nodes: the function's payload and the user's modules it needs.

The function is pickled once with dill (modules by name, never by value), behind a header with
the Python and dill versions; the plain source files of the user's own modules it reaches
(outside the stdlib and site-packages) travel in one reproducible zip. See docs/inline.md.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import site
import sys
import sysconfig
import types
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchyard.core.errors import BatchyardError
from batchyard.core.version import __version__
from batchyard.node.inline import MODULES_ZIP, build_payload, python_version

NEVER_SHIP = frozenset({"batchyard", "dill", "multiprocess", "__main__", "__mp_main__", "builtins"})
MAX_SHIPPED_FILES = 500
MAX_SHIPPED_BYTES = 20 * 1024 * 1024


class InlineError(BatchyardError):
    """The function cannot be shipped (not serializable, or its local modules are too big)."""


# ---------------------------------------------------------------------------------------------- specs
def _installed_roots() -> list[Path]:
    """Folders whose modules the node is expected to have installed (stdlib, site-packages)."""
    paths: set[str] = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        value = sysconfig.get_paths().get(key)
        if value:
            paths.add(value)
    for attr in ("prefix", "base_prefix", "exec_prefix", "base_exec_prefix"):
        value = getattr(sys, attr, None)
        if value:
            paths.add(value)
    with contextlib.suppress(AttributeError):  # old virtualenv's site module
        paths.update(site.getsitepackages())
    user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if user_site:
        paths.add(user_site)
    return [Path(os.path.realpath(p)) for p in paths if p and p != os.sep]


def is_local_module(module: types.ModuleType, roots: Sequence[Path] | None = None) -> bool:
    """A module the node cannot be expected to have: plain source outside stdlib and site-packages."""
    name = getattr(module, "__name__", "")
    if not isinstance(name, str) or name.split(".")[0] in NEVER_SHIP:
        return False
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py"):
        return False  # built-in, frozen, compiled extension or namespace package: not shippable as source
    real = Path(os.path.realpath(file))
    return not any(real.is_relative_to(root) for root in (roots if roots is not None else _installed_roots()))


def _locatable(obj: Any) -> bool:
    """Whether pickle finds ``obj`` by module + qualified name (so dill saves it by reference)."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    found: Any = module
    for part in str(getattr(obj, "__qualname__", "")).split("."):
        found = getattr(found, part, None)
        if found is None:
            return False
    return found is obj


def _dill_pickler() -> type[Any]:
    import dill

    class RecordingPickler(dill.Pickler):  # type: ignore[misc,name-defined]
        """dill's pickler, noting every module the pickle will import on loading."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.module_names: set[str] = set()

        def save(self, obj: Any, save_persistent_id: bool = True) -> None:
            if isinstance(obj, types.ModuleType) and obj.__name__ != "__main__":
                # Always by name: dill would copy a module outside site-packages (an editable
                # install, a local module) by value with all its globals (consoles, locks, clients).
                # Local modules travel as files in batchyard_modules.zip; the node imports them.
                self.module_names.add(obj.__name__)
                self.save_reduce(importlib.import_module, (obj.__name__,), obj=obj)
                return
            if isinstance(obj, types.ModuleType):
                self.module_names.add(obj.__name__)
            elif isinstance(obj, type | types.FunctionType | types.BuiltinFunctionType) and _locatable(obj):
                self.module_names.add(obj.__module__)
            super().save(obj, save_persistent_id)

    return RecordingPickler


def _module_references(module: types.ModuleType) -> set[str]:
    """Modules a module's own globals come from (what importing it on the node will import)."""
    names: set[str] = set()
    for value in list(vars(module).values()):
        if isinstance(value, types.ModuleType):
            names.add(value.__name__)
        elif isinstance(value, type | types.FunctionType):
            mod = getattr(value, "__module__", None)
            if isinstance(mod, str):
                names.add(mod)
    return names


def _module_files(name: str) -> list[tuple[Path, str]]:
    """(source file, path inside batchyard_modules.zip) pairs that make ``name`` importable."""
    module = sys.modules[name]
    top_name = name.split(".")[0]
    top = sys.modules.get(top_name)
    top_file = getattr(top, "__file__", None)
    if top is not None and hasattr(top, "__path__") and isinstance(top_file, str):
        package_dir = Path(top_file).parent
        root = package_dir.parent
        files = [p for p in sorted(package_dir.rglob("*.py"))
                 if p.is_file() and not any(part == "__pycache__" or part.startswith(".")
                                            for part in p.relative_to(package_dir).parts)]
        return [(p, p.relative_to(root).as_posix()) for p in files]
    file = Path(str(module.__file__))
    parts = name.split(".")
    depth = len(parts) if file.name == "__init__.py" else len(parts) - 1
    root = file.parents[depth]
    return [(file, file.relative_to(root).as_posix())]


def local_modules_for(initial: Iterable[str]) -> dict[str, list[tuple[Path, str]]]:
    """The local modules among ``initial`` and, transitively, those their globals come from."""
    roots = _installed_roots()
    shipped: dict[str, list[tuple[Path, str]]] = {}
    pending = list(initial)
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        module = sys.modules.get(name)
        if module is None or not is_local_module(module, roots):
            continue
        shipped[name] = _module_files(name)
        pending.extend(_module_references(module))
    return shipped


def write_modules_zip(path: Path, modules: Mapping[str, str]) -> None:
    """The shipped module sources as one zip for ``sys.path`` (zipimport); same content, same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel, source in sorted(modules.items()):
            info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, Path(source).read_bytes())


@dataclass(frozen=True)
class Serialized:
    payload: bytes
    modules: dict[str, str]  # path inside batchyard_modules.zip -> source file
    function_name: str


def _function_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module != "__main__" else str(name)


def serialize_function(fn: Callable[..., Any], kind: str) -> Serialized:
    """The payload (header + ``dill.dumps(fn, recurse=True)``) and the local module files it needs."""
    import dill

    buffer = io.BytesIO()
    pickler = _dill_pickler()(buffer, recurse=True)
    try:
        pickler.dump(fn)
    except Exception as exc:
        raise InlineError(
            f"cannot serialize {_function_name(fn)} with dill: {type(exc).__name__}: {exc}. Everything the "
            "function refers to is shipped by value; generators, sockets and clients cannot be. "
            "Create them inside the function instead.") from None
    modules = local_modules_for(pickler.module_names)
    files: dict[str, str] = {}
    for source_list in modules.values():
        for source, rel in source_list:
            files.setdefault(rel, str(source))
    size = sum(Path(s).stat().st_size for s in files.values())
    if len(files) > MAX_SHIPPED_FILES or size > MAX_SHIPPED_BYTES:
        raise InlineError(
            f"the function needs local modules {sorted(modules)} ({len(files)} files, {size} bytes): too much "
            f"to ship with every job (limits {MAX_SHIPPED_FILES} files, {MAX_SHIPPED_BYTES} bytes). Install "
            "that package on the nodes instead (e.g. [azure.pool] requirements).")
    header = {
        "format": 1, "kind": kind, "python": python_version(), "python_full": sys.version.split()[0],
        "dill": str(dill.__version__), "batchyard": __version__, "function": _function_name(fn),
        "modules": sorted(modules), "modules_path": MODULES_ZIP if files else None,
    }
    return Serialized(build_payload(header, buffer.getvalue()), files, header["function"])
