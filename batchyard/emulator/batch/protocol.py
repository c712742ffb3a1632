"""Request/response types, routing and Batch's response conventions shared by the operations."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from batchyard.emulator.batch.common import BatchApiError, rfc1123

# Batch bodies nest about ten levels deep; anything far deeper is refused before code walks it.
MAX_JSON_DEPTH = 64
# No Batch property takes a number past int64 (19 digits); longer digit runs only cost CPU.
MAX_INT_DIGITS = 19


def _invalid_body(why: str) -> BatchApiError:
    return BatchApiError(400, "InvalidRequestBody", f"The specified Request Body is not syntactically valid: {why}.")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number out of range")
    return value


def _parse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether lists/objects nest deeper than ``limit`` (level by level: the check itself cannot recurse)."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 1
    while level:
        if depth > limit:
            return True
        level = [child for item in level for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, dict | list)]
        depth += 1
    return False


def parse_body(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or Batch's 400 ``InvalidRequestBody`` saying why not."""
    try:
        value = json.loads(body, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except UnicodeDecodeError:
        raise _invalid_body("it is not UTF-8") from None
    except RecursionError:
        raise _invalid_body(f"it nests deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise _invalid_body(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # from the hooks above
        raise _invalid_body(str(exc)) from None
    if not isinstance(value, dict):
        raise _invalid_body("the body must be a JSON object")
    if _depth_exceeds(value, MAX_JSON_DEPTH):
        raise _invalid_body(f"it nests deeper than {MAX_JSON_DEPTH} levels")
    return value


@dataclass
class Request:
    method: str
    raw_path: str  # path + query exactly as sent (what SharedKey signs)
    path: str  # raw path without the query
    query: dict[str, str]  # first value per name, decoded
    headers: dict[str, str]  # lowercased names
    body: bytes = b""
    params: list[str] = field(default_factory=list)  # decoded {placeholders} from the route
    rest: str = ""  # decoded remainder for file routes
    parsed: dict[str, Any] | None = field(default=None, repr=False)  # the body once parsed (json())

    def json(self, *, required: bool = True) -> dict[str, Any]:
        """The body as a JSON object, parsed once: the schema check and the operation read the same one."""
        if not self.body.strip():
            if required:
                raise BatchApiError(400, "MissingRequiredProperty", "The request body is missing.")
            return {}
        if self.parsed is None:
            self.parsed = parse_body(self.body)
        return self.parsed

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() == "true"


@dataclass
class Response:
    status: int
    body: Any = None  # dict -> JSON; bytes -> raw
    headers: dict[str, str] = field(default_factory=dict)
    content_length: int | None = None  # for HEAD on files: the size without a body


Handler = Callable[[Request], Response]


class Router:
    """Routes on path segments; ``{}`` captures one decoded segment, ``{*}`` the decoded rest."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, list[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, pattern.strip("/").split("/"), handler))

    def match(self, request: Request) -> Handler:
        segments = [s for s in request.path.strip("/").split("/")]
        path_matched = False
        for method, pattern, handler in self._routes:
            params: list[str] = []
            rest = ""
            ok = True
            for i, part in enumerate(pattern):
                if part == "{*}":
                    if i >= len(segments) or not segments[i]:
                        ok = False
                    else:
                        rest = "/".join(unquote(s) for s in segments[i:])
                        segments_used = len(segments)
                    break
                if i >= len(segments) or (part != "{}" and segments[i].lower() != part):
                    ok = False
                    break
                if part == "{}":
                    params.append(unquote(segments[i]))
            else:
                segments_used = len(pattern)
            if not ok or segments_used != len(segments):
                continue
            path_matched = True
            if method == request.method:
                request.params, request.rest = params, rest
                return handler
        if path_matched:
            raise BatchApiError(405, "UnsupportedHttpVerb",
                                f"The resource doesn't support the specified HTTP verb {request.method}.")
        raise BatchApiError(400, "UnsupportedOperation",
                            f"The batchyard Batch emulator does not support {request.method} "
                            f"{re.sub(r'[?].*', '', request.path)} (see docs/emulator.md for what it supports).")


def resource_headers(url: str, etag: str, last_modified: datetime) -> dict[str, str]:
    return {"ETag": etag, "Last-Modified": rfc1123(last_modified), "DataServiceId": url}


def entity(base: str, kind: str, view: dict[str, Any], etag: str, last_modified: datetime) -> Response:
    body = {"odata.metadata": f"{base}/$metadata#{kind}/@Element", **view}
    return Response(200, body, {"ETag": etag, "Last-Modified": rfc1123(last_modified)})


def created(url: str, etag: str, last_modified: datetime) -> Response:
    return Response(201, None, {**resource_headers(url, etag, last_modified), "Location": url})


def check_conditions(request: Request, etag: str, last_modified: datetime) -> None:
    """If-Match / If-None-Match on ETags (If-(Un)Modified-Since are accepted and ignored)."""
    if_match = request.headers.get("if-match")
    if if_match and if_match != "*" and if_match.strip('"') != etag:
        raise BatchApiError(412, "ConditionNotMet", "The condition specified using HTTP conditional "
                            "header(s) is not met.")
    if_none = request.headers.get("if-none-match")
    if if_none and (if_none == "*" or if_none.strip('"') == etag):
        if request.method in ("GET", "HEAD"):
            raise BatchApiError(304, "ConditionNotMet", "The resource has not been modified.")
        raise BatchApiError(412, "ConditionNotMet", "The condition specified using HTTP conditional "
                            "header(s) is not met.")
