"""A click group whose commands from other modules are imported when first used.

``batchyard status`` then does not import what ``plan``, ``report``, ``debug`` or ``emulator`` need
(matplotlib, the emulator's server, the node runner...): every command starts sooner. ``--help``,
the CLI reference and anything reading ``group.commands`` still see every command.
"""

from __future__ import annotations

import importlib
from typing import Any

import click


class LazyGroup(click.Group):
    """``lazy_commands`` maps a command's name to ``"module:attribute"``, imported on first use."""

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None, **kwargs: Any) -> None:
        self._lazy = dict(lazy_commands or {})
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def commands(self) -> dict[str, click.Command]:
        """Every command, the lazy ones imported now (for callers that walk the whole tree)."""
        for name in list(self._lazy):
            self._load(name)
        return self._loaded

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:
        self._loaded = value

    def _load(self, name: str) -> None:
        target = self._lazy.pop(name, None)
        if target is not None:
            module, attribute = target.split(":")
            self._loaded[name] = getattr(importlib.import_module(module), attribute)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        name = name or cmd.name
        if name is None:
            raise TypeError("Command has no name.")
        self._lazy.pop(name, None)
        self._loaded[name] = cmd

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load(cmd_name)
        return self._loaded.get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self._loaded, *self._lazy})
