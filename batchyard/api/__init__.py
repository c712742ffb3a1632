"""The Python API: ``map_files`` / ``map_lines`` and what an inline job ships to its nodes."""
