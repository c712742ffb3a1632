"""Compact JSON for what batchyard stores and sends (table cells, job documents, queue messages):
no spaces, non-ASCII kept as is, so a stored value is as small as it can be and reads back as written."""

from __future__ import annotations

import json
from typing import Any


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
