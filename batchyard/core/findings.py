"""A preflight finding of ``batchyard plan`` (its own module so rule modules need not import the plan)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    severity: str  # error: the job cannot work as written; warning: it may not; info: worth knowing
    code: str
    message: str
    fix: str = ""


__all__ = ["Finding"]
