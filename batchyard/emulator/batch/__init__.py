"""A local Azure Batch data-plane API emulator (api-version 2025-06-01) for the unmodified SDK.

See docs/emulator.md for what is honoured, ignored and refused.
"""

from __future__ import annotations

from .detached import BatchEmulatorRecord, detached_status, start_detached, stop_detached
from .faults import FaultConfig
from .server import BatchEmulator

__all__ = [
    "BatchEmulator", "BatchEmulatorRecord", "FaultConfig", "detached_status", "start_detached", "stop_detached",
]
