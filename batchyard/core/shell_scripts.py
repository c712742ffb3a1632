"""Placeholders inside a shell script (``sh -c '...'``): substituted as data, never as code.

Outside a shell script a placeholder's value is one argument as is (no shell reads it). When
the command starts a shell with a script, that script is code, so a value put into it verbatim
would be read as code (``a $(touch pwned).txt``). Here such a value is substituted shell-quoted
for the quoting it stands in, as GNU parallel quotes its replacement strings, so it reaches the
command as one word and nothing in it runs.

Which argument is a shell script (:func:`script_positions`): an argument of the command whose
last path component names a POSIX-family shell (:data:`SHELLS`: ``sh``, ``/bin/sh``,
``/usr/bin/env bash``'s ``bash``, ``busybox sh``'s ``sh``...), anywhere in the command (so
``env A=1 sh -c``, ``nice sh -c``, ``docker run img sh -c`` count), followed by shell options of
which one holds ``c``; the first argument after those options is the script. The arguments after
it are the script's positional parameters (``"$1"``...): ordinary data, substituted as is.

How a placeholder is quoted depends on where it stands in the script (:func:`plan_script`):

- outside quotes: ``'value'`` (POSIX single quotes, ``'`` written as ``'\\''``);
- inside ``'...'``: the value with each ``'`` written as ``'\\''``;
- inside ``"..."``: the value with ``\\``, ``$``, `````` ` `````` and ``"`` backslash-escaped.

Quoting is only exact where the quoting of the script can be read for sure. After command
substitution (``$(``, backquotes), a here-document (``<<``), ``$'...'`` or a ``${...}`` holding
quotes, it cannot (they nest their own quoting), so in such a script every placeholder becomes a
reference to its environment variable instead (``"${INPUT}"``), which a shell expands without
reading the value as code. A placeholder right after ``$`` or a backslash, or in a script whose
quotes do not close, is refused: it cannot be placed safely. See docs/job-file.md.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

# POSIX-family shells whose -c script follows the same quoting rules (fish and csh do not).
SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh", "ksh93", "mksh", "lksh", "pdksh", "yash", "posh"})
_LONG_OPTIONS_WITH_VALUE = frozenset({"--rcfile", "--init-file"})  # bash
_OPTION_LETTERS_WITH_VALUE = frozenset("oO")  # -o pipefail, bash's -O shopt

# Where a placeholder stands in a script: outside quotes, in '...', "...", $'...', a comment, backquotes,
# a here-document (its delimiter unquoted: expanded; quoted: literal text).
PLAIN, SINGLE, DOUBLE, ANSI, COMMENT = "plain", "single", "double", "ansi", "comment"
BACKQUOTE, HEREDOC, HEREDOC_LITERAL = "backquote", "here-document", "literal here-document"
_WORD_BREAKS = frozenset(" \t\n;&|()<>")
_DOUBLE_SPECIAL = re.compile(r'([\\$`"])')


def is_shell(argument: str) -> bool:
    """Whether ``argument`` names a shell: its last path component is one of :data:`SHELLS`."""
    return PurePosixPath(argument).name in SHELLS


def _script_after(argv: Sequence[str], shell: int) -> int | None:
    """The position of the script of the shell at ``shell``, or None when it runs no ``-c`` script."""
    position, has_c = shell + 1, False
    while position < len(argv):
        arg = argv[position]
        if arg in ("-", "--"):
            position += 1
            break
        if arg.startswith("--"):
            position += 2 if arg in _LONG_OPTIONS_WITH_VALUE else 1
            continue
        if len(arg) > 1 and arg[0] in "-+":
            has_c = has_c or (arg[0] == "-" and "c" in arg[1:])
            position += 1 + sum(letter in _OPTION_LETTERS_WITH_VALUE for letter in arg[1:])
            continue
        break
    return position if has_c and position < len(argv) else None


@functools.lru_cache(maxsize=32)
def script_positions(argv: tuple[str, ...]) -> frozenset[int]:
    """Positions of ``argv`` (a command template, split) that are shell scripts run with ``-c``."""
    found: set[int] = set()
    for position, arg in enumerate(argv):
        if position not in found and is_shell(arg):
            script = _script_after(argv, position)
            if script is not None:
                found.add(script)
    return frozenset(found)


@dataclass(frozen=True)
class ScriptPlan:
    """A script template read once: its literal text and placeholders, each with where it stands.

    ``by_reference``: the script's quoting cannot be read for sure, so every placeholder becomes a
    reference to its environment variable rather than its quoted value.
    """

    pieces: tuple[tuple[str, str | None, str], ...]  # (literal, placeholder name or None, context)
    by_reference: bool

    def render(self, values: Mapping[str, str], env_name: Callable[[str], str]) -> str:
        out: list[str] = []
        for literal, name, context in self.pieces:
            out.append(literal)
            if name is not None:
                out.append(_reference(env_name(name), context) if self.by_reference or context == COMMENT
                           else _quoted(values[name], context))
        return "".join(out)


def _quoted(value: str, context: str) -> str:
    if context == SINGLE:
        return value.replace("'", "'\\''")
    if context == DOUBLE:
        return _DOUBLE_SPECIAL.sub(r"\\\1", value)
    return shlex.quote(value)


def _reference(variable: str, context: str) -> str:
    """``variable``'s value in place, as one word however the shell really quotes that place: never code."""
    if context in (SINGLE, ANSI):  # close the quote, the variable in double quotes, reopen
        return f"'\"${{{variable}}}\"" + ("$'" if context == ANSI else "'")
    if context in (PLAIN, BACKQUOTE):
        return f'"${{{variable}}}"'
    return f"${{{variable}}}"  # inside "...", a here-document or a comment: expanded as is, never split


