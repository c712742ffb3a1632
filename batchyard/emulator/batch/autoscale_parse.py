"""The Azure Batch autoscale formula language: tokens, syntax tree and parser.

The language, as MicrosoftDocs/azure-docs ``articles/batch/batch-automatic-scaling.md`` describes
it: statements separated by ``;`` (at most 100, at most 8 KB in all), ``//`` and ``/* */``
comments, assignments to service variables (``$TargetDedicatedNodes``...) and to user variables
(with or without ``$``), C operators (``+ - * / ! < <= > >= == != && ||`` and ``cond ? a : b``),
function calls (``avg(...)``), methods of sampled metrics (``$PendingTasks.GetSample(...)``),
members of timestamps (``time().hour``), ``TimeInterval_*`` constants and the deallocation
options (``requeue``, ``terminate``, ``taskcompletion``, ``retaineddata``).

What the service refuses before evaluating (a bad token, an unknown function or variable, a
wrong number of arguments, a write to a read-only service variable) raises
:class:`FormulaSyntaxError` here, with the line and column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_FORMULA_CHARS = 8192
MAX_STATEMENTS = 100

# Read-write service variables, with the aliases the docs give (the full name wins when both are set).
WRITABLE = {"$TargetDedicatedNodes": "$TargetDedicatedNodes", "$TargetDedicated": "$TargetDedicatedNodes",
            "$TargetLowPriorityNodes": "$TargetLowPriorityNodes", "$TargetLowPriority": "$TargetLowPriorityNodes",
            "$NodeDeallocationOption": "$NodeDeallocationOption"}
# Read-only service variables sampled every 30 s: objects with GetSample() and the other methods.
SAMPLED = ("$CPUPercent", "$WallClockSeconds", "$MemoryBytes", "$DiskBytes", "$DiskReadBytes", "$DiskWriteBytes",
           "$DiskReadOps", "$DiskWriteOps", "$NetworkInBytes", "$NetworkOutBytes", "$SampleNodeCount",
           "$ActiveTasks", "$RunningTasks", "$PendingTasks", "$SucceededTasks", "$FailedTasks", "$PreemptedNodeCount")
# Read-only service variables that are plain numbers (the node counts the pool has now).
SCALARS = ("$CurrentDedicatedNodes", "$CurrentLowPriorityNodes", "$TaskSlotsPerNode", "$UsableNodeCount")
SERVICE = {name.lower(): name for name in (*WRITABLE, *SAMPLED, *SCALARS)}
DEALLOCATION_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")
# Name -> (fewest, most) arguments; None = any number (a doubleVecList).
FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "avg": (1, None), "len": (1, None), "max": (1, None), "min": (1, None), "norm": (1, None),
    "range": (1, None), "std": (1, None), "sum": (1, None), "ceil": (1, 1), "floor": (1, 1), "round": (1, 1),
    "lg": (1, 1), "ln": (1, 1), "log": (1, 1), "percentile": (2, 2), "rand": (0, 0), "stop": (0, 0),
    "time": (0, 1), "val": (2, 2),
}
METHODS: dict[str, tuple[int, int]] = {"GetSample": (1, 3), "GetSamplePercent": (1, 2), "GetSamplePeriod": (0, 0),
                                       "Count": (0, 0), "HistoryBeginTime": (0, 0)}
TIMESTAMP_MEMBERS = ("year", "month", "day", "weekday", "hour", "minute", "second")
TIME_INTERVALS = {"TimeInterval_Zero": 0.0, "TimeInterval_100ns": 1e-7, "TimeInterval_Microsecond": 1e-6,
                  "TimeInterval_Millisecond": 1e-3, "TimeInterval_Second": 1.0, "TimeInterval_Minute": 60.0,
                  "TimeInterval_Hour": 3600.0, "TimeInterval_Day": 86400.0, "TimeInterval_Week": 7 * 86400.0,
                  "TimeInterval_Year": 365 * 86400.0}

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n]+) | (?P<line_comment>//[^\n]*) | (?P<block_comment>/\*.*?\*/)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>"[^"\n]*")
  | (?P<name>\$?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>&&|\|\||==|!=|<=|>=|[-+*/!<>?:=(),;.\[\]])
""", re.VERBOSE | re.DOTALL)


