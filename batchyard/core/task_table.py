"""The CSV task table of a parameter sweep, read one row at a time.

A header row names the columns; every following non-blank row is one task. Columns become
placeholders and environment variables, so their names follow the environment's rules
(:func:`environment_name_problem`, shared with the job's ``[environment]``). Values are data:
any text is allowed except what no process can receive (a NUL character, or more than
128 KiB in one value). Rows are streamed, so a table of a million rows costs the memory of
one row here; every error names the file, the line the row starts on and the column.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import re
from array import array
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import TextIO

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Prefixes of variables the node or batchyard sets in a task's environment (the AZ_BATCH_*
# of Batch, and e.g. BATCHYARD_REQUIRED_OUTPUTS): a job or a row setting one would override them.
RESERVED_ENV_PREFIXES = ("AZ_BATCH_", "BATCHYARD_")
# One value over this cannot reach a Linux process as an argument or a variable (MAX_ARG_STRLEN,
# execve(2)); it is also the csv module's default field limit, so both refuse at the same size.
MAX_VALUE_CHARS = 128 * 1024
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class TaskTableError(ValueError):
    """The task table cannot be read as written; the message names the file, line and column."""


def environment_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a task's environment variable, or None if it can."""
    if not ENV_NAME_RE.fullmatch(name):
        return f"{name!r} is not a valid environment variable name (letters, digits, '_'; not starting with a digit)"
    for prefix in RESERVED_ENV_PREFIXES:
        if name.startswith(prefix):
            return f"{name!r} is reserved: {prefix}* variables are set by the node or by batchyard, not the job"
    return None


def _open(path: Path, name: str) -> TextIO:
    """The table as text: UTF-8 (an editor's byte-order mark is skipped); UTF-16 is named as such."""
    try:
        with path.open("rb") as raw:
            start = raw.read(4)
        if start.startswith(_UTF16_BOMS):
            raise TaskTableError(f"{name} is UTF-16 text; save it as UTF-8 (CSV UTF-8 in a spreadsheet)")
        return path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise TaskTableError(f"file {str(path)!r} not found") from None
    except OSError as exc:
        raise TaskTableError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None


def _decode_error(name: str, line: int, exc: UnicodeDecodeError) -> TaskTableError:
    return TaskTableError(f"{name} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} near line "
                          f"{line}): is it a binary or a spreadsheet file? Export the table as CSV UTF-8")


def _csv_error(name: str, line: int, exc: csv.Error) -> TaskTableError:
    if "field larger than field limit" in str(exc):
        return TaskTableError(f"{name} line {line}: a value is over {MAX_VALUE_CHARS // 1024} KiB; no task "
                              "can receive that as an argument or environment variable: put the data in a file "
                              "and pass its name")
    return TaskTableError(f"{name} line {line}: {exc}")


def read_header(path: Path, *, taken: Collection[str] = ()) -> list[str]:
    """The column names, checked; TaskTableError if the header (or the file) is unusable.

    ``taken``: placeholder names the job model gives itself, which a column must not shadow.
    """
    with _open(path, path.name) as fh:
        reader = csv.reader(fh)
        try:
            first = next(reader, None)
        except UnicodeDecodeError as exc:
            raise _decode_error(path.name, 1, exc) from None
        except csv.Error as exc:
            raise _csv_error(path.name, 1, exc) from None
    return _checked_header(path.name, first, taken)


def _checked_header(name: str, first: list[str] | None, taken: Collection[str]) -> list[str]:
    if not first:
        raise TaskTableError(f"{name} is empty (it needs a header row)")
    header = [h.strip() for h in first]
    for column in header:
        problem = environment_name_problem(column)
        if problem:
            raise TaskTableError(f"{name} column {problem}")
        if column in taken:
            raise TaskTableError(f"{name} column {column!r} would shadow the built-in placeholder "
                                 f"{{{column}}}")
    if len(set(header)) != len(header):
        raise TaskTableError(f"duplicate column names in {name}")
    return header


def iter_rows(path: Path, *, taken: Collection[str] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line the row starts on, {column: value})`` for each non-blank row, read lazily."""
    name = path.name
    with _open(path, name) as fh:
        reader = csv.reader(fh)
        line = 1
        try:
            header = _checked_header(name, next(reader, None), taken)
            while True:
                line = reader.line_num + 1
                row = next(reader, None)
                if row is None:
                    return
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise TaskTableError(f"{name} line {line} has {len(row)} values, header has "
                                         f"{len(header)}")
                for column, value in zip(header, row, strict=True):
                    if "\x00" in value:
                        raise TaskTableError(f"{name} line {line}, column {column}: the value contains a "
                                             "NUL character, which no argument or environment variable can hold")
                    if len(value) > MAX_VALUE_CHARS:
                        raise TaskTableError(f"{name} line {line}, column {column}: the value is over "
                                             f"{MAX_VALUE_CHARS // 1024} KiB; put the data in a file and pass its "
                                             "name")
                yield line, dict(zip(header, row, strict=True))
        except UnicodeDecodeError as exc:
            raise _decode_error(name, line, exc) from None
        except csv.Error as exc:
            raise _csv_error(name, line, exc) from None


class SeenIds:
    """The task ids of a table, 8 bytes each (their ``hash()`` in this process): a million rows cost
    8 MB. Kept in 64 buckets by hash, so looking for equal ones sorts a 64th of them at a time."""

    BUCKETS = 64

    def __init__(self) -> None:
        self._buckets = [array("q") for _ in range(self.BUCKETS)]

    def add(self, task_id: str) -> None:
        digest = hash(task_id)
        self._buckets[digest % self.BUCKETS].append(digest)

    def equal_hashes(self) -> set[int]:
        """Hashes seen more than once (equal ids, or rarely a hash collision of different ones)."""
        found: set[int] = set()
        for bucket in self._buckets:
            ordered = sorted(bucket)
            found.update(a for a, b in itertools.pairwise(ordered) if a == b)
        return found


def repeated_row_problem(path: Path, seen: SeenIds, task_id_of: Callable[[Mapping[str, str]], str], *,
                         taken: Collection[str] = ()) -> str | None:
    """Which two rows give the same task id, if any. Rows whose id hashes alike are confirmed and
    located by reading the table again, so a hash collision alone is never reported."""
    suspects = seen.equal_hashes()
    if not suspects:
        return None
    first: dict[str, tuple[int, Mapping[str, str]]] = {}
    for line, row in iter_rows(path, taken=taken):
        task_id = task_id_of(row)
        if hash(task_id) not in suspects:
            continue
        if task_id in first:
            earlier, earlier_row = first[task_id]
            if earlier_row == row:
                return f"{path.name} line {line} repeats line {earlier}"
            return f"{path.name} lines {earlier} and {line} give the same task id {task_id!r}; change one of them"
        first[task_id] = (line, row)
    return None
