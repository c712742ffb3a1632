"""``python -m batchyard.emulator.batch``: run the Batch API emulator in the foreground.

The storage connection string and the account key come from the parent through an inherited
file descriptor (``BATCHYARD_SECRETS_FD``, how ``batchyard emulator start --batch`` starts it), or
else from the environment variable named by ``--storage-connection-string-env`` (never from argv,
which ``ps`` shows) and from ``--key-file`` (0600; generated and written there if absent). Either
way the process then clears them from what its tasks can read (:func:`hide_credentials`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from batchyard.core.errors import BatchyardError
from batchyard.core.redact import install_log_filter
from batchyard.core.secret_handoff import hide_credentials, receive_secrets
from batchyard.emulator.batch.detached import read_or_create_key
from batchyard.emulator.batch.faults import FaultConfig
from batchyard.emulator.batch.server import BatchEmulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batchyard.emulator.batch", description=__doc__)
    parser.add_argument("--storage-connection-string-env", metavar="VAR",
                        help="name of the environment variable holding the storage connection string "
                             "(unless handed over through BATCHYARD_SECRETS_FD)")
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
    try:
        handed = receive_secrets()
    except BatchyardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    conn_env = args.storage_connection_string_env
    # Taken out of the environment its tasks inherit (they would drop it by its shape anyway).
    conn = handed.get("storage_connection_string") or (os.environ.pop(conn_env, "") if conn_env else "")
    if not conn:
        print(f"error: environment variable {conn_env} is empty or unset" if conn_env else
              "error: no storage connection string: pass --storage-connection-string-env VAR", file=sys.stderr)
        return 2
    hide_credentials()  # the connection string's variable (and any other key) leaves /proc/<pid>/environ
    try:
        key = handed.get("account_key") or (read_or_create_key(args.key_file) if args.key_file else None)
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
