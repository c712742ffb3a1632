"""Writes batchyard/data/batch_schema_2025-06-01.json: the request-body definitions of Batch 2025-06-01.

The azure-batch SDK's models are generated from the same TypeSpec as the REST spec
(Azure/azure-rest-api-specs, specification/batch/data-plane/Azure.Batch/stable/2025-06-01/
BatchService.json), so this reads them from the installed SDK instead of copying the spec by hand:
each model becomes a Swagger-2.0-shaped definition (``properties`` with ``type``/``format``/``$ref``/
``items``/``enum``, ``required``, ``readOnly``), each enum a ``{"type": "string", "enum": [...]}``.
batchyard.emulator.batch.validation reads that shape, so a trimmed copy of the spec itself would
do as well. Run it with the azure-batch the schema names (15.1.0 for api-version 2025-06-01):

    .venv/bin/python tests/data/batch_schema/make_schema.py

tests/emulator/test_validation.py checks that the file in the repository is what this writes.
"""

from __future__ import annotations

import datetime
import enum
import inspect
import json
import sys
import types
import typing
from importlib.metadata import version
from pathlib import Path
from typing import Any

from azure.batch import models
from azure.batch._utils.model_base import Model
from azure.batch.models import _enums as generated_enums
from azure.batch.models import _models as generated

API_VERSION = "2025-06-01"
SDK_VERSION = "15.1.0"
OUTPUT = Path(__file__).resolve().parents[3] / "batchyard" / "data" / f"batch_schema_{API_VERSION}.json"
SCALARS: dict[Any, dict[str, str]] = {
    str: {"type": "string"}, bool: {"type": "boolean"}, int: {"type": "integer"}, float: {"type": "number"},
    bytes: {"type": "string", "format": "byte"}, datetime.datetime: {"type": "string", "format": "date-time"},
    datetime.timedelta: {"type": "string", "format": "duration"},
}
WRITABLE = {"create", "update"}


def _optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007 (built at run time)
    return annotation, False


def _schema(annotation: Any) -> dict[str, Any]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, typing.List):  # noqa: UP006
        return {"type": "array", "items": _schema(args[0])}
    if origin in (dict, typing.Dict):  # noqa: UP006
        return {"type": "object", "additionalProperties": _schema(args[1])}
    if origin in (typing.Union, types.UnionType):
        # Union[str, SomeEnum]: an extensible enum in the SDK; the service takes its listed values.
        named = [a for a in args if inspect.isclass(a) and issubclass(a, enum.Enum)]
        if named:
            return {"$ref": f"#/definitions/{named[0].__name__}"}
        return _schema(args[0])
    if origin is typing.Literal:
        return {"type": "string", "enum": list(args)}
    if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
        return {"$ref": f"#/definitions/{annotation.__name__}"}
    if inspect.isclass(annotation) and issubclass(annotation, Model):
        return {"$ref": f"#/definitions/{annotation.__name__}"}
    if annotation in SCALARS:
        return dict(SCALARS[annotation])
    raise TypeError(f"no schema for {annotation!r}")


def _definition(cls: type[Model]) -> dict[str, Any]:
    cls.__new__(cls)  # the SDK computes a model's field table on first construction
    namespace = {**vars(generated), "_models": models}
    hints = typing.get_type_hints(cls, globalns=namespace)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for attr, field in cls._attr_to_rest_field.items():  # type: ignore[attr-defined]
        annotation, optional = _optional(hints[attr])
        prop = _schema(annotation)
        visibility = set(field._visibility or WRITABLE)
        if not visibility & WRITABLE:
            prop["readOnly"] = True
        elif not optional:
            required.append(field._rest_name)
        properties[field._rest_name] = prop
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


def build() -> dict[str, Any]:
    definitions: dict[str, Any] = {}
    # Some request bodies (BatchNodeRebootOptions, BatchJobTerminateOptions...) are not exported.
    found = {name: getattr(module, name) for module in (generated_enums, generated, models) for name in dir(module)}
    for name in sorted(found):
        item = found[name]
        if name.startswith("_") or getattr(item, "__module__", "").split(".")[:2] != ["azure", "batch"]:
            continue
        if inspect.isclass(item) and issubclass(item, enum.Enum):
            definitions[name] = {"type": "string", "enum": [member.value for member in item]}
        elif inspect.isclass(item) and issubclass(item, Model) and item is not Model:
            definitions[name] = _definition(item)
    return {
        "info": {"api-version": API_VERSION, "source": f"azure-batch {SDK_VERSION} models (generated from the "
                 f"Azure.Batch TypeSpec that also generates BatchService.json {API_VERSION})",
                 "license": "MIT (Azure SDK for Python, Microsoft Corporation)"},
        "definitions": definitions,
    }


def main() -> int:
    installed = version("azure-batch")
    if installed != SDK_VERSION:
        print(f"azure-batch {installed} is installed; the {API_VERSION} schema comes from {SDK_VERSION}",
              file=sys.stderr)
        return 1
    OUTPUT.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
