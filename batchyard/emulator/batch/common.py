"""Small shared pieces: Batch's error type, timestamps, ETags, ISO-8601 durations."""

from __future__ import annotations

import itertools
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from batchyard.core.redact import register_secret

# What Batch reports for "no limit" (TimeSpan.MaxValue).
INFINITE_DURATION = "P10675199DT2H48M5.4775807S"
ERROR_METADATA = "$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"


@dataclass
class BatchApiError(Exception):
    """An error answered in Batch's JSON error format (``code``, ``message``, ``values``)."""

    status: int
    code: str
    message: str
    values: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def body(self, base_url: str, request_id: str) -> dict[str, Any]:
        # Batch appends the request id and time to every message; clients show it to users.
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
        out: dict[str, Any] = {
            "odata.metadata": f"{base_url}/{ERROR_METADATA}",
            "code": self.code,
            "message": {"lang": "en-US", "value": f"{self.message}\nRequestId:{request_id}\nTime:{stamp}"},
        }
        if self.values:
            out["values"] = [{"key": k, "value": v} for k, v in self.values]
        return out


def not_found(kind: str, ident: str = "") -> BatchApiError:
    """``PoolNotFound`` / ``JobNotFound`` / ``TaskNotFound`` / ``NodeNotFound``.

    Azure's answer carries only the code and message, no ``values`` naming ``ident`` (its recorded
    404s show it), so neither does this one.
    """
    return BatchApiError(404, f"{kind}NotFound", f"The specified {kind.lower()} does not exist.")


def invalid(message: str, prop: str | None = None, code: str = "InvalidPropertyValue") -> BatchApiError:
    values = [("PropertyName", prop)] if prop else []
    return BatchApiError(400, code, message, values)


def unsupported(what: str, prop: str) -> BatchApiError:
    """A field Azure honours but the emulator cannot: refused, never silently dropped."""
    return BatchApiError(400, "UnsupportedProperty",
                         f"The batchyard Batch emulator does not support {what}.", [("PropertyName", prop)])


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    """Batch's timestamp form: ISO-8601 UTC with a ``Z``."""
    if dt is None:
        return None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc1123(dt: datetime) -> str:
    return format_datetime(dt.astimezone(UTC), usegmt=True)


_etag_counter = itertools.count(1)
_etag_lock = threading.Lock()


def new_etag() -> str:
    """Azure-style ``0x8D...`` ETag, unique per change (time-based plus a counter)."""
    with _etag_lock:
        n = next(_etag_counter)
    return f"0x8D{(time.time_ns() // 100 + n) & 0xFFFFFFFFFFFFF:013X}"


_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(value: Any, prop: str) -> float | None:
    """ISO-8601 duration -> seconds; ``None`` for Batch's "infinite" value or absent."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"{prop} must be an ISO-8601 duration string such as 'PT10M'", prop)
    m = _DURATION.match(value.strip())
    if not m or value.strip() in ("P", "PT"):
        raise invalid(f"{prop}: {value!r} is not an ISO-8601 duration (e.g. 'PT10M', 'P1D')", prop)
    parts = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
    seconds = parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    return None if seconds >= 10675199 * 86400 else seconds


def require(body: dict[str, Any], name: str, kind: type | tuple[type, ...] = str) -> Any:
    """A required body property, or Batch's ``MissingRequiredProperty`` / ``InvalidPropertyValue``."""
    if name not in body or body[name] is None:
        raise BatchApiError(400, "MissingRequiredProperty",
                            "A required property was not specified in the request body.",
                            [("PropertyName", name)])
    value = body[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise invalid(f"The value provided for {name} is invalid.", name)
    return value


_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_id(value: Any, prop: str = "id") -> str:
    """Batch ids: letters, digits, hyphens, underscores, at most 64 characters."""
    if not isinstance(value, str) or not _ID.match(value):
        raise invalid(f"The value provided for {prop} is invalid: ids may contain letters, digits, "
                      "hyphens and underscores, at most 64 characters.", prop)
    return value


def forget_passwords(value: Any) -> Any:
    """A copy of a request body without its ``password`` fields (container registries, user accounts).

    Batch never returns a password in a GET, and the emulator neither pulls images nor creates
    users, so it drops them before anything is stored: no view, listing or auto-pool copy can
    echo one. Each is registered with :mod:`batchyard.core.redact` first, so the emulator's log and
    the environment its tasks inherit mask it too.
    """
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key == "password":
                register_secret(item if isinstance(item, str) else None)
                continue
            out[key] = forget_passwords(item)
        return out
    if isinstance(value, list):
        return [forget_passwords(item) for item in value]
    return value


def shared_strings(value: Any) -> Any:
    """A copy of a request body whose strings (keys and values) are interned.

    A job's tasks repeat the same SAS URLs, patterns and keys in every task; parsed from JSON, each
    task would hold copies of its own (~2 KiB of a task's ~4 KiB). Interned, a string the tasks
    share is held once, and a task's own strings (id, command line) are freed with it.
    """
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {sys.intern(key): shared_strings(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shared_strings(item) for item in value]
    return value

