"""Placeholders in a job's command and output paths: ``{name}`` replaced by a value.

Kept apart from the job model so the model's checks and the fan-out share one reading of a
template: how it splits into arguments, what it substitutes (verbatim in an argument, shell-quoted
in a shell script: :mod:`batchyard.core.shell_scripts`), which environment variable carries each
value, and which part of an output path no value can change.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Iterable, Mapping

from batchyard.core.shell_scripts import ScriptPlan, plan_script, script_positions

BUILTIN_PLACEHOLDERS = ("input", "input_name", "input_stem", "input_blob", "job_id", "task_id")
# Each built-in placeholder's value is also in the task's environment under its name in capitals
# (dsub's way: a script reads "$INPUT"); a CSV column's under the column's own name.
PLACEHOLDER_VARIABLES = tuple(name.upper() for name in BUILTIN_PLACEHOLDERS)
PLACEHOLDER_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
# The longest command (template) accepted, checked before it is split: CreateProcess's 32,767
# characters is the tightest whole-command-line limit of any Batch node OS (Linux takes up to
# 128 KiB per argument), and splitting a longer one costs seconds (shlex is quadratic in a token).
MAX_COMMAND_CHARS = 32_767


def substitute(template: str, values: Mapping[str, str], *, field_name: str) -> str:
    """Replace ``{name}`` placeholders with values verbatim; ``{{``/``}}`` are literal braces.

    Only plain names are allowed (no attribute access or format specs), so a template can
    never reach into Python objects.
    """
    out: list[str] = []
    for literal, name in _pieces(template):
        if literal:  # a lone value is then returned as is, not copied ("".join of one string)
            out.append(literal)
        if name is None:
            continue
        if name == _UNBALANCED:
            raise ValueError(f"{field_name}: unbalanced brace in {template!r} (write {{{{ or }}}} for a literal one)")
        try:
            out.append(values[name])
        except KeyError:
            allowed = ", ".join("{" + k + "}" for k in sorted(values))
            raise ValueError(f"{field_name}: unknown placeholder {{{name}}} (allowed: {allowed})") from None
    return "".join(out)


_UNBALANCED = "{"  # never a placeholder's name: names hold no brace


@functools.lru_cache(maxsize=1024)
def _pieces(template: str) -> tuple[tuple[str, str | None], ...]:
    """The template as (literal text, placeholder name or None) pairs, parsed once per template
    (a fan-out substitutes the same few templates for every task)."""
    pieces: list[tuple[str, str | None]] = []
    literal: list[str] = []
    position = 0
    for match in PLACEHOLDER_RE.finditer(template):
        literal.append(template[position:match.start()])
        position = match.end()
        piece = match.group(0)
        if piece in ("{{", "}}"):
            literal.append(piece[0])
            continue
        pieces.append(("".join(literal), _UNBALANCED if match.group(1) is None else match.group(1)))
        literal = []
    literal.append(template[position:])
    pieces.append(("".join(literal), None))
    return tuple(pieces)


@functools.lru_cache(maxsize=32)
def split_command(command: str) -> tuple[str, ...]:
    """The command template split like a POSIX shell would; done once per command, not per task."""
    return tuple(shlex.split(command))


def variable_name(placeholder: str) -> str:
    """The environment variable that carries ``placeholder``'s value in a task."""
    return placeholder.upper() if placeholder in BUILTIN_PLACEHOLDERS else placeholder


def reserved_variable_problem(names: Iterable[str]) -> str | None:
    """Why one of ``names`` (a job's environment, a table's columns) cannot be a task variable
    because batchyard sets it to a placeholder's value; None when none is."""
    taken = next((name for name in names if name in PLACEHOLDER_VARIABLES), None)
    return None if taken is None else f"{taken!r} is reserved: batchyard sets it to the value of {{{taken.lower()}}}"


def substitute_command(command: str, values: Mapping[str, str]) -> tuple[str, ...]:
    """A task's argv: the command split, each placeholder replaced verbatim, or shell-quoted inside a
    shell script (``sh -c '...'``); ValueError naming the command when one cannot be placed."""
    argv = split_command(command)
    scripts = script_positions(argv)
    return tuple(_substitute_script(piece, values) if position in scripts
                 else substitute(piece, values, field_name="command") for position, piece in enumerate(argv))


def _substitute_script(template: str, values: Mapping[str, str]) -> str:
    plan = _script_plan(template)
    missing = next((name for _, name, _ in plan.pieces if name is not None and name not in values), None)
    if missing is not None:
        substitute(template, values, field_name="command")  # raises, naming the unknown placeholder
    return plan.render(values, variable_name)


@functools.lru_cache(maxsize=64)
def _script_plan(template: str) -> ScriptPlan:
    """A script template read once per template (a fan-out renders the same one for every task)."""
    pieces = _pieces(template)
    if any(name == _UNBALANCED for _, name in pieces):  # raises, naming the brace
        substitute(template, {name: "" for _, name in pieces if name}, field_name="command")
    return plan_script(pieces, field_name="command", variable=variable_name)


def static_prefix(template: str, job_id: str) -> str:
    """The part of an output path every task shares: up to its first placeholder other than {job_id}."""
    fixed: list[str] = []
    position = 0
    for match in PLACEHOLDER_RE.finditer(template):
        fixed.append(template[position:match.start()])
        position = match.end()
        piece = match.group(0)
        if piece in ("{{", "}}"):
            fixed.append(piece[0])
        elif match.group(1) == "job_id":
            fixed.append(job_id)
        else:
            return "".join(fixed)
    return "".join(fixed) + template[position:]
