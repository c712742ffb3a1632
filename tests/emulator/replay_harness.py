"""Replays the azure-batch SDK's recorded traffic (tests/data/batch_recordings) against the emulator.

Each recorded request is sent again through the unmodified SDK's pipeline (``send_request``, so it
is signed with the emulator's key and dated now) and the answer is compared with Azure's on what
the SDK and its callers depend on: the status, the error code and the keys of its ``values``, the
top-level JSON keys and their types (for a list, the keys of its items), the response headers the
SDK reads, and, where an entry says so, a few values (``expect``: states, counts) and the order of
a listing. How the recordings were reduced to that (polling loops collapsed, fixtures recreated,
Windows commands translated) is in tests/data/batch_recordings/README.md.

A transitional state is held (the emulator runs with ``transitions.hold()``) until an entry that
polls for its end asks the emulator to finish it, so what Azure showed between two requests is
what the replay sees too, with no sleeping and no race.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from azure.batch import BatchClient
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest, HttpResponse

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "batch_recordings"
API_VERSION = "2025-06-01"
JSON_TYPE = "application/json; odata=minimalmetadata"
REFUSALS = ("UnsupportedOperation", "UnsupportedProperty", "UnsupportedHttpVerb")
POLL_DEADLINE_S = 30.0
TYPE_NAMES = {str: "str", bool: "bool", int: "int", float: "float", dict: "obj", list: "list", type(None): "null"}


@dataclass
class Outcome:
    """One recorded request, replayed: ``cause`` is match, refused, after-refused, mismatch or unreplayable."""

    recording: str
    index: int
    call: str
    cause: str
    differences: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"{self.recording}#{self.index} {self.call}: {self.cause}: {'; '.join(self.differences)}"


def recordings() -> list[Path]:
    return sorted(RECORDINGS.glob("test_batch_*.json"))


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def type_name(value: Any) -> str:
    return TYPE_NAMES.get(type(value), type(value).__name__)


def shape(body: dict[str, Any]) -> dict[str, str]:
    return {key: type_name(value) for key, value in body.items()}


def items_shape(items: list[Any]) -> dict[str, str]:
    union: dict[str, str] = {}
    for item in items:
        union.update(shape(item) if isinstance(item, dict) else {})
    return union


def compare_keys(what: str, want: dict[str, str], got: dict[str, str], volatile: set[str]) -> list[str]:
    out = [f"{what} lacks {key}" for key in sorted(set(want) - set(got) - volatile)]
    out += [f"{what} has {key}, Azure has not" for key in sorted(set(got) - set(want) - volatile)]
    out += [f"{what} {key} is {got[key]}, Azure's {want[key]}" for key in sorted(set(want) & set(got))
            if got[key] != want[key]]
    return out


def differences(entry: dict[str, Any], response: HttpResponse) -> list[str]:
    """How the emulator's answer differs from Azure's recorded one (empty: it answered as Azure did)."""
    body = _json(response)
    if response.status_code != entry["status"]:
        code = body.get("code") if isinstance(body, dict) else None
        return [f"status {response.status_code} ({code}), Azure {entry['status']}"]
    out = [f"header {name} missing" for name in entry.get("headers", []) if name not in response.headers]
    wanted_type = entry.get("content_type", "application/json" if "Content-Type" in entry.get("headers", []) else None)
    got_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if wanted_type and got_type != wanted_type:
        out.append(f"Content-Type {got_type}, Azure {wanted_type}")
    if "error" in entry:
        code = body.get("code") if isinstance(body, dict) else None
        if code != entry["error"]:
            out.append(f"error {code}, Azure {entry['error']}")
        got_values = sorted(v.get("key") for v in body.get("values", [])) if isinstance(body, dict) else []
        if got_values != sorted(entry.get("values", [])):
            out.append(f"error values {got_values}, Azure {sorted(entry.get('values', []))}")
    volatile = set(entry.get("volatile", []))
    if "keys" in entry:
        out += compare_keys("answer", entry["keys"], shape(body) if isinstance(body, dict) else {}, volatile)
    items = body.get("value", []) if isinstance(body, dict) else []
    if "items" in entry:
        out += compare_keys("items", entry["items"], items_shape(items), volatile)
    for key, value in entry.get("expect", {}).items():
        if not isinstance(body, dict) or body.get(key) != value:
            out.append(f"{key} {body.get(key) if isinstance(body, dict) else None!r}, Azure {value!r}")
    for key, value in entry.get("expect_items", {}).items():
        if not items or any(item.get(key) != value for item in items):
            out.append(f"items' {key} {[item.get(key) for item in items]!r}, Azure {value!r}")
    if "order" in entry and [item.get("id") for item in items] != entry["order"]:
        out.append(f"order {[item.get('id') for item in items]}, Azure {entry['order']}")
    return out


def _json(response: HttpResponse) -> Any:
    if "json" not in response.headers.get("Content-Type", "") or not response.content:
        return None
    return json.loads(response.content)


def _polled_enough(entry: dict[str, Any], response: HttpResponse) -> bool:
    """Whether Azure's polling loop would have stopped here: its final status and values (or a refusal)."""
    body = _json(response)
    if isinstance(body, dict) and body.get("code") in REFUSALS:
        return True
    if response.status_code != entry["status"]:
        return False
    checks = {k: v for k, v in entry.get("expect", {}).items()}
    items = body.get("value", []) if isinstance(body, dict) else []
    return all(isinstance(body, dict) and body.get(k) == v for k, v in checks.items()) and all(
        items and all(item.get(k) == v for item in items) for k, v in entry.get("expect_items", {}).items())


