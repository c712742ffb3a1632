"""Task and node files: listing a directory tree and serving one file, Batch style."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from batchyard.emulator.batch.common import BatchApiError, iso, rfc1123
from batchyard.emulator.batch.protocol import Request, Response


def _stamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _properties(path: Path) -> dict[str, Any]:
    st = path.stat()
    props: dict[str, Any] = {
        "creationTime": iso(_stamp(st.st_ctime)), "lastModified": iso(_stamp(st.st_mtime)),
        "contentLength": str(0 if path.is_dir() else st.st_size), "fileMode": f"{st.st_mode:o}",
    }
    if not path.is_dir():
        props["contentType"] = "application/octet-stream"
    return props


def list_files(root: Path, files_url: str, recursive: bool) -> list[dict[str, Any]]:
    """Entries under ``root`` with '/'-separated names relative to it (Linux nodes use '/')."""
    if not root.is_dir():
        return []
    paths = sorted(root.rglob("*") if recursive else root.iterdir())
    out = []
    for path in paths:
        if path.is_symlink() or path.name.endswith(".part"):
            continue  # never follow links out of the node; skip half-downloaded staging files
        name = path.relative_to(root).as_posix()
        try:
            props = _properties(path)
        except OSError:
            continue  # vanished while listing
        out.append({"name": name, "url": f"{files_url}/{quote(name)}", "isDirectory": path.is_dir(),
                    "properties": props})
    return out


def resolve(root: Path, rel: str) -> Path:
    """``root/rel``, refusing anything that escapes ``root`` (``..``, absolute paths, symlinks out)."""
    rel = rel.replace("\\", "/").strip("/")
    candidate = (root / rel).resolve()
    try:
        candidate.relative_to(root.resolve())
    except ValueError:
        raise BatchApiError(400, "InvalidInput", "The file path must stay inside the task directory.") from None
    return candidate


def file_response(req: Request, root: Path | None, rel: str, url: str) -> Response:
    """GET (content, with ``ocp-range``) or HEAD (properties) of one file."""
    path = resolve(root, rel) if root is not None else None
    if path is None or not path.exists():
        raise BatchApiError(404, "FileNotFound", "The specified file does not exist.", [("FilePath", rel)])
    st = path.stat()
    headers = {
        "ocp-creation-time": rfc1123(_stamp(st.st_ctime)), "Last-Modified": rfc1123(_stamp(st.st_mtime)),
        "ocp-batch-file-isdirectory": "true" if path.is_dir() else "false", "ocp-batch-file-url": url,
        "ocp-batch-file-mode": f"{st.st_mode:o}", "Content-Type": "application/octet-stream",
    }
    if path.is_dir():
        if req.method == "HEAD":
            return Response(200, None, headers, content_length=0)
        raise BatchApiError(400, "InvalidInput", "The specified path is a directory; list it instead.")
    size = st.st_size
    start, end = 0, size - 1
    wanted = req.headers.get("ocp-range")
    if wanted:
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
    if req.method == "HEAD":
        return Response(200, None, headers, content_length=size)
    with path.open("rb") as fh:
        fh.seek(start)
        data = fh.read(max(0, end - start + 1))
    return Response(200, data, headers)


def delete_file(root: Path | None, rel: str, recursive: bool) -> None:
    path = resolve(root, rel) if root is not None else None
    if path is None or not path.exists():
        raise BatchApiError(404, "FileNotFound", "The specified file does not exist.", [("FilePath", rel)])
    if path.is_dir():
        if any(path.iterdir()) and not recursive:
            raise BatchApiError(409, "DirectoryNotEmpty", "The directory is not empty; pass recursive=true.")
        import shutil

        shutil.rmtree(path)
    else:
        os.unlink(path)
