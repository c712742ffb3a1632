"""batchyard: per-file batch jobs on Azure Batch, locally on Azurite, or on an offline Batch emulator.

The names below are imported when first used (PEP 562), so ``import batchyard.cli`` or any
submodule does not pay for the Python API's imports (the backends, the Azure SDKs): every
``batchyard`` command starts that much sooner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from batchyard.core.version import __version__

if TYPE_CHECKING:
    from batchyard.api.mapping import MapRun, map_files, map_lines
    from batchyard.core.errors import BatchyardError, JobValidationError
    from batchyard.core.job import Constraints, FinalStep, Inputs, Job, OutputSpec, ResourceFileSpec, load_job

_HOMES = {
    "MapRun": "batchyard.api.mapping",
    "map_files": "batchyard.api.mapping",
    "map_lines": "batchyard.api.mapping",
    "BatchyardError": "batchyard.core.errors",
    "JobValidationError": "batchyard.core.errors",
    "Constraints": "batchyard.core.job",
    "FinalStep": "batchyard.core.job",
    "Inputs": "batchyard.core.job",
    "Job": "batchyard.core.job",
    "OutputSpec": "batchyard.core.job",
    "ResourceFileSpec": "batchyard.core.job",
    "load_job": "batchyard.core.job",
}

__all__ = [
    "BatchyardError",
    "Constraints",
    "FinalStep",
    "Inputs",
    "Job",
    "JobValidationError",
    "MapRun",
    "OutputSpec",
    "ResourceFileSpec",
    "__version__",
    "load_job",
    "map_files",
    "map_lines",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'batchyard' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
