"""Request bodies checked against the Batch 2025-06-01 schema, refused the way Azure refuses them.

The schema (``batchyard/data/batch_schema_2025-06-01.json``, Swagger-2.0-shaped definitions; see
tests/data/batch_schema/README.md for where it comes from) drives every structural check: an
unknown property, a missing required one, a value of the wrong JSON type, an enum value the
service does not know (enums compare case-insensitively, as Azure's do), a malformed date-time or
duration, an integer outside int64. A few rules the schema cannot express (ids, image resource
ids, lengths) sit in :data:`RULES`. What Azure answers:

- unknown property: 400 ``InvalidRequestBody`` (``PropertyName``, ``Reason``);
- missing required property: 400 ``MissingRequiredProperty`` (``PropertyName``);
- anything else: 400 ``InvalidPropertyValue`` (``PropertyName``, ``PropertyValue``, ``Reason``),
  ``PropertyValue`` redacted and left out for secrets (passwords, keys, tokens).

``PropertyName`` is the property's own name, as in Azure's answers (``subnetId``, not a path);
the message names the full path. :class:`BodyValidator` is off in lenient mode (``strict=False``
or ``BATCHYARD_EMULATOR_LENIENT=1``): then only the operations' own checks apply.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from batchyard.core.redact import redact
from batchyard.emulator.batch.common import BatchApiError, parse_duration
from batchyard.emulator.batch.protocol import Request
from batchyard.emulator.batch.schema_checks import CompiledSchema

SCHEMA = "data/batch_schema_2025-06-01.json"
LENIENT_ENV = "BATCHYARD_EMULATOR_LENIENT"
INT64 = 2**63
MAX_SHOWN_VALUE = 256
_SECRET_NAME = re.compile(r"(?i)password|key|secret|token|credential|sas")

# The body each operation takes, by its route (segments as the router writes them; {} = an id).
BODIES: tuple[tuple[str, str, str], ...] = (
    ("POST", "pools", "BatchPoolCreateOptions"),
    ("PATCH", "pools/{}", "BatchPoolUpdateOptions"),
    ("POST", "pools/{}/updateproperties", "BatchPoolReplaceOptions"),
    ("POST", "pools/{}/resize", "BatchPoolResizeOptions"),
    ("POST", "pools/{}/removenodes", "BatchNodeRemoveOptions"),
    ("POST", "pools/{}/enableautoscale", "BatchPoolEnableAutoScaleOptions"),
    ("POST", "pools/{}/evaluateautoscale", "BatchPoolEvaluateAutoScaleOptions"),
    ("POST", "pools/{}/nodes/{}/users", "BatchNodeUserCreateOptions"),
    ("PUT", "pools/{}/nodes/{}/users/{}", "BatchNodeUserReplaceOptions"),
    ("POST", "pools/{}/nodes/{}/reboot", "BatchNodeRebootOptions"),
    ("POST", "pools/{}/nodes/{}/reimage", "BatchNodeReimageOptions"),
    ("POST", "pools/{}/nodes/{}/deallocate", "BatchNodeDeallocateOptions"),
    ("POST", "pools/{}/nodes/{}/disablescheduling", "BatchNodeDisableSchedulingOptions"),
    ("POST", "pools/{}/nodes/{}/uploadbatchservicelogs", "UploadBatchServiceLogsOptions"),
    ("POST", "jobs", "BatchJobCreateOptions"),
    ("PATCH", "jobs/{}", "BatchJobUpdateOptions"),
    ("PUT", "jobs/{}", "BatchJob"),
    ("POST", "jobs/{}/disable", "BatchJobDisableOptions"),
    ("POST", "jobs/{}/terminate", "BatchJobTerminateOptions"),
    ("POST", "jobs/{}/tasks", "BatchTaskCreateOptions"),
    ("POST", "jobs/{}/addtaskcollection", "BatchTaskGroup"),
    ("PUT", "jobs/{}/tasks/{}", "BatchTask"),
    ("POST", "jobschedules", "BatchJobScheduleCreateOptions"),
    ("PATCH", "jobschedules/{}", "BatchJobScheduleUpdateOptions"),
    ("PUT", "jobschedules/{}", "BatchJobSchedule"),
)

# Bodies whose items are judged one by one (the operation answers per item).
PER_ITEM_RULES = frozenset({"BatchTaskGroup"})

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_IMAGE_ID = re.compile(r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Compute/"
                       r"(?:images/[^/]+|galleries/[^/]+/images/[^/]+(?:/versions/[^/]+)?)", re.IGNORECASE)
_IMAGE_ID_FORMS = ("/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Compute/"
                   "images/{imageName}, .../galleries/{galleryName}/images/{galleryImageName}/versions/"
                   "{galleryImageVersionName}, or .../galleries/{galleryName}/images/{galleryImageName}")


def _id_rule(value: str) -> str | None:
    return None if _ID.fullmatch(value) else ("ids may contain letters, digits, hyphens and underscores, "
                                              "at most 64 characters")


def _max_length(limit: int) -> Callable[[str], str | None]:
    return lambda value: None if len(value) <= limit else f"at most {limit} characters"


def image_id_problem(value: str) -> str | None:
    """Why ``value`` is not an image resource id Azure takes (None when it is one)."""
    return None if _IMAGE_ID.fullmatch(value) else f"The specified resource id must be of the format {_IMAGE_ID_FORMS}"


# What the schema cannot say: (definition, property) -> a check returning the reason it fails.
RULES: dict[tuple[str, str], Callable[[str], str | None]] = {
    ("BatchPoolCreateOptions", "id"): _id_rule,
    ("BatchJobCreateOptions", "id"): _id_rule,
    ("BatchTaskCreateOptions", "id"): _id_rule,
    ("BatchJobScheduleCreateOptions", "id"): _id_rule,
    ("BatchPoolCreateOptions", "displayName"): _max_length(1024),
    ("BatchJobCreateOptions", "displayName"): _max_length(1024),
    ("BatchTaskCreateOptions", "displayName"): _max_length(1024),
    ("BatchAutoPoolSpecification", "autoPoolIdPrefix"): _max_length(20),
    ("BatchVmImageReference", "virtualMachineImageId"): image_id_problem,
}


@cache
def load_schema() -> dict[str, Any]:
    """The definitions (name -> Swagger 2.0 schema) shipped with batchyard."""
    text = resources.files("batchyard").joinpath(SCHEMA).read_text(encoding="utf-8")
    definitions: dict[str, Any] = json.loads(text)["definitions"]
    return definitions


def lenient_from_env(environ: dict[str, str] | None = None) -> bool:
    return (environ if environ is not None else os.environ).get(LENIENT_ENV, "").strip().lower() in ("1", "true",
                                                                                                    "yes")


def _shown(name: str, value: Any) -> list[tuple[str, str]]:
    if _SECRET_NAME.search(name) or isinstance(value, dict | list):
        return []
    return [("PropertyValue", redact(json.dumps(value) if not isinstance(value, str) else value)[:MAX_SHOWN_VALUE])]


def invalid_value(name: str, path: str, value: Any, reason: str) -> BatchApiError:
    return BatchApiError(400, "InvalidPropertyValue", f"The value provided for one of the properties in the request "
                         f"body is invalid ({path}: {reason}).",
                         [("PropertyName", name), *_shown(name, value), ("Reason", reason)])


class SchemaWalk:
    """One body against one definition; raises the first problem found, as Azure stops at its first.

    What the checks are, read straight from the schema: :class:`BodyValidator` runs them compiled
    (:mod:`.schema_checks`), which tests hold equal to this walk.
    """

    def __init__(self, definitions: dict[str, Any], rules: dict[tuple[str, str], Callable[[str], str | None]]) -> None:
        self.definitions = definitions
        self.rules = rules

    def definition(self, schema: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        ref = schema.get("$ref")
        if ref is None:
            return None, schema
        name = ref.rsplit("/", 1)[-1]
        return name, self.definitions[name]

    def value(self, schema: dict[str, Any], value: Any, name: str, path: str) -> None:
        definition, schema = self.definition(schema)
        kind = schema.get("type")
        if "enum" in schema:
            known = {str(v).lower() for v in schema["enum"]}
            if not isinstance(value, str) or value.lower() not in known:
                raise invalid_value(name, path, value, f"must be one of {', '.join(schema['enum'])}")
        elif kind == "object" and "properties" in schema:
            self.object(definition or "object", schema, value, path)
        elif kind == "object":
            if not isinstance(value, dict):
                raise invalid_value(name, path, value, "must be a JSON object")
            for key, item in value.items():
                self.value(schema.get("additionalProperties") or {}, item, key, f"{path}.{key}")
        elif kind == "array":
            if not isinstance(value, list):
                raise invalid_value(name, path, value, "must be a JSON array")
            for i, item in enumerate(value):
                self.value(schema.get("items") or {}, item, name, f"{path}[{i}]")
        else:
            self.scalar(kind, schema.get("format"), value, name, path)

    def scalar(self, kind: str | None, fmt: str | None, value: Any, name: str, path: str) -> None:
        if kind == "boolean" and not isinstance(value, bool):
            raise invalid_value(name, path, value, "must be true or false")
        if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int) or abs(value) >= INT64):
            raise invalid_value(name, path, value, "must be an integer")
        if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise invalid_value(name, path, value, "must be a number")
        if kind == "string":
            if not isinstance(value, str):
                raise invalid_value(name, path, value, "must be a string")
            if fmt == "date-time":
                try:
                    datetime.fromisoformat(value)
                except ValueError:
                    raise invalid_value(name, path, value, "must be an ISO 8601 date and time") from None
            elif fmt == "duration":
                try:
                    parse_duration(value, path)
                except BatchApiError:
                    raise invalid_value(name, path, value, "must be an ISO 8601 duration such as PT10M") from None

    def object(self, definition: str, schema: dict[str, Any], body: Any, path: str) -> None:
        where = path or "the request body"
        if not isinstance(body, dict):
            raise invalid_value(path.rsplit(".", 1)[-1] or definition, where, body, "must be a JSON object")
        properties = schema.get("properties") or {}
        for key, value in body.items():
            if key.startswith("odata.") or "@odata" in key:
                continue  # OData annotations, not properties
            inner = f"{path}.{key}" if path else key
            if key not in properties:
                raise BatchApiError(400, "InvalidRequestBody", "The specified Request Body is not syntactically "
                                    f"valid: {inner} is not a property of {definition}.",
                                    [("PropertyName", key),
                                     ("Reason", f"The property '{key}' does not exist on type '{definition}'.")])
            if value is None:
                continue  # a JSON null is an absent property
            self.value(properties[key], value, key, inner)
            rule = self.rules.get((definition, key))
            reason = rule(value) if rule is not None and isinstance(value, str) else None
            if reason:
                raise invalid_value(key, inner, value, reason)
        for key in schema.get("required") or []:
            if body.get(key) is None:
                raise BatchApiError(400, "MissingRequiredProperty", "A required property was not specified in the "
                                    f"request body: {f'{path}.{key}' if path else key}.", [("PropertyName", key)])


def _segments(route: str) -> list[str]:
    return route.strip("/").split("/")


class BodyValidator:
    """Checks each request's body against the operation's definition (``strict``), or nothing."""

    def __init__(self, *, strict: bool = True, definitions: dict[str, Any] | None = None) -> None:
        self.strict = strict
        self.definitions = definitions if definitions is not None else load_schema()
        self._checks = CompiledSchema(self.definitions, RULES, invalid_value)
        # In an add-collection a task whose value breaks a rule (a bad id) is that task's clientError,
        # not the request's: only the structure of its tasks fails the whole request.
        self._structure_only = CompiledSchema(self.definitions, {}, invalid_value)
        self._routes = [(method, _segments(route), name) for method, route, name in BODIES]
        for _, _, name in BODIES:
            if name not in self.definitions:
                raise KeyError(f"the Batch schema has no definition {name}")

    def definition_for(self, method: str, path: str) -> str | None:
        """The definition a request to ``method path`` must match, if it takes a body."""
        segments = _segments(path)
        for wanted, pattern, name in self._routes:
            if wanted == method and len(pattern) == len(segments) and all(
                    part == "{}" or part == seg.lower() for part, seg in zip(pattern, segments, strict=True)):
                return name
        return None

    def check(self, request: Request) -> None:
        """Raise Azure's 400 for a body that breaks the schema; bodies of operations without one pass."""
        if not self.strict or not request.body.strip():
            return
        name = self.definition_for(request.method, request.path)
        if name is not None:
            self.check_body(name, request.json())

    def check_body(self, name: str, body: Any) -> None:
        (self._structure_only if name in PER_ITEM_RULES else self._checks).check(name, body)
