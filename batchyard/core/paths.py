"""Paths that come from outside (job files, blob names, output patterns) and the working dir.

Every name that becomes a file under a task's working dir goes through
:func:`safe_relative_path`; output matching never follows a symlink or leaves the directory.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import stat
from pathlib import Path, PurePosixPath

from batchyard.core.errors import UnsafePathError

log = logging.getLogger(__name__)


def safe_relative_path(name: str, *, what: str) -> PurePosixPath:
    """A relative path that cannot leave the directory it is joined to, or UnsafePathError."""
    if "\x00" in name:
        raise UnsafePathError(f"{what}: NUL byte in path {name!r}")
    if "\\" in name:
        raise UnsafePathError(f"{what}: backslash in path {name!r} (use '/')")
    path = PurePosixPath(name)
    if not name or path.is_absolute() or name.startswith("/"):
        raise UnsafePathError(f"{what}: path {name!r} must be relative")
    if any(part == ".." for part in path.parts):
        raise UnsafePathError(f"{what}: path {name!r} must not contain '..'")
    if path.parts and path.parts[0] in ("", "."):
        path = PurePosixPath(*[p for p in path.parts if p != "."]) if len(path.parts) > 1 else path
    return path


MAX_BLOB_NAME = 1024  # Azure Storage: a blob name is 1 to 1,024 characters


def blob_name_problem(name: str) -> str | None:
    """Why ``name`` is not a blob name (or prefix) that lands where it says, or None if it is.

    HTTP clients and the storage service collapse ``.`` and ``..`` segments of a URL path, so
    ``job/../other/x`` would be written to ``other/x``: such segments, a leading ``/``, a
    backslash (some clients turn it into ``/``) and NUL are refused. Empty segments (``a//b``)
    are kept as they are by every URL rule, so they are allowed.
    """
    if "\x00" in name:
        return "contains a NUL character"
    if "\\" in name:
        return "contains a backslash (blob names use '/')"
    if name.startswith("/"):
        return "starts with '/' (blob names are relative to their container)"
    dots = sorted({part for part in name.split("/") if part in (".", "..")}, reverse=True)
    if dots:
        return f"has a {dots[0]!r} segment (a URL collapses it, so the blob would land somewhere else)"
    if len(name) > MAX_BLOB_NAME:
        return f"is {len(name)} characters long, over the {MAX_BLOB_NAME} of a blob name"
    return None


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700 (only their owner can list or enter them).

    ``Path.mkdir(parents=True)`` would give the parents the umask's mode (usually 0755). Directories
    that already exist keep their mode: they may be shared on purpose.
    """
    missing: list[Path] = []
    folder = path
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process: its maker's mode
            directory.mkdir(mode=0o700)
    return path


def is_inside(base: Path, candidate: Path) -> bool:
    try:
        candidate.resolve().relative_to(base.resolve())
        return True
    except ValueError:
        return False


def pattern_base(pattern: str) -> tuple[str, bool]:
    """The pattern's fixed leading directories, and whether it has a wildcard at all."""
    parts = pattern.split("/")
    fixed: list[str] = []
    for part in parts[:-1]:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    has_wildcard = any(c in pattern for c in "*?[")
    return "/".join(fixed), has_wildcard


def match_outputs(wd: Path, pattern: str) -> list[tuple[Path, str]]:
    """Regular files matching ``pattern`` with their upload-relative names; symlinks never followed.

    ``../`` (one level, as Batch allows for ``../std*.txt``) reaches the task dir.
    """
    base_dir = wd
    rest = pattern
    if rest.startswith("../"):
        base_dir, rest = wd.parent, rest[3:]
    safe_relative_path(rest, what=f"output pattern {pattern!r}")
    fixed, has_wildcard = pattern_base(rest)
    found: list[tuple[Path, str]] = []
    candidates = base_dir.glob(rest) if has_wildcard else [base_dir / rest]
    # A file directly in base_dir that is not a symlink itself is inside it; a deeper one may
    # be reached through a directory symlink the command made, so only those are resolved.
    flat = "/" not in rest
    for path in candidates:
        try:
            mode = path.lstat().st_mode
        except OSError:  # absent (a literal pattern), or gone meanwhile
            continue
        if stat.S_ISLNK(mode):
            log.warning("output %s is a symlink; not followed", path.name)
            continue
        if not stat.S_ISREG(mode) or not (flat or is_inside(base_dir, path)):
            continue
        rel = path.relative_to(base_dir).as_posix()
        if fixed and rel.startswith(fixed + "/"):
            rel = rel[len(fixed) + 1:]
        elif not has_wildcard:
            rel = path.name
        found.append((path, rel))
    found.sort(key=lambda item: item[1])
    return found


def fnmatch_name(name: str, pattern: str) -> bool:
    """Case-sensitive glob match of a blob name (after its prefix), '/' matched by '*' too."""
    return fnmatch.fnmatchcase(name, pattern)


def glob_matches(path: str, pattern: str) -> bool:
    """Whether the relative ``path`` is one that ``Path.glob(pattern)`` would find, read from the names
    alone (no file system): segment by segment, ``**`` for any number of folders, ``*`` within one."""
    def match(names: list[str], parts: list[str]) -> bool:
        if not parts:
            return not names
        if parts[0] == "**":
            return any(match(names[skip:], parts[1:]) for skip in range(len(names) + 1))
        return bool(names) and fnmatch.fnmatchcase(names[0], parts[0]) and match(names[1:], parts[1:])

    return match(path.split("/"), [part for part in pattern.split("/") if part not in ("", ".")])
