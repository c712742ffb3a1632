"""Task and node files: listing a directory tree and serving one file, Batch style.

A task runs as the emulator's user and can swap anything in its directory for a symlink at
any moment, so nothing here checks a path and then opens it. Every component from ``/`` down
is opened with ``O_NOFOLLOW`` relative to its parent's descriptor (node roots are below the
emulator's resolved data dir, so a legitimate path holds no symlink); the final descriptor is
checked with ``fstat`` (regular file or directory only: a FIFO or device is "not found") and
by where the kernel says it lives (``/proc/self/fd``), which must be inside the root. Listing
walks descriptors too (``os.fwalk``), and deleting unlinks relative to the opened parent.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import posixpath
import shutil
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from batchyard.emulator.batch.common import BatchApiError, iso, rfc1123
from batchyard.emulator.batch.protocol import Request, Response

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO a task left behind must not hang the request thread.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
# Python's own extension table only (no /etc/mime.types): the same answer on every machine.
_MIME_TYPES = mimetypes.MimeTypes()
_DEFAULT_TYPE = "application/octet-stream"


def content_type(name: str) -> str:
    """The type Azure gives a node file: by its extension (``stdout.txt`` is ``text/plain``)."""
    return _MIME_TYPES.guess_type(name, strict=False)[0] or _DEFAULT_TYPE


class _Unavailable(Exception):
    """The path does not exist as a plain file or directory without symlinks."""


def _stamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _not_found(rel: str) -> BatchApiError:
    return BatchApiError(404, "FileNotFound", "The specified file does not exist.", [("FilePath", rel)])


def _parts(rel: str) -> list[str]:
    """``rel`` as path components after normalising, refusing anything that climbs out of the root."""
    if "\x00" in rel:
        raise BatchApiError(400, "InvalidInput", "The file path must not contain NUL.")
    cleaned = posixpath.normpath(rel.replace("\\", "/").strip("/") or ".")
    if cleaned == ".." or cleaned.startswith("../"):
        raise BatchApiError(400, "InvalidInput", "The file path must stay inside the task directory.")
    return [] if cleaned == "." else cleaned.split("/")


def _open_dir_chain(components: list[str]) -> int:
    """A descriptor for the directory at ``/components``, no symlink followed anywhere."""
    fd = os.open("/", _DIR_FLAGS)
    try:
        for name in components:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError:
        os.close(fd)
        raise _Unavailable from None
    return fd


def _inside(fd: int, root: str) -> bool:
    """Whether the kernel places ``fd`` at or below ``root`` (the check after open)."""
    try:
        where = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: the O_NOFOLLOW walk already held
        return True
    return where == root or where.startswith(root.rstrip("/") + "/")


@contextlib.contextmanager
def _opened(root: Path, rel: str) -> Iterator[tuple[int, os.stat_result]]:
    """``root/rel`` opened without following symlinks, with its ``fstat``; ``_Unavailable`` if not there."""
    absolute = os.path.abspath(root)
    parts = _parts(rel)
    base = [p for p in absolute.split("/") if p]
    if not parts:
        fd = _open_dir_chain(base)
    else:
        parent = _open_dir_chain(base + parts[:-1])
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=parent)
        except OSError:
            raise _Unavailable from None
        finally:
            os.close(parent)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) or not _inside(fd, absolute):
            raise _Unavailable
        yield fd, st
    finally:
        os.close(fd)


def _properties(name: str, st: os.stat_result) -> dict[str, Any]:
    return {
        "creationTime": iso(_stamp(st.st_ctime)), "lastModified": iso(_stamp(st.st_mtime)),
        "contentLength": str(st.st_size), "contentType": content_type(name), "fileMode": f"{st.st_mode:o}",
    }


def _entry(name: str, st: os.stat_result, files_url: str) -> dict[str, Any]:
    # Azure lists a directory by name, url and isDirectory only: no properties.
    entry: dict[str, Any] = {"name": name, "url": f"{files_url}/{quote(name)}", "isDirectory": stat.S_ISDIR(st.st_mode)}
    if not entry["isDirectory"]:
        entry["properties"] = _properties(name, st)
    return entry


def list_files(root: Path, files_url: str, recursive: bool) -> list[dict[str, Any]]:
    """Entries under ``root`` with '/'-separated names relative to it (Linux nodes use '/')."""
    found: list[tuple[str, os.stat_result]] = []
    try:
        with _opened(root, "") as (root_fd, _), \
                contextlib.closing(os.fwalk(".", dir_fd=root_fd, follow_symlinks=False)) as walk:
            for dirpath, dirnames, filenames, dir_fd in walk:
                prefix = "" if dirpath == "." else dirpath[2:] + "/"
                for name in dirnames + filenames:
                    if name.endswith(".part"):
                        continue  # a half-downloaded staging file
                    with contextlib.suppress(OSError):  # vanished while listing
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):  # never a symlink
                            found.append((prefix + name, st))
                if not recursive:
                    break
    except _Unavailable:
        return []
    found.sort(key=lambda item: item[0].split("/"))
    return [_entry(name, st, files_url) for name, st in found]


def _byte_range(wanted: str, size: int) -> tuple[int, int]:
    try:
        unit, _, span = wanted.partition("=")
        first, _, last = span.partition("-")
        if unit.strip() != "bytes":
            raise ValueError
        start = int(first) if first else max(0, size - int(last))
        end = min(size - 1, int(last)) if first and last else size - 1
    except ValueError:
        raise BatchApiError(400, "InvalidHeaderValue", "ocp-range must look like 'bytes=0-99'.",
                            [("HeaderName", "ocp-range")]) from None
    return start, end


def file_response(req: Request, root: Path | None, rel: str, files_url: str) -> Response:
    """GET (content, with ``ocp-range``) or HEAD (properties) of one file under ``files_url``."""
    if root is None:
        raise _not_found(rel)
    try:
        with _opened(root, rel) as (fd, st):
            is_dir = stat.S_ISDIR(st.st_mode)
            # Azure sends the file's URL percent-encoded as a whole (its path already encoded once).
            url = quote(f"{files_url}/{quote(rel)}", safe="")
            headers = {
                "ocp-creation-time": rfc1123(_stamp(st.st_ctime)), "Last-Modified": rfc1123(_stamp(st.st_mtime)),
                "ocp-batch-file-isdirectory": "true" if is_dir else "false", "ocp-batch-file-url": url,
                "ocp-batch-file-mode": f"{st.st_mode:o}",
                "Content-Type": _DEFAULT_TYPE if is_dir else content_type(rel),
            }
            if is_dir:
                if req.method == "HEAD":
                    return Response(200, None, headers, content_length=0)
                raise BatchApiError(400, "InvalidInput", "The specified path is a directory; list it instead.")
            size = st.st_size
            wanted = req.headers.get("ocp-range")
            start, end = _byte_range(wanted, size) if wanted else (0, size - 1)
            if req.method == "HEAD":
                return Response(200, None, headers, content_length=size)
            data = os.pread(fd, max(0, end - start + 1), start) if end >= start else b""
            return Response(200, data, headers)
    except _Unavailable:
        raise _not_found(rel) from None


def delete_file(root: Path | None, rel: str, recursive: bool) -> None:
    """Delete one file or directory, relative to its opened parent (a swapped-in symlink is removed, not followed)."""
    parts = _parts(rel)
    if root is None or not parts:
        raise _not_found(rel)
    base = [p for p in os.path.abspath(root).split("/") if p]
    try:
        parent = _open_dir_chain(base + parts[:-1])
    except _Unavailable:
        raise _not_found(rel) from None
    name = parts[-1]
    try:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            raise _not_found(rel) from None
        if stat.S_ISDIR(st.st_mode):
            if not recursive and not _is_empty_dir(parent, name):
                raise BatchApiError(409, "DirectoryNotEmpty", "The directory is not empty; pass recursive=true.")
            shutil.rmtree(name, dir_fd=parent)  # fd-based on Linux: symlinks inside are unlinked, not followed
        else:
            os.unlink(name, dir_fd=parent)
    finally:
        os.close(parent)


def _is_empty_dir(parent: int, name: str) -> bool:
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        return not os.listdir(fd)
    finally:
        os.close(fd)
