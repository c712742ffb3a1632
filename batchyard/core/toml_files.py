"""Reading a TOML file someone wrote (a job file, ``batchyard.toml``) into a clear error or a dict.

TOML is UTF-8 by definition. A byte-order mark, which some editors write, is skipped; UTF-16
(the default of some Windows tools) and binary files are named as such instead of surfacing
as a decoding traceback, and so is nesting too deep for the parser (``[[[[...]]]]``).
"""

from __future__ import annotations

import codecs
import tomllib
from pathlib import Path
from typing import Any


class TomlFileError(ValueError):
    """The file cannot be read as TOML; the message says why, without the file's name (callers add it)."""


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed file. FileNotFoundError passes through (callers word it); every other problem is a
    :class:`TomlFileError`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TomlFileError(f"cannot read the file: {exc.strerror or exc}") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise TomlFileError("the file is UTF-16 text; TOML files are UTF-8: save it as UTF-8")
    if b"\x00" in data:  # never in TOML text; every other character of UTF-16 (without a mark) is one
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise TomlFileError(f"NUL bytes (first on line {line}): TOML files are UTF-8 text, and this looks like "
                            "UTF-16 or a binary file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TomlFileError(f"not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}): TOML files are UTF-8 "
                            "text; is this a binary file?") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlFileError(f"not valid TOML: {exc}") from None
    except RecursionError:
        raise TomlFileError("not readable: arrays or tables are nested too deeply") from None
