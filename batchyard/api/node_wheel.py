"""The submitter's batchyard as a wheel, so a Batch node installs it with no package index for batchyard.

batchyard is not published on a package index, so a node cannot ``pip install batchyard``. Instead
the package this process imports (an installed copy, or the source tree of an editable install) is
zipped into a pure-Python wheel here, byte for byte the same for the same files, so its content
hash names it: the azure backend uploads it once per content (``wheels/<hash>/<wheel name>`` in the
system container) and the pool's start task pip-installs it from a read-only SAS URL. Its own
dependencies come from the node's package index. See docs/inline.md.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from batchyard.core.errors import BatchyardError
from batchyard.core.version import __version__

DIST_NAME = "batchyard"
WHEEL_TAG = "py3-none-any"
# Fixed time stamps and modes: the same files give the same bytes, hence the same content hash.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
SKIPPED_DIRS = frozenset({"__pycache__"})
SKIPPED_SUFFIXES = (".pyc", ".pyo")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the batchyard package this module belongs to


class WheelError(BatchyardError):
    """The running batchyard cannot be packed for the nodes (no metadata, unreadable files)."""


@dataclass(frozen=True)
class NodeWheel:
    """A wheel of this batchyard, written to ``path``; ``digest`` is the sha256 of its bytes."""

    path: Path
    digest: str

    @property
    def filename(self) -> str:
        return self.path.name


def wheel_filename(version: str = __version__) -> str:
    return f"{DIST_NAME}-{version}-{WHEEL_TAG}.whl"


def _package_files(package_dir: Path) -> list[tuple[Path, str]]:
    """(file, path in the wheel) for every file of the package but caches and compiled bytecode."""
    files = []
    for path in sorted(package_dir.rglob("*")):
        rel = path.relative_to(package_dir.parent)
        if not path.is_file() or SKIPPED_DIRS.intersection(rel.parts) or path.name.endswith(SKIPPED_SUFFIXES):
            continue
        files.append((path, rel.as_posix()))
    return files


def _metadata_from_pyproject(package_dir: Path) -> tuple[str, str | None]:
    """METADATA (and entry points) from the source tree's pyproject.toml, for a batchyard run from
    its source tree without being installed."""
    pyproject = package_dir.parent / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise WheelError(f"batchyard at {package_dir} has no installed metadata and no readable "
                         f"{pyproject} ({type(exc).__name__}: {exc}); install batchyard (pip install -e .) "
                         "to ship it to the nodes") from None
    lines = ["Metadata-Version: 2.1", f"Name: {DIST_NAME}", f"Version: {__version__}"]
    if project.get("requires-python"):
        lines.append(f"Requires-Python: {project['requires-python']}")
    lines += [f"Requires-Dist: {dep}" for dep in project.get("dependencies", [])]
    scripts = project.get("scripts") or {}
    entry_points = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items()) if scripts else None
    return "\n".join(lines) + "\n", entry_points


def _metadata(package_dir: Path) -> tuple[str, str | None]:
    """METADATA and entry_points.txt of the batchyard this process runs."""
    try:
        dist = importlib.metadata.distribution(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        return _metadata_from_pyproject(package_dir)
    metadata = dist.read_text("METADATA")
    if not metadata or dist.version != __version__:  # metadata of another copy than the one imported
        return _metadata_from_pyproject(package_dir)
    return metadata, dist.read_text("entry_points.txt")


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_node_wheel(folder: Path, *, package_dir: Path | None = None) -> NodeWheel:
    """Write the wheel of the imported batchyard into ``folder``; the same files give the same bytes."""
    package_dir = package_dir or PACKAGE_DIR
    metadata, entry_points = _metadata(package_dir)
    dist_info = f"{DIST_NAME}-{__version__}.dist-info"
    members: list[tuple[str, bytes]] = []
    try:
        members += [(rel, path.read_bytes()) for path, rel in _package_files(package_dir)]
    except OSError as exc:
        raise WheelError(f"cannot read batchyard's file {exc.filename}: {exc.strerror}") from None
    members.append((f"{dist_info}/METADATA", metadata.encode("utf-8")))
    members.append((f"{dist_info}/WHEEL", (f"Wheel-Version: 1.0\nGenerator: batchyard {__version__}\n"
                                           f"Root-Is-Purelib: true\nTag: {WHEEL_TAG}\n").encode()))
    if entry_points:
        members.append((f"{dist_info}/entry_points.txt", entry_points.encode("utf-8")))
    record = "".join(_record_line(name, data) + "\n" for name, data in members) + f"{dist_info}/RECORD,,\n"
    members.append((f"{dist_info}/RECORD", record.encode()))
    path = folder / wheel_filename()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return NodeWheel(path=path, digest=hashlib.sha256(path.read_bytes()).hexdigest())


__all__ = ["NodeWheel", "WheelError", "build_node_wheel", "wheel_filename"]
