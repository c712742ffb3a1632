"""The final step's preamble on its node: list the job's outputs, stage them if asked, run the command.

Shipped as a resource file and run as ``python3 <this file> LOCATIONS -- ARGV...`` on every backend
(a Batch node has no batchyard), so it uses the standard library only and imports nothing of
batchyard. ``LOCATIONS`` is a JSON file: ``{"stage": bool, "locations": [{"container", "prefix",
"url"}]}``, each ``url`` a read+list SAS URL of the container. It writes ``outputs.jsonl`` in the
working dir, one JSON object per blob under each location: ``container``, ``name``, ``size``,
``url`` (a read URL) and ``path`` (where it was staged, or null). A name that would land outside
the working dir is listed but never staged. Then it replaces itself with ``ARGV``, so the exit
code, stdout and stderr are the command's own. A listing that fails exits 87 with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

LISTING_FILE = "outputs.jsonl"
STAGED_DIR = "outputs"
LISTING_FAILED_EXIT = 87
TIMEOUT_S = 120


def _with_query(url: str, extra: dict[str, str]) -> str:
    parts = urllib.parse.urlsplit(url)
    query = "&".join(q for q in (parts.query, urllib.parse.urlencode(extra)) if q)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def blob_url(container_url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(container_url)
    path = parts.path.rstrip("/") + "/" + urllib.parse.quote(name, safe="/")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _open(url: str | urllib.request.Request) -> object:
    """An http(s) request to the storage service (no other scheme: the URLs come from a file)."""
    full = url.full_url if isinstance(url, urllib.request.Request) else url
    if urllib.parse.urlsplit(full).scheme not in ("http", "https"):
        raise ValueError("a location URL is not http(s)")
    return urllib.request.urlopen(url, timeout=TIMEOUT_S)  # noqa: S310 (scheme checked above)


def list_blobs(container_url: str, prefix: str) -> Iterator[tuple[str, int]]:
    """(name, size) of every blob under ``prefix``, page by page (List Blobs with the SAS)."""
    marker = ""
    while True:
        query = {"restype": "container", "comp": "list", "prefix": prefix}
        if marker:
            query["marker"] = marker
        request = urllib.request.Request(  # noqa: S310 (_open checks the scheme)
            _with_query(container_url, query), headers={"x-ms-version": "2021-08-06"})
        with _open(request) as response:  # type: ignore[attr-defined]
            # The storage service's own answer to a SAS batchyard issued; no DTD or entities in it.
            root = ET.fromstring(response.read())  # noqa: S314
        for blob in root.iter("Blob"):
            size = blob.findtext("Properties/Content-Length") or "0"
            yield blob.findtext("Name") or "", int(size)
        marker = root.findtext("NextMarker") or ""
        if not marker:
            return


def staged_path(container: str, name: str) -> str | None:
    """Where a blob is staged, relative to the working dir; None when its name would leave it."""
    parts = name.split("/")  # not PurePosixPath: it drops '.' segments, which a URL would collapse
    if not name or name.startswith("/") or "\\" in name or "\x00" in name or any(p in ("..", ".") for p in parts):
        return None
    return f"{STAGED_DIR}/{container}/{name}"


def write_listing(locations: dict, workdir: Path) -> int:
    """Write outputs.jsonl (and stage the blobs when asked); the number of blobs listed."""
    stage = bool(locations.get("stage"))
    count = 0
    with open(workdir / LISTING_FILE, "w", encoding="utf-8") as listing:
        for location in locations.get("locations") or []:
            container, url = location["container"], location["url"]
            for name, size in list_blobs(url, location.get("prefix") or ""):
                path = staged_path(container, name) if stage else None
                if path is not None:
                    target = workdir / path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with _open(blob_url(url, name)) as src, open(target, "wb") as dst:  # type: ignore[attr-defined]
                        shutil.copyfileobj(src, dst)
                entry = {"container": container, "name": name, "size": size, "url": blob_url(url, name),
                         "path": path}
                listing.write(json.dumps(entry, ensure_ascii=False) + "\n")
                count += 1
    return count


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        print("usage: output_listing.py LOCATIONS -- COMMAND...", file=sys.stderr)
        return 2
    try:
        locations = json.loads(Path(args[0]).read_text(encoding="utf-8"))
        write_listing(locations, Path.cwd())
    except Exception as exc:  # the reason, never a URL (it carries a SAS)
        reason = getattr(exc, "reason", None) or type(exc).__name__
        code = getattr(exc, "code", "")
        print(f"batchyard: the job's outputs could not be listed for the final step: {reason} {code}".rstrip(),
              file=sys.stderr)
        return LISTING_FAILED_EXIT
    sys.stdout.flush()
    try:
        os.execvp(args[2], args[2:])  # noqa: S606 (the command's argv as given: no shell, as every task)
    except OSError as exc:
        print(f"batchyard: cannot start {args[2]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
