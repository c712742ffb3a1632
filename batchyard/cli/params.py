"""Command-line parameter types shared by the commands (click only: cheap to import anywhere)."""

from __future__ import annotations

from typing import Any

import click


class BatchIdType(click.ParamType):
    """A job or task id on the command line, held to Batch's id rule before anything is asked of a
    backend: a value such as ``x/y`` or ``..`` would otherwise reach storage as part of a key or a
    path and come back as the service's error, or a traceback, instead of a usage error naming it."""

    name = "id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from batchyard.core.job import ID_RE

        if isinstance(value, str) and ID_RE.fullmatch(value):
            return value
        self.fail(f"{value!r} is not an id (1-64 characters: letters, digits, '-' and '_')", param, ctx)


BATCH_ID = BatchIdType()