class ShellScriptError(ValueError):
    """A placeholder cannot be placed safely in a shell script; the message says why and what to write."""


@dataclass
class _Frame:
    """One level of quoting: its context, and for a command substitution its open parentheses."""

    context: str
    substitution: bool = False
    parens: int = 0


class _Reader:
    """Reads a script's text left to right, tracking its quoting: a small part of the POSIX grammar
    (quotes, escapes, comments, ``$(...)``, backquotes, ``${...}``, here-documents)."""

    def __init__(self) -> None:
        self.frames = [_Frame(PLAIN)]
        self.word_start = True
        self.uncertain = False  # met a construct with its own nested quoting
        self.escape_pending = False  # the text so far ends with an unused backslash
        self.dollar_pending = False  # ... with a '$' that starts an expansion
        self.delimiter_pending = False  # ... inside a here-document's delimiter
        self.heredocs: list[tuple[str, bool, bool]] = []  # (delimiter, strip tabs, quoted) after this line
        self.line: list[str] | None = None  # the current line of a here-document (None: cannot be its end)

    @property
    def context(self) -> str:
        return self.frames[-1].context

    def placeholder(self) -> None:
        """A value goes here: the word goes on, and a here-document line holding it is not its end."""
        self.word_start = False
        self.line = None

    def read(self, text: str) -> None:
        position = 0
        while position < len(text):
            self.escape_pending = self.dollar_pending = False
            position = self._step(text, position)

    def _push(self, context: str, *, substitution: bool = False) -> None:
        self.frames.append(_Frame(context, substitution))
        self.line = None

    def _step(self, text: str, position: int) -> int:
        char = text[position]
        following = text[position + 1:position + 2]
        context = self.context
        if context == SINGLE or (context == ANSI and char != "\\"):
            if char == "'":
                self.frames.pop()
            return position + 1
        if context == COMMENT:
            if char == "\n":
                self.frames.pop()
                self._newline()
            return position + 1
        if context in (HEREDOC, HEREDOC_LITERAL):
            return self._heredoc_step(text, position)
        if char == "\\":
            self.escape_pending = not following
            self.word_start = False
            return position + 2
        if char == "$":
            return self._dollar(text, position)
        if char == "`":
            self.uncertain = True
            if context == BACKQUOTE:
                self.frames.pop()
            else:
                self._push(BACKQUOTE)
            self.word_start = False
            return position + 1
        if context == DOUBLE:
            if char == '"':
                self.frames.pop()
            return position + 1
        return self._code_step(text, position)

    def _code_step(self, text: str, position: int) -> int:
        """A character outside quotes (at the top, in ``$(...)`` or in backquotes)."""
        char, frame = text[position], self.frames[-1]
        if char == "'":
            self._push(SINGLE)
        elif char == '"':
            self._push(DOUBLE)
        elif char == "#" and self.word_start:
            self._push(COMMENT)
        elif char == "(" and frame.substitution:
            frame.parens += 1
        elif char == ")" and frame.substitution:
            if frame.parens == 0:
                self.frames.pop()
            frame.parens -= 1
        elif char == "<" and text.startswith("<<", position):
            if text.startswith("<<<", position):  # a here-string: an ordinary word follows
                self.word_start = True
                return position + 3
            return self._heredoc_start(text, position + 2)
        elif char == "\n":
            self._newline()
        self.word_start = char in _WORD_BREAKS
        return position + 1

    def _dollar(self, text: str, position: int) -> int:
        following = text[position + 1:position + 2]
        self.word_start = False
        if not following:
            self.dollar_pending = True
        elif following == "(":
            self.uncertain = True
            self._push(PLAIN, substitution=True)
            return position + 2
        elif following == "'" and self.context in (PLAIN, BACKQUOTE):
            self.uncertain = True
            self._push(ANSI)
            return position + 2
        elif following == "{":
            end = text.find("}", position + 2)
            body = text[position + 2:end] if end >= 0 else text[position + 2:]
            if end >= 0 and not any(c in body for c in "'\"`$\\{"):
                return end + 1  # ${HOME}, ${X:-default}: no quoting of its own
            self.uncertain = True
            return position + 2
        return position + 1

    def _heredoc_start(self, text: str, position: int) -> int:
        """``<<[-]WORD``: the here-document's lines start after this line; WORD quoted means literal text."""
        self.uncertain = True
        strip = text.startswith("-", position)
        position += strip
        while position < len(text) and text[position] in " \t":
            position += 1
        start = position
        while position < len(text) and text[position] not in _WORD_BREAKS:
            position += 1
        if position == len(text):
            self.delimiter_pending = True
        word = text[start:position]
        quoted = any(c in word for c in "'\"\\")
        self.heredocs.append((re.sub(r"['\"\\]", "", word), strip, quoted))
        self.word_start = False
        return position

    def _newline(self) -> None:
        inside = any(frame.context in (HEREDOC, HEREDOC_LITERAL) for frame in self.frames)
        if self.heredocs and not inside and self.context in (PLAIN, BACKQUOTE):
            _, _, quoted = self.heredocs[0]
            self._push(HEREDOC_LITERAL if quoted else HEREDOC)
            self.line = []

    def _heredoc_step(self, text: str, position: int) -> int:
        char = text[position]
        if char == "\n":
            delimiter, strip, _ = self.heredocs[0]
            line = "".join(self.line) if self.line is not None else None
            self.line = []
            if line is not None and (line.lstrip("\t") if strip else line) == delimiter:
                self.frames.pop()
                self.heredocs.pop(0)
                self._newline()  # the next here-document of the same line, if any
            return position + 1
        if self.line is not None:
            self.line.append(char)
        if self.context == HEREDOC_LITERAL:
            return position + 1
        if char == "\\":
            self.escape_pending = position + 1 == len(text)
            return position + 2
        if char == "$":
            return self._dollar(text, position)
        if char == "`":
            self.uncertain = True
            self._push(BACKQUOTE)
        return position + 1


