"""A local Azure Batch data-plane API emulator (api-version 2025-06-01) for the unmodified SDK.

See docs/emulator.md for what is honoured, ignored and refused.
"""

from __future__ import annotations

from batchyard.emulator.batch.detached import BatchEmulatorRecord, detached_status, start_detached, stop_detached
from batchyard.emulator.batch.faults import FaultConfig
from batchyard.emulator.batch.server import BatchEmulator

__all__ = [
    "BatchEmulator", "BatchEmulatorRecord", "FaultConfig", "detached_status", "start_detached", "stop_detached",
]
