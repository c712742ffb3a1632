"""``python -m batchyard.emulator.batch``: run the Batch API emulator in the foreground.

The storage connection string is read from the environment variable named by
``--storage-connection-string-env`` (never from argv, which ``ps`` shows). The account key
is read from ``--key-file`` (0600), or generated and written there.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from types import FrameType

from batchyard.core.errors import BatchyardError
from batchyard.core.redact import install_log_filter
from batchyard.emulator.batch.faults import FaultConfig
from batchyard.emulator.batch.server import BatchEmulator


def read_or_create_key(path: Path) -> str:
    """The account key from a private file, created (0600) with a fresh random key if absent."""
    if path.exists():
        mode = path.stat().st_mode & 0o077
        if mode:
            raise BatchyardError(f"{path}: key file is readable by others (chmod 600 it)")
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = base64.b64encode(secrets.token_bytes(64)).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batchyard.emulator.batch", description=__doc__)
    parser.add_argument("--storage-connection-string-env", required=True, metavar="VAR",
                        help="name of the environment variable holding the storage connection string")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--account-name", default="batchyard")
    parser.add_argument("--key-file", type=Path, help="0600 file holding the account key (created if absent)")
    parser.add_argument("--ready-file", type=Path, help="write {url, account_name, pid} here once listening")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_filter()
    conn = os.environ.get(args.storage_connection_string_env, "")
    if not conn:
        print(f"error: environment variable {args.storage_connection_string_env} is empty or unset", file=sys.stderr)
        return 2
    try:
        key = read_or_create_key(args.key_file) if args.key_file else None
        emulator = BatchEmulator(storage_connection_string=conn, data_dir=args.data_dir,
                                 account_name=args.account_name, account_key=key, host=args.host, port=args.port,
                                 faults=FaultConfig.from_env())
    except (BatchyardError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    if args.ready_file:
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"url": emulator.url, "account_name": emulator.account_name, "pid": os.getpid()}))
        os.replace(tmp, args.ready_file)
    with contextlib.suppress(KeyboardInterrupt):  # SIGTERM / Ctrl-C: serve_forever cleans up
        emulator.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