def plan_script(pieces: Sequence[tuple[str, str | None]], *, field_name: str,
                variable: Callable[[str], str]) -> ScriptPlan:
    """Where each placeholder of a script stands; ShellScriptError when one cannot be placed safely.

    ``pieces``: the template as (literal text, placeholder name or None), braces already unescaped;
    ``variable``: the environment variable that carries a placeholder's value (for the messages).
    """
    reader = _Reader()
    planned: list[tuple[str, str | None, str]] = []
    for literal, name in pieces:
        reader.read(literal)
        if name is not None:
            where = f"{field_name}: in the shell script, {{{name}}}"
            if reader.dollar_pending:
                raise ShellScriptError(f"{where} after '$' would be read as a shell variable: write {{{name}}} "
                                       f"alone (batchyard quotes it) or \"${variable(name)}\"")
            if reader.escape_pending:
                raise ShellScriptError(f"{where} follows a backslash, which would escape the quoting batchyard "
                                       "puts there; remove the backslash")
            if reader.delimiter_pending:
                raise ShellScriptError(f"{where} cannot be a here-document's delimiter")
            if reader.context == HEREDOC_LITERAL:
                raise ShellScriptError(f"{where} is in a here-document whose delimiter is quoted, which the shell "
                                       "never expands: batchyard cannot put a value there safely (unquote the "
                                       "delimiter, or pass the value as an argument)")
            planned.append((literal, name, reader.context))
            reader.placeholder()
        else:
            planned.append((literal, None, reader.context))
    placeholders = any(name is not None for _, name, _ in planned)
    if placeholders and not reader.uncertain and reader.context in (SINGLE, DOUBLE):
        raise ShellScriptError(f"{field_name}: the shell script's quotes do not close (a {reader.context} quote "
                               "is still open at its end), so its placeholders cannot be quoted safely")
    return ScriptPlan(tuple(planned), by_reference=reader.uncertain)

