"""batchyard: per-file batch jobs on Azure Batch, locally on Azurite, or on an offline Batch emulator."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import BatchyardError, JobValidationError
from .job import Constraints, Inputs, Job, OutputSpec, ResourceFileSpec, load_job
from .mapping import MapRun, map_files, map_lines

__all__ = [
    "BatchyardError",
    "Constraints",
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
