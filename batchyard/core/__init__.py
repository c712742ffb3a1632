"""The bottom layer: the job model, configuration, results, errors, paths and redaction.

Nothing here talks to a service or imports an Azure SDK; every other layer may import it.
"""
