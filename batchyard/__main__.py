"""``python -m batchyard`` is the ``batchyard`` command."""

from .cli import main

main()