class FormulaError(Exception):
    """A formula the service refuses; ``line``/``column`` are 1-based (0 when unknown)."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}" if self.line else self.message


class FormulaSyntaxError(FormulaError):
    """Found before evaluation: the formula is never run (``AutoScalingFormulaSyntaxError``)."""


class FormulaTooLong(FormulaSyntaxError):
    """Over 8 KB (``AutoScalingFormulaTooLong``)."""


@dataclass(frozen=True)
class Token:
    kind: str  # number, string, name, op, end
    text: str
    line: int
    column: int


# --- syntax tree ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    line: int
    column: int


@dataclass(frozen=True)
class Number(Node):
    value: float


@dataclass(frozen=True)
class String(Node):
    value: str


@dataclass(frozen=True)
class Name(Node):
    """A variable, a TimeInterval_* constant or a deallocation option; ``name`` is canonical for service ones."""

    name: str


@dataclass(frozen=True)
class Vector(Node):
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Unary(Node):
    op: str
    operand: Node


@dataclass(frozen=True)
class Binary(Node):
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Conditional(Node):
    condition: Node
    if_true: Node
    if_false: Node


@dataclass(frozen=True)
class Call(Node):
    function: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Method(Node):
    target: Node
    method: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Member(Node):
    target: Node
    member: str


@dataclass(frozen=True)
class Statement:
    target: str | None  # the variable assigned (service variables as the docs spell them), None for an expression
    expression: Node


# --- tokenizer ------------------------------------------------------------------------------------
def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos, line, line_start = 0, 1, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise FormulaSyntaxError(f"unexpected character {text[pos]!r}", line, pos - line_start + 1)
        kind = match.lastgroup or ""
        if kind not in ("space", "line_comment", "block_comment"):
            tokens.append(Token(kind, match.group(), line, pos - line_start + 1))
        newlines = match.group().count("\n")
        if newlines:
            line += newlines
            line_start = pos + match.group().rindex("\n") + 1
        pos = match.end()
    tokens.append(Token("end", "", line, pos - line_start + 1))
    return tokens


# --- parser ---------------------------------------------------------------------------------------
_BINARY_LEVELS = (("||",), ("&&",), ("==", "!="), ("<", "<=", ">", ">="), ("+", "-"), ("*", "/"))


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.defined: set[str] = set()  # user variables assigned by an earlier statement

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def error(self, message: str, tok: Token | None = None) -> FormulaSyntaxError:
        tok = tok or self.tok
        return FormulaSyntaxError(message, tok.line, tok.column)

    def accept(self, text: str) -> Token | None:
        if self.tok.kind == "op" and self.tok.text == text:
            self.i += 1
            return self.tokens[self.i - 1]
        return None

    def expect(self, text: str) -> Token:
        tok = self.accept(text)
        if tok is None:
            found = self.tok.text or "the end of the formula"
            raise self.error(f"expected '{text}' but found '{found}'")
        return tok

    def statements(self) -> list[Statement]:
        out: list[Statement] = []
        while self.tok.kind != "end":
            if self.accept(";"):
                continue
            out.append(self.statement())
            if len(out) > MAX_STATEMENTS:
                raise self.error(f"a formula may have at most {MAX_STATEMENTS} statements")
            if self.tok.kind != "end":
                self.expect(";")
        if not out:
            raise FormulaSyntaxError("the formula has no statement", 1, 1)
        return out

    def statement(self) -> Statement:
        start = self.tok
        nxt = self.tokens[self.i + 1]
        if start.kind == "name" and nxt.kind == "op" and nxt.text == "=":
            self.i += 2
            expression = self.expression()
            service = SERVICE.get(start.text.lower())
            if service is not None:
                if service not in WRITABLE:
                    raise self.error(f"{service} is read-only", start)
                return Statement(service, expression)  # an alias keeps its name: the full name wins over it
            if start.text in FUNCTIONS or start.text in TIME_INTERVALS or start.text in DEALLOCATION_OPTIONS:
                raise self.error(f"'{start.text}' is a reserved name and cannot be assigned", start)
            self.defined.add(start.text)
            return Statement(start.text, expression)
        return Statement(None, self.expression())

    def expression(self) -> Node:
        condition = self.binary(0)
        question = self.accept("?")
        if question is None:
            return condition
        if_true = self.expression()
        self.expect(":")
        return Conditional(question.line, question.column, condition, if_true, self.expression())

    def binary(self, level: int) -> Node:
        if level == len(_BINARY_LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.tok.kind == "op" and self.tok.text in _BINARY_LEVELS[level]:
            op = self.tok
            self.i += 1
            left = Binary(op.line, op.column, op.text, left, self.binary(level + 1))
        return left

    def unary(self) -> Node:
        tok = self.tok
        if self.accept("-") or self.accept("!"):
            return Unary(tok.line, tok.column, tok.text, self.unary())
        if self.accept("+"):
            return self.unary()
        return self.postfix(self.primary())

    def arguments(self, closing: str = ")") -> tuple[Node, ...]:
        args: list[Node] = []
        if not self.accept(closing):
            args.append(self.expression())
            while self.accept(","):
                args.append(self.expression())
            self.expect(closing)
        return tuple(args)

    def postfix(self, node: Node) -> Node:
        while self.accept("."):
            tok = self.tok
            if tok.kind != "name":
                raise self.error("expected a method or member name after '.'")
            self.i += 1
            if self.accept("("):
                fewest, most = METHODS.get(tok.text, (-1, -1))
                if fewest < 0:
                    raise self.error(f"unknown method '{tok.text}' (methods: {', '.join(METHODS)})", tok)
                args = self.arguments()
                if not fewest <= len(args) <= most:
                    raise self.error(f"{tok.text} takes {fewest} to {most} arguments, not {len(args)}", tok)
                node = Method(tok.line, tok.column, node, tok.text, args)
            elif tok.text in TIMESTAMP_MEMBERS:
                node = Member(tok.line, tok.column, node, tok.text)
            else:
                raise self.error(f"unknown member '{tok.text}' (a timestamp has {', '.join(TIMESTAMP_MEMBERS)})", tok)
        return node

    def primary(self) -> Node:
        tok = self.tok
        if tok.kind == "number":
            self.i += 1
            return Number(tok.line, tok.column, float(tok.text))
        if tok.kind == "string":
            self.i += 1
            return String(tok.line, tok.column, tok.text[1:-1])
        if self.accept("("):
            inner = self.expression()
            self.expect(")")
            return inner
        if self.accept("["):
            return Vector(tok.line, tok.column, self.arguments("]"))
        if tok.kind != "name":
            raise self.error(f"unexpected '{tok.text or 'end of formula'}'")
        self.i += 1
        if self.accept("("):
            if tok.text not in FUNCTIONS:
                raise self.error(f"unknown function '{tok.text}'", tok)
            args = self.arguments()
            fewest, most = FUNCTIONS[tok.text]
            if len(args) < fewest or (most is not None and len(args) > most):
                wanted = f"{fewest}" if fewest == most else f"at least {fewest}" if most is None else \
                    f"{fewest} to {most}"
                raise self.error(f"{tok.text}() takes {wanted} argument(s), not {len(args)}", tok)
            return Call(tok.line, tok.column, tok.text, args)
        service = SERVICE.get(tok.text.lower())
        if service is not None:
            return Name(tok.line, tok.column, service)
        if tok.text in self.defined or tok.text in TIME_INTERVALS or tok.text in DEALLOCATION_OPTIONS:
            return Name(tok.line, tok.column, tok.text)
        if tok.text.startswith("$"):
            raise self.error(f"unknown variable '{tok.text}' (not a service variable, nor assigned before)", tok)
        raise self.error(f"variable '{tok.text}' is used before it is assigned", tok)


def parse(formula: str) -> list[Statement]:
    """The statements of ``formula``, or :class:`FormulaSyntaxError` (:class:`FormulaTooLong` over 8 KB)."""
    if not isinstance(formula, str) or not formula.strip():
        raise FormulaSyntaxError("the formula is empty")
    if len(formula.encode("utf-8")) > MAX_FORMULA_CHARS:
        raise FormulaTooLong(f"the formula has {len(formula.encode('utf-8'))} bytes; at most {MAX_FORMULA_CHARS}")
    return _Parser(tokenize(formula)).statements()
