"""The ``batchyard`` command."""

from batchyard.cli.main import main

__all__ = ["main"]
