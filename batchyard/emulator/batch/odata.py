"""The slice of OData that Batch list operations use: ``$filter``, ``$select``, paging.

``$filter`` supports comparisons (``eq ne gt ge lt le``) of a property path (``state``,
``id``, ``executionInfo/result``, ``executionInfo/exitCode``...) with a quoted string,
integer or boolean, ``startswith(prop, 'x')``, combined with ``and``/``or``/``not`` and
parentheses. Anything else is refused with 400 ``InvalidQueryParameterValue``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from batchyard.emulator.batch.common import BatchApiError

Predicate = Callable[[dict[str, Any]], bool]
_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+)|(?P<lp>\()|(?P<rp>\))|(?P<comma>,)"
                    r"|(?P<word>[A-Za-z_][A-Za-z0-9_/.]*))")
_OPS = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "gt": lambda a, b: a is not None and a > b,
        "ge": lambda a, b: a is not None and a >= b, "lt": lambda a, b: a is not None and a < b,
        "le": lambda a, b: a is not None and a <= b}
MAX_RESULTS = 1000


def bad_query(name: str, value: str, reason: str) -> BatchApiError:
    return BatchApiError(400, "InvalidQueryParameterValue",
                         "Value for one of the query parameters specified in the request URI is invalid.",
                         [("QueryParameterName", name), ("QueryParameterValue", value), ("Reason", reason)])


def _lookup(item: dict[str, Any], path: str) -> Any:
    value: Any = item
    for part in path.split("/"):
        value = value.get(part) if isinstance(value, dict) else None
    return value


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                if text[pos:].strip() == "":
                    break
                raise bad_query("$filter", text, f"unexpected text at {text[pos:pos + 20]!r}")
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, kind: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (kind and tok[0] != kind):
            raise bad_query("$filter", self.text, f"expected {kind or 'more input'}")
        self.i += 1
        return tok

    def parse(self) -> Predicate:
        pred = self.expr()
        if self.peek() is not None:
            raise bad_query("$filter", self.text, f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return pred

    def expr(self) -> Predicate:
        left = self.term()
        while self.peek() == ("word", "or"):
            self.take()
            right, prev = self.term(), left
            left = lambda item, a=prev, b=right: a(item) or b(item)  # noqa: E731
        return left

    def term(self) -> Predicate:
        left = self.factor()
        while self.peek() == ("word", "and"):
            self.take()
            right, prev = self.factor(), left
            left = lambda item, a=prev, b=right: a(item) and b(item)  # noqa: E731
        return left

    def literal(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "num":
            return int(text)
        if kind == "word" and text in ("true", "false"):
            return text == "true"
        raise bad_query("$filter", self.text, f"expected a literal, got {text!r}")

    def factor(self) -> Predicate:
        kind, text = self.take()
        if kind == "lp":
            inner = self.expr()
            self.take("rp")
            return inner
        if kind == "word" and text == "not":
            inner = self.factor()
            return lambda item: not inner(item)
        if kind == "word" and text == "startswith" and self.peek() == ("lp", "("):
            self.take("lp")
            path = self.take("word")[1]
            self.take("comma")
            prefix = self.literal()
            self.take("rp")
            return lambda item: str(_lookup(item, path) or "").startswith(str(prefix))
        if kind != "word":
            raise bad_query("$filter", self.text, f"expected a property name, got {text!r}")
        op = self.take("word")[1]
        if op not in _OPS:
            raise bad_query("$filter", self.text, f"unsupported operator {op!r}")
        value, fn = self.literal(), _OPS[op]

        def compare(item: dict[str, Any]) -> bool:
            found = _lookup(item, text)
            try:
                return bool(fn(found, value))
            except TypeError:
                return False
        return compare


def parse_filter(text: str | None) -> Predicate | None:
    return _Parser(text).parse() if text and text.strip() else None


def select(item: dict[str, Any], fields: str | None) -> dict[str, Any]:
    """``$select``: top-level properties only (a nested path keeps its top-level parent)."""
    if not fields:
        return item
    wanted = {f.strip().split("/")[0] for f in fields.split(",") if f.strip()}
    return {k: v for k, v in item.items() if k in wanted}


def page(items: Sequence[Any], query: dict[str, str], base_url: str, path: str,
         view: Callable[[Any], dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Apply ``$filter``/``$select``/``maxresults``; returns one page and the ``odata.nextLink``.

    ``view`` makes an item's JSON view: without a ``$filter`` only the page's items are viewed, so
    listing a job of n tasks page by page costs n views, not n per page.
    """
    pred = parse_filter(query.get("$filter"))
    if pred is not None:
        items = [i for i in (map(view, items) if view else items) if pred(i)]
        view = None
    raw_max = query.get("maxresults") or str(MAX_RESULTS)
    try:
        limit = int(raw_max)
        if limit < 1:
            raise ValueError
    except ValueError:
        raise bad_query("maxresults", raw_max, "must be a positive integer") from None
    limit = min(limit, MAX_RESULTS)
    try:
        start = int(query.get("$skiptoken") or 0)
    except ValueError:
        raise bad_query("$skiptoken", query["$skiptoken"], "not a token this emulator issued") from None
    chunk = [select(view(i) if view else i, query.get("$select")) for i in items[start:start + limit]]
    next_link = None
    if start + limit < len(items):
        keep = {k: v for k, v in query.items() if k in ("api-version", "$filter", "$select", "$expand", "maxresults")}
        keep["$skiptoken"] = str(start + limit)
        next_link = f"{base_url}{path}?{urlencode(keep)}"
    return chunk, next_link
