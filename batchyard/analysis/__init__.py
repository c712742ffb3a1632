"""Before and after a run: ``plan`` (preflight, forecast) and ``report``."""
