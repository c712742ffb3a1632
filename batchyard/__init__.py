"""batchyard: per-file batch jobs on Azure Batch, locally on Azurite, or on an offline Batch emulator."""

from __future__ import annotations

from batchyard.api.mapping import MapRun, map_files, map_lines
from batchyard.core.errors import BatchyardError, JobValidationError
from batchyard.core.job import Constraints, FinalStep, Inputs, Job, OutputSpec, ResourceFileSpec, load_job
from batchyard.core.version import __version__

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
