"""``batchyard emulator start|stop|status|env``: Azurite and the Batch API emulator for the user.

Both run detached, recorded under ``$BATCHYARD_HOME`` (default ``~/.local/share/batchyard``),
so later commands, other shells and tests reuse them. ``env`` prints the ``export`` lines
that point the SDKs (and batchyard's azure backend) at them.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading

import click
from rich.console import Console
from rich.text import Text

from batchyard.core.config import ENV_BATCH_ACCOUNT, ENV_BATCH_KEY, ENV_BATCH_URL, ENV_STORAGE, default_home
from batchyard.core.errors import BatchyardError
from batchyard.core.redact import redact

console = Console(stderr=True, soft_wrap=True, markup=False)  # never reads text as markup (cli/common.py)


def _fail(exc: BatchyardError) -> None:
    console.print(Text.assemble(("error:", "red"), " ", redact(str(exc))), highlight=False, soft_wrap=True)
    sys.exit(3)


@click.group()
def emulator() -> None:
    """Local Azurite (storage) and the Azure Batch API emulator."""


@emulator.command()
@click.option("--batch", is_flag=True, help="Also start the Azure Batch API emulator.")
@click.option("--docker", is_flag=True, help="Run Azurite from its Docker image (needs a Docker engine).")
@click.option("--foreground", is_flag=True,
              help="With --batch: serve the Batch emulator in this process until Ctrl-C "
                   "(storage from AZURE_STORAGE_CONNECTION_STRING if set).")
@click.option("--port", type=int, default=0, help="Batch emulator port (default: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="With --foreground: address the Batch emulator listens on (0.0.0.0 inside a container).")
@click.option("-v", "--verbose", count=True)
def start(batch: bool, docker: bool, foreground: bool, port: int, host: str, verbose: int) -> None:
    """Start Azurite (reused if already running) and, with --batch, the Batch emulator.

    With --foreground, BATCHYARD_BATCH_ACCOUNT and BATCHYARD_BATCH_KEY (base64), when set, become the
    emulator's account name and key, so clients configured with the same variables can reach it.
    """
    import logging
    import os

    from batchyard.cli.common import _setup_logging

    _setup_logging(verbose)
    home = default_home()
    try:
        conn = os.environ.get(ENV_STORAGE)
        if not conn or not foreground:
            from batchyard.emulator.azurite import Azurite

            instance = Azurite(home=home, docker=docker).start()
            conn = instance.connection_string()
            console.print(f"azurite: blob {instance.blob_port}, queue {instance.queue_port}, "
                          f"table {instance.table_port} on {instance.host}")
        if not batch:
            return
        if foreground:
            from batchyard.emulator.batch import BatchEmulator

            emu = BatchEmulator(storage_connection_string=conn, data_dir=home / "batch-emulator", port=port,
                                host=host, account_name=os.environ.get(ENV_BATCH_ACCOUNT) or "batchyard",
                                account_key=os.environ.get(ENV_BATCH_KEY) or None)
            console.print(f"batch emulator: {emu.url} (account {emu.account_name}); Ctrl-C to stop")
            done = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: done.set())
            emu.start()
            try:
                done.wait()
            except KeyboardInterrupt:
                pass
            finally:
                emu.stop()
            logging.getLogger(__name__).info("batch emulator stopped")
            return
        from batchyard.emulator.batch import start_detached

        record = start_detached(home=home, storage_connection_string=conn, port=port)
        console.print(f"batch emulator: {record.url} (account {record.account_name})")
    except BatchyardError as exc:
        _fail(exc)


@emulator.command()
def stop() -> None:
    """Stop the Batch emulator and Azurite started by `emulator start`."""
    from batchyard.emulator.azurite import Azurite
    from batchyard.emulator.batch import stop_detached

    home = default_home()
    try:
        stopped_batch = stop_detached(home=home)
        stopped_azurite = Azurite(home=home).stop()
    except BatchyardError as exc:
        _fail(exc)
        return
    console.print(f"batch emulator: {'stopped' if stopped_batch else 'not running'}; "
                  f"azurite: {'stopped' if stopped_azurite else 'not running'}")


@emulator.command()
def status() -> None:
    """Say what is running (exit 1 if Azurite is not)."""
    from batchyard.emulator.azurite import Azurite
    from batchyard.emulator.batch import detached_status

    home = default_home()
    instance = Azurite(home=home).status()
    record = detached_status(home=home)
    if instance is None:
        click.echo("azurite: not running")
    else:
        click.echo(f"azurite: running (pid {instance.pid}), blob {instance.blob_port}, queue {instance.queue_port}, "
                   f"table {instance.table_port}")
    click.echo(f"batch emulator: running at {record.url} (pid {record.pid})" if record
               else "batch emulator: not running")
    if instance is None:
        sys.exit(1)


@emulator.command()
def env() -> None:
    """Print `export` lines for the running emulators (eval "$(batchyard emulator env)")."""
    from batchyard.emulator.azurite import Azurite
    from batchyard.emulator.batch import detached_status

    home = default_home()
    instance = Azurite(home=home).status()
    if instance is None:
        console.print(Text.assemble(("error:", "red"), " Azurite is not running: `batchyard emulator start` first"))
        sys.exit(1)
    lines = [f"export {ENV_STORAGE}={shlex.quote(instance.connection_string())}"]
    record = detached_status(home=home)
    if record is not None:
        lines += [
            f"export {ENV_BATCH_URL}={shlex.quote(record.url)}",
            f"export {ENV_BATCH_ACCOUNT}={shlex.quote(record.account_name)}",
            f"export {ENV_BATCH_KEY}={shlex.quote(record.account_key)}",
        ]
    # These lines are the one place a secret is printed on purpose: to stdout, for eval.
    click.echo("\n".join(lines))
