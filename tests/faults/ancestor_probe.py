"""A task that looks for credentials where a hostile command would: up its process chain.

python3 ancestor_probe.py NEEDLES OUT

NEEDLES is a JSON object {label: secret} (the test's 0600 file; skipped when an ancestor names it).
From this process's parent up (the PPid chain in /proc/PID/status) to pid 1, or to the first
process whose environ or cmdline cannot be read for another reason than permission (a process the
kernel keeps from us, not dumpable under another user or as a non-root task, is walked with nothing
readable, which is the protection at work), it reads each process's environ and cmdline and
every regular file they name (absolute, or relative to that process's cwd; ``--opt=PATH`` and
``A:B`` lists are split), and looks for each secret in them, raw and URL-encoded. It writes OUT
(JSON): the chain walked, each process's findings (label and where, never the content), and why the
walk stopped. Only labels leave this process: it prints nothing it reads.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from urllib.parse import quote

MAX_FILE_BYTES = 16 * 1024 * 1024


def parent_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def named_paths(values: list[str], cwd: Path | None) -> set[Path]:
    """Every existing regular file a value names: itself, after '=', or in a ':'-separated list."""
    candidates: set[str] = set()
    for value in values:
        for piece in {value, value.partition("=")[2], *value.split(os.pathsep)}:
            if piece:
                candidates.add(piece)
    found = set()
    for piece in candidates:
        path = Path(piece)
        if not path.is_absolute():
            if cwd is None:
                continue
            path = cwd / path
        try:
            if path.is_file():
                found.add(path.resolve())
        except (OSError, ValueError):  # a NUL, a name too long, a dir we may not enter
            continue
    return found


def search(data: bytes, needles: dict[str, list[bytes]]) -> list[str]:
    return [label for label, forms in needles.items() if any(form in data for form in forms)]


def main() -> int:
    needles_file, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    secrets: dict[str, str] = json.loads(needles_file.read_text())
    needles = {label: sorted({value.encode(), quote(value, safe="").encode()}) for label, value in secrets.items()}
    chain: list[dict[str, object]] = []
    stopped = "reached pid 1"
    pid = parent_of(os.getpid())
    while pid:
        proc = Path(f"/proc/{pid}")
        try:
            environ = (proc / "environ").read_bytes()
            cmdline = (proc / "cmdline").read_bytes()
        except PermissionError:
            # Not dumpable, and we are not root: the kernel keeps this process's environ from the task,
            # which is the protection at work. Walked, nothing readable; go on up.
            chain.append({"pid": pid, "name": "?", "files_read": 0, "findings": [], "unreadable": True})
            if pid == 1:
                break
            pid = parent_of(pid)
            continue
        except OSError as exc:
            stopped = f"pid {pid} unreadable: {type(exc).__name__}"
            break
        try:
            cwd: Path | None = Path(os.readlink(proc / "cwd"))
        except OSError:
            cwd = None
        findings = [f"{label} in environ" for label in search(environ, needles)]
        findings += [f"{label} in cmdline" for label in search(cmdline, needles)]
        values = [v.decode(errors="surrogateescape") for v in environ.split(b"\0") + cmdline.split(b"\0") if v]
        files = sorted(p for p in named_paths(values, cwd) if p != needles_file)
        for path in files:
            try:
                with path.open("rb") as fh:
                    data = fh.read(MAX_FILE_BYTES)
            except OSError:
                continue
            findings += [f"{label} in file {path}" for label in search(data, needles)]
        name = (proc / "comm").read_text().strip() if (proc / "comm").exists() else "?"
        chain.append({"pid": pid, "name": name, "files_read": len(files), "findings": findings})
        if pid == 1:
            break
        pid = parent_of(pid)
    out.write_text(json.dumps({"chain": chain, "stopped": stopped}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
