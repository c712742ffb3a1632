"""A job's tasks listed as Batch sends them, read by the SDK models' attribute names.

The SDK's ``list_tasks`` turns every task of a page into a ``BatchTask`` model, and every read of
one of its attributes deserializes that attribute again: ~0.5 ms of our CPU a task to read a
task's state, times and failure, 50 s for a job of 100,000 (its summary, `status`, a re-run's
records). Here each page is sent through the same client's pipeline (``send_request``: its
credential, retries, and its exception policy, which raises what the SDK raises with Batch's
error code) and each task is a :class:`WireView` of its JSON.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from azure.core.rest import HttpRequest

BATCH_API_VERSION = "2025-06-01"  # the REST version batchyard is written against (the SDK's own: a test holds it)
PAGE_SIZE = 1000  # Batch's largest page of tasks


class WireView:
    """A Batch JSON object read by the attribute names of the SDK's model of it: ``execution_info``
    is ``executionInfo``, a nested object a view, a list of objects a list of views, a ``*_time``
    a timezone-aware datetime, an absent property None. Only what is read is converted."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        value = self._data.get(_wire_name(name))
        if isinstance(value, dict):
            return WireView(value)
        if isinstance(value, list):
            return [WireView(item) if isinstance(item, dict) else item for item in value]
        if isinstance(value, str) and name.endswith("_time"):
            return datetime.fromisoformat(value)  # Batch's 7 fractional digits are read to the microsecond
        return value

    def __repr__(self) -> str:
        return f"WireView(id={self._data.get('id')!r})"


@functools.lru_cache(maxsize=256)
def _wire_name(name: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)


def list_task_views(client: Any, batch_job_id: str, *, select: list[str],
                    filter: str | None = None) -> Iterator[WireView]:
    """The tasks of ``batch_job_id`` (with ``select``'s properties, those matching ``filter``), a page
    at a time; raises what the SDK's ``list_tasks`` raises (``ResourceNotFoundError`` for a job
    that does not exist)."""
    params = {"api-version": BATCH_API_VERSION, "maxresults": str(PAGE_SIZE), "$select": ",".join(select)}
    if filter:
        params["$filter"] = filter
    request = HttpRequest("GET", f"/jobs/{quote(batch_job_id, safe='')}/tasks?{urlencode(params, quote_via=quote)}")
    while True:
        body = client.send_request(request).json()
        for task in body.get("value") or []:
            yield WireView(task)
        link = body.get("odata.nextLink")
        if not link:
            return
        # As the SDK does: the next link's own query, with this client's api-version, each value
        # encoded here (the pipeline would leave a '+' of a skip token as it is: a space to Batch).
        parts = urlsplit(link)
        query = urlencode({**dict(parse_qsl(parts.query)), "api-version": BATCH_API_VERSION}, quote_via=quote)
        request = HttpRequest("GET", urlunsplit((parts.scheme, parts.netloc, parts.path, query, "")))