def _substitute(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, text in names.items():
            value = value.replace("{" + name + "}", text)
        return value
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    return value


def _resource(method: str, path: str, body: Any) -> str:
    """The resource a refused request was about: later answers about it follow from the refusal."""
    parts = path.split("?")[0].rstrip("/").split("/")
    if method == "POST" and isinstance(body, dict) and isinstance(body.get("id"), str) and len(parts) == 2:
        return f"{parts[0]}/{parts[1]}/{body['id']}".lower()
    if method == "POST" and len(parts) > 3:
        parts = parts[:-1]  # an action (/enableautoscale, /reboot): its resource is the parent
    return "/".join(parts).lower()


def _without(body: dict[str, Any], dotted: str) -> bool:
    """Drop ``a.b.c`` from ``body``; whether it was there."""
    *parents, leaf = dotted.split(".")
    node: Any = body
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return isinstance(node, dict) and node.pop(leaf, None) is not None


class Replay:
    """Replays one recording on one emulator (fresh: nothing else lives on it)."""

    def __init__(self, emulator: Any, client: BatchClient, names: dict[str, str]) -> None:
        self.emulator = emulator
        self.client = client
        self.names = dict(names)
        self.tainted: set[str] = set()
        self.stripped: set[str] = set()
        self.previous: HttpResponse | None = None

    def send(self, call: str, body: Any = None) -> HttpResponse:
        method, _, target = call.partition(" ")
        if method == "NEXT":
            assert self.previous is not None, "NEXT needs a previous page"
            target = _json(self.previous)["odata.nextLink"].removeprefix(self.emulator.url)
            method = "GET"
        split = urlsplit(_substitute(target, self.names))
        query = [(k, v) for k, v in parse_qsl(split.query, keep_blank_values=True) if k != "api-version"]
        url = f"{quote(split.path)}?{urlencode([('api-version', API_VERSION), *query], quote_via=quote)}"
        headers = {"Accept": "application/json"}
        content = None
        if body is not None:
            content, headers["Content-Type"] = json.dumps(_substitute(body, self.names)), JSON_TYPE
        try:
            response = self.client.send_request(HttpRequest(method, url, headers=headers, content=content))
        except HttpResponseError as refused:  # the SDK's own policy raises on any status past 2xx
            assert refused.response is not None
            response = refused.response  # type: ignore[assignment]
        response.read()
        self.previous = response
        self._learn_nodes(response)
        return response

    def _learn_nodes(self, response: HttpResponse) -> None:
        body = _json(response)
        if isinstance(body, dict) and "#nodes" in str(body.get("odata.metadata", "")) and "value" in body:
            for i, node in enumerate(body["value"]):
                self.names[f"node{i}"] = node["id"]

    def fixtures(self, data: dict[str, Any]) -> None:
        for fixture in data.get("fixtures", []):
            response = self.send(fixture["call"], fixture.get("body"))
            assert response.status_code < 300, f"fixture {fixture['call']} failed: {response.text()}"
            if "advance" in fixture:
                self.emulator.finish_transitions(*fixture["advance"])

    def run(self, name: str, data: dict[str, Any]) -> Iterator[Outcome]:
        self.fixtures(data)
        for index, entry in enumerate(data["entries"]):
            if entry.get("unreplayable"):
                yield Outcome(name, index, entry["call"], "unreplayable", [entry["unreplayable"]])
                continue
            response = self.poll(entry) if entry.get("poll") else self.send(entry["call"], entry.get("body"))
            yield self.judge(name, index, entry, response)

    def poll(self, entry: dict[str, Any]) -> HttpResponse:
        """Send until the answer is the one Azure's polling loop ended on (or the deadline passes)."""
        self.emulator.finish_transitions(*entry.get("advance", ()))
        deadline = time.monotonic() + POLL_DEADLINE_S
        while True:
            response = self.send(entry["call"], entry.get("body"))
            if _polled_enough(entry, response) or time.monotonic() > deadline:
                return response
            time.sleep(0.1)

    def judge(self, name: str, index: int, entry: dict[str, Any], response: HttpResponse) -> Outcome:
        found = differences(entry, response)
        call = entry["call"]
        body = _json(response)
        code = body.get("code") if isinstance(body, dict) else None
        refused = code in REFUSALS or (call.startswith("HEAD ") and response.status_code in (400, 405))
        if found and response.status_code in (400, 405) and refused:
            method, _, path = call.partition(" ")
            self.tainted.add(_resource(method, _substitute(path, self.names), entry.get("body")))
            self._create_without_refused(entry, body)
            return Outcome(name, index, call, "refused", found)
        if not found:
            return Outcome(name, index, call, "match")
        path = _substitute(call.partition(" ")[2], self.names).split("?")[0].lower()
        missing_only = all(d.split(" lacks ")[-1] in self.stripped for d in found if " lacks " in d) and all(
            " lacks " in d for d in found)
        if missing_only or any(path.startswith(t) for t in self.tainted):
            return Outcome(name, index, call, "after-refused", found)
        return Outcome(name, index, call, "mismatch", found)

    def _create_without_refused(self, entry: dict[str, Any], error: Any) -> None:
        """A refused create is sent again without the refused property, so what follows has its resource."""
        body = json.loads(json.dumps(entry.get("body")))
        if not entry["call"].startswith("POST") or not isinstance(body, dict) or "id" not in body:
            return
        for _ in range(5):
            names = [v["value"] for v in (error or {}).get("values", []) if v.get("key") == "PropertyName"]
            if not names or not _without(body, names[0]):
                return
            self.stripped.add(names[0].split(".")[0])
            response = self.send(entry["call"], body)
            if response.status_code < 300:
                return
            error = _json(response)
